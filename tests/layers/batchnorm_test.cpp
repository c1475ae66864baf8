// BatchNorm2d: outputs and running statistics against hand-computed values, train/eval
// behaviour, the fused ReLU, gradients by finite differences.
#include "layers/batchnorm.h"

#include <gmock/gmock.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/parallel.h"
#include "core/random.h"
#include "tests/common/gradcheck.h"
#include "tests/common/test_util.h"

namespace lowbit::layers {
namespace {

using testing::tensor_of;
using testing::to_doubles;

TEST(BatchNorm2d, TrainingNormalisesAndUpdatesRunningStats) {
  BatchNorm2d bn(2);
  // (N=1, H=2, W=2, C=2): channel 0 holds 1, 2, 3, 4; channel 1 holds 10, 10, 10, 14.
  Tensor x = tensor_of({1, 10, 2, 10, 3, 10, 4, 14}, {1, 2, 2, 2});
  Tensor y = bn.forward(x);
  // Channel 0: mean 2.5, biased var 1.25.
  const double is0 = 1.0 / std::sqrt(1.25 + 1e-5);
  std::vector<double> v = to_doubles(y);
  EXPECT_NEAR(v[0], (1 - 2.5) * is0, 1e-5);
  EXPECT_NEAR(v[6], (4 - 2.5) * is0, 1e-5);
  // Channel 1: mean 11, biased var 3.
  EXPECT_NEAR(v[7], (14 - 11) / std::sqrt(3 + 1e-5), 1e-5);
  // Running stats: momentum 0.1, unbiased variance (1.25 * 4/3, 3 * 4/3).
  std::vector<double> rm = to_doubles(bn.running_mean()), rv = to_doubles(bn.running_var());
  EXPECT_NEAR(rm[0], 0.25, 1e-6);
  EXPECT_NEAR(rm[1], 1.1, 1e-6);
  EXPECT_NEAR(rv[0], 0.9 + 0.1 * 1.25 * 4 / 3, 1e-6);
  EXPECT_NEAR(rv[1], 0.9 + 0.1 * 4.0, 1e-6);
  EXPECT_EQ(bn.num_batches_tracked().item(), 1.0);
}

// Channels whose mean is 1e8 times their spread (f32 data on the ulp grid of 2^20): the batch
// variance must still match a two-pass reference. E[x^2] - E[x]^2, even in double, loses about
// half of it here; the shifted-data sums do not.
TEST(BatchNorm2d, BatchVarianceOfLargeOffsetDataIsExact) {
  manual_seed(31);
  const int64_t n = 4096;
  std::vector<double> v(size_t(n) * 2);
  Tensor k = randint(0, 4, {n, 2}, TensorOptions(DType::i64));
  const std::vector<int64_t> kv = k.to_vector<int64_t>();
  for (size_t i = 0; i < v.size(); ++i) {
    v[i] = (i % 2 == 0 ? 1048576.0 : -3.0e7) + double(kv[i]) * (i % 2 == 0 ? 0.125 : 2.0);
  }
  Tensor x = tensor_of(v, {1, 64, 64, 2});
  ASSERT_EQ(to_doubles(x), v);  // representable in f32
  Tensor rm = zeros({2}), rv = ones({2});
  batch_norm(x, Tensor(), Tensor(), rm, rv, true, /*momentum=*/1.0, 1e-5, false);
  for (int ch = 0; ch < 2; ++ch) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n; ++i) mean += v[size_t(i * 2 + ch)];
    mean /= double(n);
    for (int64_t i = 0; i < n; ++i)
      var += (v[size_t(i * 2 + ch)] - mean) * (v[size_t(i * 2 + ch)] - mean);
    var /= double(n - 1);  // the running variance is unbiased
    EXPECT_NEAR(to_doubles(rv)[size_t(ch)], var, 1e-6 * var) << "channel " << ch;
    EXPECT_NEAR(to_doubles(rm)[size_t(ch)], mean, 1e-7 * std::abs(mean)) << "channel " << ch;
  }
}

