// ZeroQ (quant/zeroq.h): the Pareto dynamic programme against brute force on random small
// instances, the size budgets, the sensitivity (zero for a layer left at 32 bits, growing as
// the bits fall), the per-sample statistics of the distillation loss against naive loops, and the
// refusal of a model without BatchNorm.
#include "quant/zeroq.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "core/ops.h"
#include "core/random.h"
#include "layers/basic.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "layers/pooling.h"
#include "tests/common/test_util.h"
#include "tests/quant/quant_test_util.h"

namespace lowbit::quant {
namespace {

using ::testing::HasSubstr;
using testing_util::error_of;

// Every allocation, enumerated.
struct Brute {
  std::vector<int64_t> bytes;
  std::vector<double> cost;
};
Brute enumerate(const std::vector<std::vector<int64_t>>& size,
                const std::vector<std::vector<double>>& cost) {
  Brute b;
  std::vector<size_t> pick(size.size(), 0);
  while (true) {
    int64_t s = 0;
    double c = 0.0;
    for (size_t i = 0; i < size.size(); ++i) {
      s += size[i][pick[i]];
      c += cost[i][pick[i]];
    }
    b.bytes.push_back(s);
    b.cost.push_back(c);
    size_t i = 0;
    while (i < size.size() && ++pick[i] == size[i].size()) pick[i++] = 0;
    if (i == size.size()) break;
  }
  return b;
}

TEST(ZeroqPareto, DynamicProgrammeEqualsBruteForce) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    const size_t L = 1 + rng() % 5, K = 1 + rng() % 3;
    std::vector<std::vector<int64_t>> size(L);
    std::vector<std::vector<double>> cost(L);
    for (size_t i = 0; i < L; ++i) {
      const int64_t n = 1 + int64_t(rng() % 40);
      for (size_t j = 0; j < K; ++j) {
        // Bit widths 2, 4, 8 of n weights (trial-dependent) or arbitrary sizes.
        size[i].push_back(trial % 2 ? packed_bytes(n, int64_t(2) << j) : 1 + int64_t(rng() % 30));
        cost[i].push_back(double(rng() % 1000) / 100.0);
      }
    }
    const std::vector<Allocation> f = pareto_frontier(size, cost);
    const Brute b = enumerate(size, cost);
    // For every budget, the frontier's answer is the brute-force minimum within it.
    int64_t max_bytes = 0;
    for (int64_t v : b.bytes) max_bytes = std::max(max_bytes, v);
    for (int64_t budget = 0; budget <= max_bytes + 1; ++budget) {
      double best = std::numeric_limits<double>::infinity();
      for (size_t k = 0; k < b.bytes.size(); ++k) {
        if (b.bytes[k] <= budget) best = std::min(best, b.cost[k]);
      }
      if (std::isinf(best)) {
        EXPECT_THROW(allocate_within(f, budget), InputError);
        continue;
      }
      const Allocation a = allocate_within(f, budget);
      EXPECT_NEAR(a.cost, best, 1e-9) << "trial " << trial << " budget " << budget;
      EXPECT_LE(a.bytes, budget);
      // The allocation's own bytes and cost are what its choices add up to.
      int64_t s = 0;
      double c = 0.0;
      for (size_t i = 0; i < L; ++i) {
        s += size[i][size_t(a.choice[i])];
        c += cost[i][size_t(a.choice[i])];
      }
      EXPECT_EQ(s, a.bytes);
      EXPECT_NEAR(c, a.cost, 1e-9);
    }
    // Frontier: bytes increasing, cost strictly decreasing.
    for (size_t k = 1; k < f.size(); ++k) {
      EXPECT_GT(f[k].bytes, f[k - 1].bytes);
      EXPECT_LT(f[k].cost, f[k - 1].cost);
    }
  }
}

TEST(ZeroqPareto, BudgetsAndTheSmallestModel) {
  const std::vector<WeightLayer> layers{{"a", 10}, {"b", 7}};
  EXPECT_EQ(parse_size_budget("4bit", layers), 5 + 4);  // ceil(40/8) + ceil(28/8)
  EXPECT_EQ(parse_size_budget("8bit", layers), 17);
  EXPECT_EQ(parse_size_budget("123", layers), 123);
  EXPECT_THAT(error_of([&] { parse_size_budget("4bits", layers); }), HasSubstr("'4bits'"));
  EXPECT_THAT(error_of([&] { parse_size_budget("0", layers); }), HasSubstr("wants Kbit"));
  EXPECT_THAT(error_of([&] { parse_size_budget("40bit", layers); }), HasSubstr("1..32"));
  const auto f = pareto_frontier({{3, 5}, {2, 4}}, {{1.0, 0.0}, {1.0, 0.5}});
  EXPECT_THAT(error_of([&] { allocate_within(f, 4); }), HasSubstr("below the smallest model (5"));
}

layers::ModulePtr small_bn_net() {
  auto net = std::make_shared<layers::Sequential>();
  net->add(std::make_shared<layers::Conv2d>(layers::Conv2dOptions(2, 4, 3).with_padding(1)));
  net->add(std::make_shared<layers::BatchNorm2d>(4));
  net->add(std::make_shared<layers::ReLU>());
  net->add(std::make_shared<layers::GlobalAvgPool2d>());
  net->add(std::make_shared<layers::Linear>(4, 3));
  return net;
}

