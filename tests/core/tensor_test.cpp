// Tensor metadata, factories, views, copies, casts, printing and error messages.
#include <gmock/gmock.h>

#include "core/ops.h"
#include "core/random.h"
#include "tests/common/test_util.h"

namespace lowbit {
namespace {

using ::testing::HasSubstr;
using testing::tensor_of;
using testing::to_doubles;

using testing::error_of;

TEST(Tensor, EmptyHasShapeStridesAndDtype) {
  Tensor t = empty({2, 3, 4}, DType::f64);
  EXPECT_EQ(t.shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(t.strides(), (Shape{12, 4, 1}));
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.dtype(), DType::f64);
  EXPECT_EQ(t.element_size(), 8);
  EXPECT_EQ(t.device(), Device::cpu());
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.size(-1), 4);
}

TEST(Tensor, DtypeSizesAndNames) {
  const std::pair<DType, int64_t> expected[] = {{DType::f32, 4}, {DType::f64, 8}, {DType::bf16, 2},
                                                {DType::f16, 2}, {DType::i8, 1},  {DType::u8, 1},
                                                {DType::i32, 4}, {DType::i64, 8}};
  for (auto [t, size] : expected) {
    EXPECT_EQ(dtype_size(t), size) << dtype_name(t);
    EXPECT_EQ(parse_dtype(dtype_name(t)), t);
    EXPECT_EQ(zeros({3}, t).nbytes(), 3 * size);
  }
  EXPECT_THAT(error_of([] { parse_dtype("float8"); }), HasSubstr("float8"));
}

TEST(Tensor, FactoriesFillValues) {
  EXPECT_EQ(to_doubles(zeros({3})), (std::vector<double>{0, 0, 0}));
  EXPECT_EQ(to_doubles(ones({2}, DType::i32)), (std::vector<double>{1, 1}));
  EXPECT_EQ(to_doubles(full({2}, 2.5, DType::f64)), (std::vector<double>{2.5, 2.5}));
  EXPECT_EQ(to_doubles(arange(5)), (std::vector<double>{0, 1, 2, 3, 4}));
  EXPECT_EQ(to_doubles(arange(1.0, 2.0, 0.25, DType::f32)),
            (std::vector<double>{1, 1.25, 1.5, 1.75}));
  EXPECT_EQ(arange(5).dtype(), DType::i64);
  EXPECT_EQ(to_doubles(full_like(zeros({2}, DType::u8), 7)), (std::vector<double>{7, 7}));
  EXPECT_EQ(scalar_tensor(3.0).dim(), 0);
  EXPECT_DOUBLE_EQ(scalar_tensor(3.0).item(), 3.0);
}

TEST(Tensor, ViewAndReshape) {
  Tensor t = arange(0.0, 24.0, 1.0);
  Tensor v = t.view({2, -1, 4});
  EXPECT_EQ(v.shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(v.storage(), t.storage());
  EXPECT_THAT(error_of([&] { t.view({5, -1}); }), HasSubstr("[5, -1]"));
  Tensor tr = v.transpose(0, 2);  // non-contiguous
  EXPECT_FALSE(tr.is_contiguous());
  EXPECT_THAT(error_of([&] { tr.view({24}); }), HasSubstr("reshape"));
  Tensor r = tr.reshape({24});
  EXPECT_TRUE(r.is_contiguous());
  // reshape of a transposed tensor follows its logical order.
  EXPECT_DOUBLE_EQ(r.to_vector<double>()[1], 12.0);
}

TEST(Tensor, PermuteTransposeIndexing) {
  Tensor t = arange(0.0, 24.0, 1.0).view({2, 3, 4});
  Tensor p = t.permute({2, 0, 1});
  EXPECT_EQ(p.shape(), (Shape{4, 2, 3}));
  std::vector<double> v = to_doubles(p);
  for (int64_t a = 0; a < 4; ++a)
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t c = 0; c < 3; ++c)
        EXPECT_EQ(v[size_t(a * 6 + b * 3 + c)], double(b * 12 + c * 4 + a));
  EXPECT_THAT(error_of([&] { t.permute({0, 0, 1}); }), HasSubstr("repeated"));
}

TEST(Tensor, SliceNarrowSelect) {
  Tensor t = arange(0.0, 20.0, 1.0).view({4, 5});
  EXPECT_EQ(to_doubles(t.slice(1, 1, 5, 2)), (std::vector<double>{1, 3, 6, 8, 11, 13, 16, 18}));
  EXPECT_EQ(to_doubles(t.narrow(0, 2, 1)), (std::vector<double>{10, 11, 12, 13, 14}));
  EXPECT_EQ(to_doubles(t.select(1, -1)), (std::vector<double>{4, 9, 14, 19}));
  EXPECT_EQ(t.slice(0, -2, 100).shape(), (Shape{2, 5}));
  EXPECT_THAT(error_of([&] { t.narrow(0, 3, 2); }), HasSubstr("out of range"));
}

TEST(Tensor, ExpandSqueezeUnsqueezeFlatten) {
  Tensor t = tensor_of({1, 2, 3}, {3, 1});
  Tensor e = t.expand({2, 3, 4});
  EXPECT_EQ(e.strides()[0], 0);
  EXPECT_EQ(e.strides()[2], 0);
  EXPECT_EQ(to_doubles(e)[5], 2.0);
  EXPECT_THAT(error_of([&] { t.expand({2, 2}); }), HasSubstr("[3, 1]"));
  EXPECT_EQ(t.squeeze().shape(), (Shape{3}));
  EXPECT_EQ(t.squeeze(0).shape(), (Shape{3, 1}));
  EXPECT_EQ(t.unsqueeze(0).shape(), (Shape{1, 3, 1}));
  EXPECT_EQ(t.unsqueeze(-1).shape(), (Shape{3, 1, 1}));
  EXPECT_EQ(zeros({2, 3, 4, 5}).flatten(1, 2).shape(), (Shape{2, 12, 5}));
}

TEST(Tensor, ContiguousCopiesOnlyWhenNeeded) {
  Tensor t = randn({3, 4});
  EXPECT_TRUE(t.contiguous().same(t));
  Tensor tr = t.t();
  Tensor c = tr.contiguous();
  EXPECT_FALSE(c.same(tr));
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_TENSOR_NEAR(c, tr, 0, 0);
}

TEST(Tensor, CopyBroadcastsAndCasts) {
  Tensor dst = zeros({2, 3}, DType::i32);
  dst.copy_(tensor_of({1.7, -2.2, 3.0}, {3}, DType::f32));
  EXPECT_EQ(to_doubles(dst), (std::vector<double>{1, -2, 3, 1, -2, 3}));  // truncation, as C++
  Tensor strided = zeros({4, 4}).slice(1, 0, 4, 2);
  strided.copy_(ones({4, 2}));
  EXPECT_EQ(sum(strided).item(), 8.0);
  EXPECT_THAT(error_of([&] { dst.copy_(zeros({4})); }), HasSubstr("[4]"));
}

TEST(Tensor, CopyBumpsVersion) {
  Tensor t = zeros({3});
  const uint64_t v0 = t.storage()->version();
  t.fill_(1.0);
  EXPECT_GT(t.storage()->version(), v0);
}

TEST(Tensor, ToDtypeRoundTrips) {
  Tensor x = tensor_of({0.5, -1.25, 3.0, 100.0}, {4}, DType::f32);
  for (DType t : {DType::f64, DType::bf16, DType::f16}) {
    EXPECT_TENSOR_NEAR(x.to(t).to(DType::f32), x, 0, 0) << dtype_name(t);
  }
  EXPECT_EQ(to_doubles(x.to(DType::i8)), (std::vector<double>{0, -1, 3, 100}));
}

TEST(Tensor, Bf16RoundsHalfToEven) {
  // 1 + 2^-8 lies halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even one (1).
  EXPECT_EQ(float(bf16(1.00390625f)), 1.0f);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
  EXPECT_EQ(float(bf16(1.01171875f)), 1.015625f);
  EXPECT_EQ(float(bf16(-2.0f)), -2.0f);
}

TEST(Tensor, F16ConversionEdgeCases) {
  EXPECT_EQ(float(f16(65504.0f)), 65504.0f);                              // max finite
  EXPECT_TRUE(std::isinf(float(f16(65520.0f))));                          // rounds to inf
  EXPECT_EQ(float(f16(5.960464477539063e-08f)), 5.960464477539063e-08f);  // min subnormal 2^-24
  EXPECT_EQ(float(f16(2.9802322387695312e-08f)), 0.0f);                   // 2^-25 ties to even (0)
  EXPECT_EQ(float(f16(1.0009765625f)), 1.0009765625f);                    // 1 + 2^-10 exact
  EXPECT_EQ(float(f16(1.00048828125f)), 1.0f);                            // 1 + 2^-11 ties to even
  EXPECT_TRUE(std::isnan(float(f16(NAN))));
}

TEST(Tensor, PrintingIsReadable) {
  Tensor t = tensor_of({1, 2.5, -3, 4}, {2, 2});
  const std::string s = t.str();
  EXPECT_THAT(s, HasSubstr("[[1.0000, 2.5000],"));
  EXPECT_THAT(s, HasSubstr("dtype=f32"));
  EXPECT_THAT(s, HasSubstr("device=cpu"));
  EXPECT_THAT(arange(3).str(), HasSubstr("[0, 1, 2]"));
  EXPECT_THAT(zeros({2000}).str(), HasSubstr("..."));
}

TEST(Tensor, DeviceParsing) {
  EXPECT_EQ(Device::parse("cpu"), Device::cpu());
  EXPECT_EQ(Device::parse("cuda:1"), Device::cuda(1));
  EXPECT_EQ(Device::parse("cuda").str(), "cuda:0");
  EXPECT_THAT(error_of([] { Device::parse("tpu"); }), HasSubstr("tpu"));
}

TEST(Tensor, CudaWithoutGpuIsAClearError) {
  if (testing::gpu_available()) GTEST_SKIP() << "a GPU is present";
  EXPECT_THAT(error_of([] { zeros({2}, Device::cuda()); }), HasSubstr("CUDA"));
}

TEST(Tensor, NegativeShapeRejected) {
  EXPECT_THAT(error_of([] { empty({2, -3}); }), HasSubstr("[2, -3]"));
}

TEST(Tensor, DataAccessorChecksDtype) {
  Tensor t = zeros({2});
  EXPECT_THAT(error_of([&] { t.data<double>(); }), HasSubstr("f32"));
}

}  // namespace
}  // namespace lowbit