// The fused ReLU is relu(): negatives become 0, NaN stays NaN (as PyTorch; the trainer relies on
// a NaN reaching the loss to stop a diverged run).
// The CPU column sums (BN statistics forward, the two gradient sums backward) are, per channel,
// double sums over each thread's block of rows in row order, combined in thread order: checked
// bit for bit against that loop, with enough rows that every thread walks several row tiles,
// at channel counts on the 8-channel block path (16, 64) and off it (12), 1 and 2 threads.
TEST(BatchNorm2d, ColumnSumsAreTheRowOrderSumsBitForBit) {
  manual_seed(21);
  const int saved = omp_get_max_threads();
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    for (int64_t c : {16, 64, 12}) {
      for (bool backward : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << threads << " threads, c " << c << (backward ? " backward" : " forward"));
        const int64_t m = 3001;  // rows: not a multiple of any tile or chunk
        Tensor x = randn({m, c}) * 3.0 + 1.0, dy = randn({m, c}), y = randn({m, c});
        Tensor mean = randn({c}), invstd = rand({c}) + 0.5;
        Tensor sums = empty({2, c}, TensorOptions(DType::f64));
        detail::bn_column_sums_cpu(x, backward ? dy : Tensor(), backward ? y : Tensor(), mean,
                                   backward ? invstd : Tensor(), backward, backward, sums);
        const float* px = x.data<float>();
        const float* pg = dy.data<float>();
        const float* py = y.data<float>();
        const float* pm = mean.data<float>();
        const float* pis = invstd.data<float>();
        const int nt = m * c >= core::kParallelGrain ? threads : 1;
        const int64_t chunk = (m + nt - 1) / nt;
        std::vector<double> want(size_t(2 * c), 0.0);
        for (int64_t ch = 0; ch < c; ++ch) {
          for (int t = 0; t < nt; ++t) {
            double a0 = 0.0, a1 = 0.0;
            for (int64_t r = t * chunk; r < std::min(m, (t + 1) * chunk); ++r) {
              const size_t i = size_t(r * c + ch);
              if (backward) {
                const float g = py[i] > 0.0f ? pg[i] : 0.0f;
                a0 += double(g);
                a1 += double(g * ((px[i] - pm[ch]) * pis[ch]));
              } else {
                const double v = double(px[i]) - double(pm[ch]);
                a0 += v;
                a1 += v * v;
              }
            }
            want[size_t(ch)] += a0;
            want[size_t(c + ch)] += a1;
          }
        }
        const double* got = sums.data<double>();
        for (int64_t k = 0; k < 2 * c; ++k) ASSERT_EQ(got[k], want[size_t(k)]) << "sum " << k;
      }
    }
  }
  omp_set_num_threads(saved);
}

TEST(BatchNorm2d, FusedReluPropagatesNanAsRelu) {
  Tensor x = tensor_of({-1, NAN, 2, -3}, {1, 2, 2, 1});
  Tensor rm = zeros({1}), rv = ones({1});
  std::vector<double> y =
      to_doubles(batch_norm(x, Tensor(), Tensor(), rm, rv, false, 0.1, 0.0, true));
  std::vector<double> r =
      to_doubles(relu(batch_norm(x, Tensor(), Tensor(), rm, rv, false, 0.1, 0.0, false)));
  EXPECT_EQ(y[0], 0.0);
  EXPECT_TRUE(std::isnan(y[1]));
  EXPECT_EQ(y[2], 2.0);
  EXPECT_EQ(y[3], 0.0);
  EXPECT_TRUE(std::isnan(r[1]));
}

TEST(BatchNorm2d, EvalUsesRunningStats) {
  BatchNorm2d bn(1);
  {
    autograd::NoGradGuard guard;
    bn.running_mean().fill_(2.0);
    bn.running_var().fill_(4.0);
    bn.weight().fill_(3.0);
    bn.bias().fill_(0.5);
  }
  bn.eval();
  Tensor y = bn.forward(tensor_of({2, 4, 6}, {1, 1, 3, 1}));
  const double is = 1.0 / std::sqrt(4.0 + 1e-5);
  EXPECT_TENSOR_NEAR(y, tensor_of({0.5, 3 * 2 * is + 0.5, 3 * 4 * is + 0.5}, {1, 1, 3, 1}), 1e-6,
                     1e-6);
  EXPECT_EQ(bn.num_batches_tracked().item(), 0.0);
  EXPECT_EQ(to_doubles(bn.running_mean())[0], 2.0);  // untouched in eval
}