TEST(ZeroqSensitivity, ZeroAt32BitsAndGrowingAsBitsFall) {
  manual_seed(3);
  auto net = small_bn_net();
  net->eval();
  const Tensor x = randn({8, 6, 6, 2});
  const Sensitivity s = zeroq_sensitivity(*net, x, {2, 4, 8, 32});
  ASSERT_EQ(s.layers.size(), 2u);
  EXPECT_EQ(s.layers[0].weights, 4 * 3 * 3 * 2);
  EXPECT_EQ(s.layers[1].weights, 12);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(s.omega[i][3], 0.0) << s.layers[i].name;  // 32 bits: the float model
    EXPECT_GT(s.omega[i][0], s.omega[i][2]) << s.layers[i].name;
    EXPECT_GE(s.omega[i][2], 0.0);
  }
  // The model is unchanged afterwards (weights restored).
  const Tensor before = net->forward(x);
  (void)zeroq_sensitivity(*net, x, {2});
  EXPECT_TENSOR_NEAR(net->forward(x), before, 0, 0);
  // KL of identical logits is 0; of different ones positive and as computed by hand:
  // p = softmax(0, 0) = (.5, .5), q = softmax(0, ln 3) = (.25, .75):
  // KL = .5 ln 2 + .5 ln(2/3).
  const Tensor a = lowbit::testing::tensor_of({0.0, 0.0}, {1, 2});
  const Tensor b = lowbit::testing::tensor_of({0.0, std::log(3.0)}, {1, 2});
  EXPECT_NEAR(mean_kl_divergence(a, a), 0.0, 1e-12);
  EXPECT_NEAR(mean_kl_divergence(a, b), 0.5 * std::log(2.0) + 0.5 * std::log(2.0 / 3.0), 1e-6);
}

TEST(ZeroqLoss, PerSampleStatisticsMatchNaiveLoops) {
  manual_seed(5);
  const Tensor x = randn({3, 4, 5, 2});
  auto [m, d] = per_sample_stats(x);
  const std::vector<float> v = x.to_vector<float>(), mv = m.to_vector<float>(),
                           dv = d.to_vector<float>();
  for (int n = 0; n < 3; ++n) {
    for (int c = 0; c < 2; ++c) {
      double s = 0, s2 = 0;
      for (int i = 0; i < 20; ++i) s += v[size_t((n * 20 + i) * 2 + c)];
      const double mean = s / 20;
      for (int i = 0; i < 20; ++i) {
        const double e = v[size_t((n * 20 + i) * 2 + c)] - mean;
        s2 += e * e;
      }
      EXPECT_NEAR(mv[size_t(n * 2 + c)], mean, 1e-5);
      EXPECT_NEAR(dv[size_t(n * 2 + c)], std::sqrt(s2 / 19 + 1e-6), 1e-5);
    }
  }
}

// A 1x1 map has no per-sample variance: the batch's statistics stand in (MobileNetV2's last BN
// inputs on 28x28 Fashion-MNIST images).
TEST(ZeroqLoss, OnePixelMapsUseTheBatchStatistics) {
  const Tensor x = lowbit::testing::tensor_of({1.0, 10.0, 2.0, 20.0, 6.0, 30.0}, {3, 1, 1, 2});
  auto [m, d] = per_sample_stats(x);
  ASSERT_EQ(m.shape(), (Shape{1, 2}));
  const std::vector<float> mv = m.to_vector<float>(), dv = d.to_vector<float>();
  EXPECT_NEAR(mv[0], 3.0, 1e-6);   // (1 + 2 + 6) / 3
  EXPECT_NEAR(mv[1], 20.0, 1e-5);  // (10 + 20 + 30) / 3
  EXPECT_NEAR(dv[0], std::sqrt((4.0 + 1.0 + 9.0) / 2 + 1e-6), 1e-5);
  EXPECT_NEAR(dv[1], std::sqrt((100.0 + 0.0 + 100.0) / 2 + 1e-6), 1e-4);
  EXPECT_THAT(error_of([] {
                per_sample_stats(lowbit::testing::tensor_of({1.0, 2.0}, {1, 1, 1, 2}));
              }),
              HasSubstr("ptq.zeroq.batch_size"));
}

TEST(ZeroqLoss, RefusesAModelWithoutBatchNorm) {
  auto net = std::make_shared<layers::Sequential>();
  net->add(std::make_shared<layers::Conv2d>(layers::Conv2dOptions(1, 2, 3)));
  EXPECT_EQ(count_batchnorm(*net), 0);
  EXPECT_THAT(error_of([&] { require_batchnorm(*net, "ptq.calibration: zeroq"); }),
              HasSubstr("ptq.calibration: zeroq distils data from the running statistics of "
                        "BatchNorm2d layers, and this model has none"));
  EXPECT_EQ(count_batchnorm(*small_bn_net()), 1);
}

}  // namespace
}  // namespace lowbit::quant
