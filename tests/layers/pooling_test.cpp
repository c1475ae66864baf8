// Pooling against naive loops and finite differences.
#include "layers/pooling.h"

#include "core/ops.h"
#include "core/random.h"
#include "tests/common/gradcheck.h"
#include "tests/common/test_util.h"
#include "tests/reference/conv_ref.h"

namespace lowbit::layers {
namespace {

struct PoolCase {
  int64_t n, h, w, c, k, s, p;
};

class PoolForward : public ::testing::TestWithParam<PoolCase> {};

TEST_P(PoolForward, MaxAndAvgMatchNaive) {
  const PoolCase c = GetParam();
  manual_seed(30);
  for (DType t : {DType::f32, DType::f64}) {
    Tensor x = randn({c.n, c.h, c.w, c.c}, t);
    Pool2dOptions o = Pool2dOptions::square(c.k, c.s, c.p);
    int64_t P, Q;
    for (bool max : {true, false}) {
      std::vector<double> ref = reference::pool2d_nhwc(c.n, c.h, c.w, c.c, c.k, c.s, c.p, max, true,
                                                       testing::to_doubles(x), &P, &Q);
      Tensor y = max ? max_pool2d(x, o) : avg_pool2d(x, o);
      EXPECT_TENSOR_NEAR(y, testing::tensor_of(ref, {c.n, P, Q, c.c}, DType::f64), 1e-6, 1e-6)
          << (max ? "max" : "avg") << " " << dtype_name(t);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, PoolForward,
                         ::testing::Values(PoolCase{1, 4, 4, 1, 2, 2, 0},
                                           PoolCase{2, 7, 5, 3, 3, 2, 1},
                                           PoolCase{1, 9, 9, 2, 3, 1, 1},
                                           PoolCase{3, 5, 5, 4, 5, 5, 0},
                                           PoolCase{1, 1, 1, 7, 1, 1, 0}));

// 16-bit floats (autocast feeds pooling bf16): the f32 result on the same rounded inputs, rounded
// once; max pooling picks an input, so it is exact; averages within the output's rounding.
TEST(Pool, HalfPrecisionMatchesFloatOnTheSameInputs) {
  manual_seed(31);
  for (DType t : {DType::bf16, DType::f16}) {
    const double eps = t == DType::bf16 ? 1.0 / 128 : 1.0 / 1024;  // 2 ulps of the output
    Tensor x16 = randn({2, 9, 7, 5}).to(t);
    Tensor x32 = x16.to(DType::f32);
    for (bool max : {true, false}) {
      SCOPED_TRACE(std::string(dtype_name(t)) + (max ? " max" : " avg"));
      Pool2dOptions o = Pool2dOptions::square(3, 2, 1);
      Tensor a = x16.detach().requires_grad_(), b = x32.detach().requires_grad_();
      Tensor ya = max ? max_pool2d(a, o) : avg_pool2d(a, o);
      Tensor yb = max ? max_pool2d(b, o) : avg_pool2d(b, o);
      ASSERT_EQ(ya.dtype(), t);
      EXPECT_TENSOR_NEAR(ya, yb, max ? 0.0 : eps, max ? 0.0 : 1e-3);
      Tensor up = randn(yb.shape()).to(t).to(DType::f32);
      sum(ya * up.to(t)).backward();
      sum(yb * up).backward();
      ASSERT_EQ(a.grad().dtype(), t);
      EXPECT_TENSOR_NEAR(a.grad(), b.grad(), eps, eps);
    }
    Tensor g16 = global_avg_pool2d(x16), g32 = global_avg_pool2d(x32);
    EXPECT_TENSOR_NEAR(g16, g32, eps, 1e-3) << dtype_name(t);
  }
}

TEST(Pool, AvgExcludingPadding) {
  Tensor x = ones({1, 3, 3, 1});
  Pool2dOptions o = Pool2dOptions::square(3, 1, 1);
  o.count_include_pad = false;
  EXPECT_TENSOR_NEAR(avg_pool2d(x, o), ones({1, 3, 3, 1}), 1e-7, 0);
  o.count_include_pad = true;
  // Corner window sees 4 of 9 ones.
  EXPECT_NEAR(testing::to_doubles(avg_pool2d(x, o))[0], 4.0 / 9.0, 1e-7);
}

TEST(Pool, CeilModeAddsPartialWindow) {
  Pool2dOptions o = Pool2dOptions::square(2, 2, 0);
  o.ceil_mode = true;
  EXPECT_EQ(max_pool2d(zeros({1, 5, 5, 1}), o).shape(), (Shape{1, 3, 3, 1}));
  o.ceil_mode = false;
  EXPECT_EQ(max_pool2d(zeros({1, 5, 5, 1}), o).shape(), (Shape{1, 2, 2, 1}));
}

TEST(Pool, MaxGradientGoesToArgmax) {
  Tensor x = testing::tensor_of({1, 5, 3, 2}, {1, 2, 2, 1}).requires_grad_();
  sum(max_pool2d(x, Pool2dOptions::square(2))).backward();
  EXPECT_EQ(testing::to_doubles(x.grad()), (std::vector<double>{0, 1, 0, 0}));
}

TEST(Pool, OverlappingWindowsGradcheck) {
  manual_seed(31);
  auto fmax = [](const std::vector<Tensor>& in) {
    return max_pool2d(in[0], Pool2dOptions::square(3, 2, 1));
  };
  auto favg = [](const std::vector<Tensor>& in) {
    return avg_pool2d(in[0], Pool2dOptions::square(3, 2, 1));
  };
  EXPECT_TRUE(testing::gradcheck(fmax, {randn({2, 5, 5, 2})}));
  EXPECT_TRUE(testing::gradcheck(favg, {randn({2, 5, 5, 2})}));
}

TEST(Pool, GlobalAverage) {
  manual_seed(32);
  Tensor x = randn({2, 3, 4, 5});
  Tensor y = global_avg_pool2d(x);
  EXPECT_EQ(y.shape(), (Shape{2, 5}));
  EXPECT_NEAR(testing::to_doubles(y)[7], testing::to_doubles(mean(x.select(0, 1).select(-1, 2)))[0],
              1e-6);
}

TEST(PoolGpu, MatchesCpu) {
  LOWBIT_SKIP_WITHOUT_GPU();
  manual_seed(33);
  for (DType t : {DType::f32, DType::bf16, DType::f16}) {
    // Both backends compute in float and round once: equal up to that rounding.
    const double tol = t == DType::f32 ? 1e-6 : t == DType::bf16 ? 1.0 / 128 : 1.0 / 1024;
    Tensor x = randn({2, 9, 7, 3}).to(t);
    for (bool max : {true, false}) {
      SCOPED_TRACE(std::string(dtype_name(t)) + (max ? " max" : " avg"));
      Pool2dOptions o = Pool2dOptions::square(3, 2, 1);
      Tensor xc = x.detach().requires_grad_(), xg = x.to(Device::cuda()).requires_grad_();
      Tensor y = max ? max_pool2d(xc, o) : avg_pool2d(xc, o);
      Tensor yg = max ? max_pool2d(xg, o) : avg_pool2d(xg, o);
      EXPECT_TENSOR_NEAR(yg, y, tol, tol);
      Tensor up = randn(y.shape()).to(t);
      sum(y * up).backward();
      sum(yg * up.to(Device::cuda())).backward();
      EXPECT_TENSOR_NEAR(xg.grad(), xc.grad(), 10 * tol, tol);
    }
  }
}

TEST(Pool, StubsHoldTheKernelsOfThisBuild) {
  EXPECT_TRUE(testing::has_kernels_of_this_build(detail::max_pool_forward_stub));
  EXPECT_TRUE(testing::has_kernels_of_this_build(detail::max_pool_backward_stub));
  EXPECT_TRUE(testing::has_kernels_of_this_build(detail::avg_pool_forward_stub));
  EXPECT_TRUE(testing::has_kernels_of_this_build(detail::avg_pool_backward_stub));
}

}  // namespace
}  // namespace lowbit::layers