TEST(BatchNorm2d, FusedReluEqualsReluAfter) {
  manual_seed(20);
  Tensor x = randn({4, 3, 3, 5});
  Tensor plain =
      relu(batch_norm(x, Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5, false));
  Tensor fused = batch_norm(x, Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5, true);
  EXPECT_TENSOR_NEAR(fused, plain, 0, 0);
}

TEST(BatchNorm2d, TrainingGradientsMatchFiniteDifferences) {
  manual_seed(21);
  auto f = [](const std::vector<Tensor>& in) {
    return batch_norm(in[0], in[1], in[2], Tensor(), Tensor(), true, 0.1, 1e-5, false);
  };
  EXPECT_TRUE(testing::gradcheck(f, {randn({3, 2, 2, 4}), randn({4}), randn({4})}));
}

TEST(BatchNorm2d, FusedReluGradients) {
  manual_seed(22);
  auto f = [](const std::vector<Tensor>& in) {
    return batch_norm(in[0], in[1], in[2], Tensor(), Tensor(), true, 0.1, 1e-5, true);
  };
  testing::GradcheckOptions o;
  o.eps = 1e-7;  // stay on one side of the ReLU kink for every element
  o.rtol = 1e-4;
  o.atol = 1e-6;
  EXPECT_TRUE(testing::gradcheck(f, {randn({2, 3, 3, 3}), randn({3}), randn({3})}, o));
}

TEST(BatchNorm2d, EvalGradientsMatchFiniteDifferences) {
  manual_seed(23);
  Tensor rm = randn({3}, DType::f64), rv = rand({3}, DType::f64) + 0.5;
  auto f = [&](const std::vector<Tensor>& in) {
    return batch_norm(in[0], in[1], in[2], rm, rv, false, 0.1, 1e-5, false);
  };
  EXPECT_TRUE(testing::gradcheck(f, {randn({2, 2, 2, 3}), randn({3}), randn({3})}));
}

TEST(BatchNorm2d, EvalFusedReluGradientsMatchFiniteDifferences) {
  // Frozen statistics in QAT train with running statistics and, after a conv, the fused ReLU.
  manual_seed(24);
  Tensor rm = randn({3}, DType::f64), rv = rand({3}, DType::f64) + 0.5;
  auto f = [&](const std::vector<Tensor>& in) {
    return batch_norm(in[0], in[1], in[2], rm, rv, false, 0.1, 1e-5, true);
  };
  testing::GradcheckOptions o;
  o.eps = 1e-7;
  o.rtol = 1e-4;
  o.atol = 1e-6;
  EXPECT_TRUE(testing::gradcheck(f, {randn({2, 3, 3, 3}), randn({3}), randn({3})}, o));
}

TEST(BatchNorm2d, StateDictNamesAsPyTorch) {
  BatchNorm2d bn(3);
  StateDict sd = bn.state_dict();
  std::vector<std::string> keys;
  for (auto& [k, v] : sd) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{"bias", "num_batches_tracked", "running_mean",
                                            "running_var", "weight"}));
  EXPECT_EQ(sd.at("num_batches_tracked").dtype(), DType::i64);
  EXPECT_EQ(sd.at("num_batches_tracked").dim(), 0);
}

TEST(BatchNorm2d, SingleValuePerChannelRefusedInTraining) {
  BatchNorm2d bn(2);
  EXPECT_THROW(bn.forward(zeros({1, 1, 1, 2})), Error);
}

