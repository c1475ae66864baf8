// Post-training quantization (train/ptq.h): ZeroQ's distillation on a small net (the loss falls,
// the distilled batch's BN statistics approach the running ones), and Quantune's knobs applied to
// a ptq: section.
#include "train/ptq.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/random.h"
#include "layers/basic.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "layers/pooling.h"
#include "quant/zeroq.h"

namespace lowbit::train {
namespace {

// Per BN layer: the mean over samples and channels of |m - mu| + |d - sigma| for the batch x.
double stats_gap(layers::Module& net, const std::vector<layers::BatchNorm2d*>& bns,
                 const Tensor& x) {
  struct Rec : layers::ForwardRecorder {
    void on_forward(layers::Module& m, const Tensor& in, const Tensor&) override {
      if (auto* bn = dynamic_cast<layers::BatchNorm2d*>(&m)) inputs.emplace_back(bn, in);
    }
    std::vector<std::pair<layers::BatchNorm2d*, Tensor>> inputs;
  } rec;
  autograd::NoGradGuard ng;
  {
    layers::RecordForward g(&rec);
    net.forward(x);
  }
  double gap = 0.0;
  for (auto& [bn, in] : rec.inputs) {
    auto [m, d] = quant::per_sample_stats(in);
    const auto mv = m.to_vector<float>(), dv = d.to_vector<float>();
    const auto mu = bn->running_mean().to_vector<float>(),
               var = bn->running_var().to_vector<float>();
    const size_t C = mu.size();
    for (size_t i = 0; i < mv.size(); ++i) {
      gap += std::fabs(mv[i] - mu[i % C]) + std::fabs(dv[i] - std::sqrt(var[i % C] + 1e-6));
    }
    gap /= double(mv.size());
  }
  EXPECT_EQ(rec.inputs.size(), bns.size());
  return gap;
}

TEST(ZeroqDistill, LossFallsAndBnStatisticsApproachTheRunningOnes) {
  manual_seed(0);
  auto net = std::make_shared<layers::Sequential>();
  auto bn1 = std::make_shared<layers::BatchNorm2d>(4),
       bn2 = std::make_shared<layers::BatchNorm2d>(6);
  net->add(std::make_shared<layers::Conv2d>(layers::Conv2dOptions(1, 4, 3).with_padding(1)));
  net->add(bn1);
  net->add(std::make_shared<layers::ReLU>());
  net->add(std::make_shared<layers::Conv2d>(layers::Conv2dOptions(4, 6, 3).with_padding(1)));
  net->add(bn2);
  net->add(std::make_shared<layers::ReLU>());
  net->add(std::make_shared<layers::GlobalAvgPool2d>());
  net->add(std::make_shared<layers::Linear>(6, 3));
  // Running statistics of "real" data a Gaussian input does not look like: smooth stripes of
  // random phase (mean 0, standard deviation 1 per image), measured layer by layer in eval mode.
  std::vector<float> real;
  for (int n = 0; n < 16; ++n) {
    for (int h = 0; h < 6; ++h) {
      for (int w = 0; w < 6; ++w)
        real.push_back(float(std::sqrt(2.0) * std::sin(0.9 * h + 0.5 * w + 0.7 * n)));
    }
  }
  const Tensor real_x = lowbit::from_vector<float>(real, {16, 6, 6, 1});
  net->eval();
  for (auto* bn : {bn1.get(), bn2.get()}) {
    struct Rec : layers::ForwardRecorder {
      layers::Module* want = nullptr;
      Tensor in;
      void on_forward(layers::Module& m, const Tensor& x, const Tensor&) override {
        if (&m == want) in = x;
      }
    } rec;
    rec.want = bn;
    autograd::NoGradGuard ng;
    {
      layers::RecordForward g(&rec);
      net->forward(real_x);
    }
    bn->running_mean().copy_(mean(rec.in, {0, 1, 2}));
    bn->running_var().copy_(var(rec.in, {0, 1, 2}, true));
  }
  net->eval();
  ZeroqConfig z;
  z.iterations = 200;
  z.batch_size = 8;
  const Tensor start = randn({8, 6, 6, 1});
  const double gap0 = stats_gap(*net, {bn1.get(), bn2.get()}, start);
  std::vector<double> curve;
  manual_seed(0);
  const std::vector<Tensor> data = distill_data(*net, z, {6, 6, 1}, Device::cpu(), &curve);
  ASSERT_EQ(data.size(), 1u);
  ASSERT_EQ(curve.size(), 200u);
  EXPECT_EQ(data[0].shape(), (Shape{8, 6, 6, 1}));
  EXPECT_LT(curve.back(), 0.2 * curve.front()) << curve.front() << " -> " << curve.back();
  const double gap1 = stats_gap(*net, {bn1.get(), bn2.get()}, data[0]);
  EXPECT_LT(gap1, 0.5 * gap0) << gap0 << " -> " << gap1;
  // The model's own parameters are untouched and need gradients again.
  for (const Tensor& p : net->parameters()) EXPECT_TRUE(p.requires_grad());
}

TEST(Quantune, KnobsMapOntoThePtqSection) {
  const quant::ConfigSpace s = quantune_space();
  EXPECT_EQ(s.knobs().size(), 5u);
  EXPECT_EQ(s.size(), 12 * 4 * 3 * 2 * 2);
  PtqConfig base;
  base.weight_bits = 8;
  const PtqConfig p =
      apply_knobs(base, s,
                  {s.value_index("calibration", "kl/10"), s.value_index("scheme", "pow2"),
                   s.value_index("clipping", "none"), s.value_index("granularity", "per_tensor"),
                   s.value_index("precision", "first_last_float")});
  EXPECT_EQ(p.activation_observer, "kl");
  EXPECT_EQ(p.calibration_images, 10);
  EXPECT_EQ(p.calibration, "train");
  EXPECT_EQ(p.scheme, "pow2");
  EXPECT_EQ(p.weight_observer, "minmax");
  EXPECT_FALSE(p.per_channel);
  EXPECT_EQ(p.first_last, "float");
  const PtqConfig q = apply_knobs(
      base, s,
      {s.value_index("calibration", "mse/100"), s.value_index("scheme", "asymmetric"),
       s.value_index("clipping", "percentile"), s.value_index("granularity", "per_channel"),
       s.value_index("precision", "first_last_8bit")});
  EXPECT_EQ(q.activation_observer, "mse");
  EXPECT_EQ(q.calibration_images, 100);
  EXPECT_EQ(q.weight_observer, "percentile");
  EXPECT_TRUE(q.per_channel);
  EXPECT_EQ(q.first_last, "8bit");
}

}  // namespace
}  // namespace lowbit::train