// 16-bit inputs (autocast feeds BN bf16): statistics and per-channel math in f32, the output
// rounded once, so the result is the f32 one on the same rounded inputs up to that rounding.
TEST(BatchNorm2d, HalfPrecisionMatchesFloatOnTheSameInputs) {
  manual_seed(25);
  for (DType t : {DType::bf16, DType::f16}) {
    const double eps = t == DType::bf16 ? 1.0 / 64 : 1.0 / 512;  // a few ulps of the output
    for (bool training : {true, false}) {
      SCOPED_TRACE(std::string(dtype_name(t)) + (training ? " train" : " eval"));
      Tensor x16 = (randn({8, 5, 5, 7}) * 3.0 + 1.0).to(t);
      Tensor x32 = x16.to(DType::f32);
      Tensor w = randn({7}), b = randn({7});
      Tensor rm16 = randn({7}) * 0.1, rv16 = rand({7}) + 0.5;
      Tensor rm32 = rm16.clone(), rv32 = rv16.clone();
      Tensor a = x16.detach().requires_grad_(), c = x32.detach().requires_grad_();
      Tensor wa = w.detach().requires_grad_(), wc = w.detach().requires_grad_();
      Tensor ya = batch_norm(a, wa, b, rm16, rv16, training, 0.1, 1e-5, true);
      Tensor yc = batch_norm(c, wc, b, rm32, rv32, training, 0.1, 1e-5, true);
      ASSERT_EQ(ya.dtype(), t);
      EXPECT_TENSOR_NEAR(ya, yc, eps, eps);
      EXPECT_TENSOR_NEAR(rm16, rm32, 1e-6, 1e-6);  // the statistics are f32 on both
      EXPECT_TENSOR_NEAR(rv16, rv32, 1e-6, 1e-6);
      Tensor up = randn(yc.shape()).to(t).to(DType::f32);
      sum(ya * up.to(t)).backward();
      sum(yc * up).backward();
      ASSERT_EQ(a.grad().dtype(), t);
      EXPECT_TENSOR_NEAR(a.grad(), c.grad(), 4 * eps, 4 * eps);
      EXPECT_TENSOR_NEAR(wa.grad(), wc.grad(), 4 * eps, 4 * eps);
    }
  }
}

TEST(BatchNorm2dGpu, MatchesCpu) {
  LOWBIT_SKIP_WITHOUT_GPU();
  manual_seed(24);
  for (DType t : {DType::f32, DType::bf16, DType::f16})
    for (bool relu_on : {false, true}) {
      SCOPED_TRACE(std::string(dtype_name(t)) + (relu_on ? " relu" : ""));
      // 16-bit outputs: both backends round the same float math once; a few ulps apart at most.
      const double h = t == DType::f32 ? 1.0 : t == DType::bf16 ? 1000.0 : 100.0;
      Tensor x = (randn({8, 5, 5, 7}) * 3.0 + 1.0).to(t);
      Tensor w = randn({7}).requires_grad_(), b = randn({7}).requires_grad_();
      Tensor xc = x.detach().requires_grad_();
      Tensor xg = x.to(Device::cuda()).requires_grad_();
      Tensor wg = w.detach().to(Device::cuda()).requires_grad_();
      Tensor bg = b.detach().to(Device::cuda()).requires_grad_();
      Tensor rm = zeros({7}), rv = ones({7});
      Tensor rmg = rm.to(Device::cuda()), rvg = rv.to(Device::cuda());
      Tensor y = batch_norm(xc, w, b, rm, rv, true, 0.1, 1e-5, relu_on);
      Tensor yg = batch_norm(xg, wg, bg, rmg, rvg, true, 0.1, 1e-5, relu_on);
      EXPECT_TENSOR_NEAR(yg, y, 1e-5 * h, 1e-5 * h);
      EXPECT_TENSOR_NEAR(rmg, rm, 1e-6, 1e-6);
      EXPECT_TENSOR_NEAR(rvg, rv, 1e-6, 1e-6);
      Tensor up = randn(y.shape()).to(t);
      sum(y * up).backward();
      sum(yg * up.to(Device::cuda())).backward();
      EXPECT_TENSOR_NEAR(xg.grad(), xc.grad(), 1e-4 * h, 1e-5 * h);
      EXPECT_TENSOR_NEAR(wg.grad(), w.grad(), 1e-5 * h, 1e-4 * h);
      EXPECT_TENSOR_NEAR(bg.grad(), b.grad(), 1e-5 * h, 1e-4 * h);
    }
}

TEST(BatchNorm2d, StubsHoldTheKernelsOfThisBuild) {
  EXPECT_TRUE(testing::has_kernels_of_this_build(detail::bn_column_sums_stub));
  EXPECT_TRUE(testing::has_kernels_of_this_build(detail::bn_affine_stub));
  EXPECT_TRUE(testing::has_kernels_of_this_build(detail::bn_grad_input_stub));
}

}  // namespace
}  // namespace lowbit::layers
