// Quantized layers, Conv+BN folding (docs/methods.md, "BN folding for QAT"), quantize_model by
// rules, calibration, plans and accounting (docs/methods.md, "Accounting"), checked against
// hand-built references and hand-computed numbers.
#include "quant/convert.h"

#include <gmock/gmock.h>

#include <cmath>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/random.h"
#include "layers/basic.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "models/registry.h"
#include "quant/accounting.h"
#include "quant/dorefa.h"
#include "quant/lsq.h"
#include "quant/qlayers.h"
#include "quant/sat.h"
#include "tests/common/test_util.h"

namespace lowbit::quant {
namespace {

using ::testing::HasSubstr;
using testing::tensor_of;

std::shared_ptr<layers::BatchNorm2d> trained_bn(int64_t c) {
  auto bn = std::make_shared<layers::BatchNorm2d>(c);
  autograd::NoGradGuard g;
  bn->weight().copy_(randn({c}) * 0.5 + 1.0);
  bn->bias().copy_(randn({c}) * 0.2);
  bn->running_mean().copy_(randn({c}) * 0.3);
  bn->running_var().copy_(rand({c}) + 0.5);
  return bn;
}

QuantizerPtr lsq_weight(int64_t bits, int64_t channels) {
  return create_quantizer("lsq", {{"role", "weight"},
                                  {"bits", std::to_string(bits)},
                                  {"per_channel", "true"},
                                  {"channels", std::to_string(channels)}});
}

// docs/methods.md, "BN folding for QAT": with quantization off, the folded QAT module followed by
// its BN equals conv -> BN, in eval (running statistics) and in training (batch statistics).
TEST(ConvBnFold, EqualsConvThenBnWhenQuantizationIsOff) {
  manual_seed(11);
  for (bool training : {false, true}) {
    auto conv = std::make_shared<layers::Conv2d>(
        layers::Conv2dOptions(3, 5, 3).with_padding(1).with_bias(true));
    auto bn = trained_bn(5);
    auto bn_ref = trained_bn(5);
    {
      autograd::NoGradGuard g;
      bn_ref->weight().copy_(bn->weight());
      bn_ref->bias().copy_(bn->bias());
      bn_ref->running_mean().copy_(bn->running_mean());
      bn_ref->running_var().copy_(bn->running_var());
    }
    Tensor x = randn({2, 6, 6, 3});
    conv->train(training);
    bn_ref->train(training);
    Tensor ref = bn_ref->forward(conv->forward(x));
    auto q = std::make_shared<QConv2d>(*conv, lsq_weight(4, 5), nullptr);
    q->fold_bn(bn);
    q->weight_quantizer()->set_enabled(false);
    q->train(training);
    bn->train(training);
    Tensor y = bn->forward(q->forward(x));
    EXPECT_TENSOR_NEAR(y, ref, 1e-5, 1e-5) << (training ? "train" : "eval");
    if (training) {
      // Running statistics moved identically.
      EXPECT_TENSOR_NEAR(bn->running_mean(), bn_ref->running_mean(), 1e-5, 1e-6);
      EXPECT_TENSOR_NEAR(bn->running_var(), bn_ref->running_var(), 1e-5, 1e-6);
    }
  }
}

// PfQ's situation (docs/methods.md, "PfQ") in QAT without pruning: a depthwise conv whose input
// channel is dead (all zero) has a BN with running variance ~0, so its folded factor is
// gamma/sqrt(eps) and it sets the per-tensor weight range. Training through it must still give
// finite gradients.
TEST(ConvBnFold, CollapsedChannelGivesFiniteGradients) {
  manual_seed(12);
  const int64_t c = 4;
  auto conv = std::make_shared<layers::Conv2d>(
      layers::Conv2dOptions(c, c, 3).with_padding(1).with_groups(c));
  auto bn = trained_bn(c);
  {
    autograd::NoGradGuard g;
    bn->running_var().copy_(tensor_of({1.0, 5.6e-45, 0.5, 2.0}, {c}));
    bn->running_mean().copy_(tensor_of({0.1, 5.6e-45, -0.2, 0.0}, {c}));
  }
  auto q = std::make_shared<QConv2d>(
      *conv, create_quantizer("lsq", {{"role", "weight"}, {"bits", "4"}}), nullptr);
  q->fold_bn(bn);
  q->train();
  bn->train();
  Tensor x = randn({2, 6, 6, c}) * tensor_of({1.0, 0.0, 1.0, 1.0}, {c});  // channel 1 dead
  Tensor y = relu(bn->forward(q->forward(x)));
  sum(y * randn(y.shape())).backward();
  for (auto& [name, p] : q->named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name;
    for (double v : testing::to_doubles(p.grad())) ASSERT_TRUE(std::isfinite(v)) << name;
  }
  for (double v : testing::to_doubles(bn->weight().grad()))
    EXPECT_TRUE(std::isfinite(v)) << "bn.weight";
}

// With quantization on, eval output is the integer-inference graph of docs/methods.md, "BN folding
// for QAT": conv(x, FQ(W * gamma / std_r)) + beta + gamma * (b - mu_r) / std_r.
TEST(ConvBnFold, EvalIsTheFoldedInferenceGraph) {
  manual_seed(12);
  auto conv = std::make_shared<layers::Conv2d>(
      layers::Conv2dOptions(4, 6, 3).with_padding(1).with_bias(false));
  auto bn = trained_bn(6);
  auto wq = create_quantizer("uniform", {{"role", "weight"},
                                         {"bits", "4"},
                                         {"per_channel", "true"},
                                         {"channels", "6"},
                                         {"observer", "minmax"}});
  auto q = std::make_shared<QConv2d>(*conv, wq, nullptr);
  q->fold_bn(bn);
  Tensor x = randn({2, 5, 5, 4});
  q->train();
  bn->train();
  q->forward(x);  // the observer sees the folded weights once
  q->eval();
  bn->eval();
  Tensor y = bn->forward(q->forward(x));

  // Reference by hand: fold, per-channel symmetric min-max 4-bit quantization, conv, bias.
  autograd::NoGradGuard g;
  Tensor std_r = sqrt(bn->running_var() + 1e-5);
  Tensor sf = bn->weight() / std_r;
  Tensor wf = conv->weight() * sf.reshape({6, 1, 1, 1});
  Tensor amax_c = amax(abs(wf), {1, 2, 3});
  Tensor scale = amax_c / 7.5;  // symmetric signed 4 bit: (max - min) / (qmax - qmin) = 2 amax / 15
  Tensor wq_ref = fake_quantize(wf, scale, zeros({6}, DType::i32), quant_range(4, true), 0);
  Tensor b_f = bn->bias() - bn->weight() * bn->running_mean() / std_r;
  Tensor ref = layers::conv2d(x, wq_ref, b_f, conv->options());
  EXPECT_TENSOR_NEAR(y, ref, 1e-4, 1e-4);
  // The weights really are on a 16-level grid per channel.
  Tensor codes = q->quantized_weight() / scale.reshape({6, 1, 1, 1});
  for (float c : codes.to_vector<float>()) {
    EXPECT_NEAR(c, std::nearbyint(c), 1e-3);
    EXPECT_LE(std::fabs(c), 8.001f);  // signed 4 bit: [-8, 7]
  }
}

// Gradients reach gamma through the fold factor and the weights through the STE.
TEST(ConvBnFold, GradientsReachGammaAndWeights) {
  manual_seed(13);
  auto conv = std::make_shared<layers::Conv2d>(
      layers::Conv2dOptions(2, 3, 3).with_padding(1).with_bias(false));
  auto bn = trained_bn(3);
  auto q = std::make_shared<QConv2d>(*conv, lsq_weight(8, 3), nullptr);
  q->fold_bn(bn);
  Tensor y = bn->forward(q->forward(randn({2, 4, 4, 2})));
  sum(y * randn(y.shape())).backward();
  ASSERT_TRUE(bn->weight().grad().defined());
  ASSERT_TRUE(q->weight().grad().defined());
  EXPECT_GT(amax(abs(bn->weight().grad())).item(), 0.0);
  EXPECT_GT(amax(abs(q->weight().grad())).item(), 0.0);
  EXPECT_TRUE(std::isfinite(sum(q->weight().grad()).item()));
}

TEST(FreezeBn, RunningStatisticsStopInTraining) {
  auto bn = trained_bn(4);
  Tensor before = bn->running_mean().clone();
  bn->train();
  bn->set_frozen_stats(true);
  Tensor x = randn({3, 2, 2, 4}) * 3.0 + 1.0;
  Tensor y = bn->forward(x);
  EXPECT_TENSOR_NEAR(bn->running_mean(), before, 0, 0);
  bn->eval();
  EXPECT_TENSOR_NEAR(y, bn->forward(x), 0, 0);  // frozen training == eval
}

layers::ModulePtr small_model(const std::string& name, int64_t in_channels, int64_t classes,
                              int64_t size, double width_mult = 1.0) {
  models::ModelOptions o;
  o.in_channels = in_channels;
  o.num_classes = classes;
  o.input_size = size;
  o.width_mult = width_mult;
  return models::create_model(name, o);
}

// QAT after freeze_bn_epoch trains a whole model through BNs with running statistics: the
// gradient of every parameter matches central differences (dsnet with fused BN+ReLU; f32, as
// the CPU convolution is, so the tolerance is loose but catches any wrong term).
TEST(FreezeBn, WholeModelGradientsMatchFiniteDifferences) {
  manual_seed(31);
  auto model = small_model("dsnet", 1, 4, 8);
  for (auto& [name, m] : model->named_modules()) {
    if (auto* bn = dynamic_cast<layers::BatchNorm2d*>(m.get())) {
      autograd::NoGradGuard g;
      const int64_t c = bn->options().num_features;
      bn->running_mean().copy_(randn({c}) * 0.3);
      bn->running_var().copy_(rand({c}) + 0.2);
      bn->set_frozen_stats(true);
    }
  }
  model->train();
  const Tensor x = randn({2, 6, 6, 1}), r = randn({2, 4});
  auto loss = [&] { return sum(model->forward(x) * r); };
  loss().backward();
  for (auto& [name, p] : model->named_parameters()) {
    const Tensor g = p.grad();
    ASSERT_TRUE(g.defined()) << name;
    std::vector<double> gv = testing::to_doubles(g);
    double gmax = 0.0;
    for (double v : gv) gmax = std::max(gmax, std::fabs(v));
    ASSERT_GT(gmax, 1e-4) << name;
    for (int64_t i : {int64_t(0), p.numel() / 2, p.numel() - 1}) {
      const double h = 1e-3;
      Tensor flat = p.detach().reshape({p.numel()});
      auto at = [&](double d) {
        autograd::NoGradGuard ng;
        const double v0 = testing::to_doubles(flat.slice(0, i, i + 1))[0];
        flat.slice(0, i, i + 1).fill_(v0 + d);
        const double l = loss().item();
        flat.slice(0, i, i + 1).fill_(v0);
        return l;
      };
      const double fd = (at(h) - at(-h)) / (2 * h);
      EXPECT_NEAR(gv[size_t(i)], fd, 0.05 * std::fabs(fd) + 0.02 * gmax) << name << "[" << i << "]";
    }
  }
}

layers::ModulePtr resnet20(int64_t in_channels = 1) {
  return small_model("resnet20", in_channels, 10, 16);
}

template <typename T>
int count_of(layers::Module& m) {
  int n = 0;
  for (auto& [name, mod] : m.named_modules()) n += dynamic_cast<T*>(mod.get()) != nullptr;
  return n;
}

TEST(QuantizeModel, ResNet20DefaultsFirstLastEightBitsAndFolding) {
  manual_seed(14);
  auto model = resnet20();
  Tensor x = randn({2, 16, 16, 1});
  QuantConfig cfg;  // lsq W4A4, first/last at 8 bits, fold BN
  QuantPlan plan = quantize_model(*model, cfg, x);
  EXPECT_EQ(count_of<QConv2d>(*model), 19);
  EXPECT_EQ(count_of<QLinear>(*model), 1);
  EXPECT_EQ(count_of<layers::Conv2d>(*model), 19);  // every conv was swapped (QConv2d is-a Conv2d)
  ASSERT_EQ(plan.layers.size(), 20u);
  EXPECT_EQ(plan.layers.front().name, "conv1");
  EXPECT_EQ(plan.layers.back().name, "linear");
  int folded = 0;
  for (auto& [name, m] : model->named_modules()) {
    if (auto* q = dynamic_cast<QConv2d*>(m.get())) {
      const int64_t bits = name == "conv1" ? 8 : 4;
      EXPECT_EQ(q->weight_quantizer()->bits(), bits) << name;
      ASSERT_NE(q->input_quantizer(), nullptr) << name;
      EXPECT_EQ(q->input_quantizer()->bits(), bits) << name;
      // The image is signed; every other conv input comes out of a ReLU.
      EXPECT_EQ(q->input_quantizer()->spec().is_signed, name == "conv1") << name;
      folded += q->folded_bn() != nullptr;
    }
  }
  EXPECT_EQ(folded, 19);
  auto* fc = dynamic_cast<QLinear*>(model->child("linear").get());
  ASSERT_NE(fc, nullptr);
  EXPECT_EQ(fc->weight_quantizer()->bits(), 8);
  // The parents' forward reaches the quantized layers: training runs and gives scales gradients.
  model->train();
  Tensor loss = sum(model->forward(x));
  loss.backward();
  auto* lsq = dynamic_cast<LsqQuantizer*>(fc->weight_quantizer());
  ASSERT_NE(lsq, nullptr);
  ASSERT_TRUE(lsq->scale().grad().defined());
}

TEST(QuantizeModel, MobileNetV2LinearBottleneckInputsAreSigned) {
  manual_seed(15);
  auto model = small_model("mobilenet_v2", 3, 10, 32, 0.25);
  QuantConfig cfg;
  quantize_model(*model, cfg, randn({2, 32, 32, 3}));
  int signed_inputs = 0, unsigned_inputs = 0;
  for (auto& [name, m] : model->named_modules()) {
    if (auto* q = dynamic_cast<QConv2d*>(m.get())) {
      (q->input_quantizer()->spec().is_signed ? signed_inputs : unsigned_inputs)++;
    }
  }
  // The stem and the expansion convs that read the linear bottleneck (residual stream) are signed.
  EXPECT_GT(signed_inputs, 5);
  EXPECT_GT(unsigned_inputs, 20);
}

TEST(QuantizeModel, RulesByNameAndType) {
  manual_seed(16);
  auto model = resnet20();
  QuantConfig cfg;
  cfg.first_last_bits = 0;
  QuantRule skip;
  skip.match = "layer1.*";
  skip.skip = true;
  QuantRule lin;
  lin.type = "Linear";
  lin.weight_quantizer = "uniform";
  lin.weight.set("bits", 6);
  lin.quantize_input = false;
  cfg.rules = {skip, lin};
  quantize_model(*model, cfg, randn({2, 16, 16, 1}));
  EXPECT_EQ(count_of<QConv2d>(*model), 19 - 6);  // layer1 has 3 blocks of 2 convs
  EXPECT_EQ(dynamic_cast<QConv2d*>(model->child("conv1").get())->weight_quantizer()->bits(), 4);
  auto* fc = dynamic_cast<QLinear*>(model->child("linear").get());
  ASSERT_NE(fc, nullptr);
  EXPECT_EQ(fc->weight_quantizer()->name(), "uniform");
  EXPECT_EQ(fc->weight_quantizer()->bits(), 6);
  EXPECT_EQ(fc->input_quantizer(), nullptr);
}

TEST(QuantizeModel, BadRuleOptionNamesTheLayer) {
  auto model = resnet20();
  QuantConfig cfg;
  QuantRule r;
  r.match = "layer2.0.conv1";
  r.weight.set("bits", 0);
  cfg.rules = {r};
  const std::string e = testing::error_of([&] {
    quantize_model(*model, cfg, randn({1, 16, 16, 1}));
  });
  EXPECT_THAT(e, HasSubstr("layer2.0.conv1"));
  EXPECT_THAT(e, HasSubstr("bits"));
  auto again = resnet20();
  quantize_model(*again, QuantConfig{}, randn({1, 16, 16, 1}));
  EXPECT_THAT(testing::error_of([&] {
                quantize_model(*again, QuantConfig{}, randn({1, 16, 16, 1}));
              }),
              HasSubstr("already quantized"));
}

// first_last_bits sets bits only: binary (1 bit) and ternary (2 bits) cannot take 8, and the
// error names the config key rather than a layer; with first_last_bits 0, or a rule giving the
// first and last layers another quantizer, the same config quantizes.
TEST(QuantizeModel, FirstLastBitsAQuantizerCannotTakeNamesTheKey) {
  for (const char* q : {"binary", "ternary"}) {
    QuantConfig cfg;
    cfg.weight = QuantizerChoice{q, {}};
    const std::string e = testing::error_of([&] {
      auto model = resnet20();
      plan_quantization(*model, cfg, randn({1, 16, 16, 1}));
    });
    EXPECT_THAT(e, HasSubstr(str_cat("quant.first_last_bits = 8: the first and last layers' "
                                     "quant.weight quantizer '",
                                     q, "' cannot take 8 bits")));
    EXPECT_THAT(e, HasSubstr("option bits = '8' is out of range"));
    EXPECT_THAT(e, ::testing::Not(HasSubstr("conv1")));
    cfg.first_last_bits = 0;
    auto model = resnet20();
    EXPECT_GT(plan_quantization(*model, cfg, randn({1, 16, 16, 1})).layers.size(), 2u);
    cfg.first_last_bits = 8;
    QuantRule first, last;
    first.match = "conv1";
    first.weight_quantizer = "uniform";
    last.match = "linear";
    last.weight_quantizer = "uniform";
    cfg.rules = {first, last};
    QuantPlan plan = plan_quantization(*model, cfg, randn({1, 16, 16, 1}));
    EXPECT_EQ(plan.layers.front().weight.name, "uniform");
    EXPECT_EQ(plan.layers.front().weight.options.values().at("bits"), "8");
    EXPECT_EQ(plan.layers[1].weight.name, q);
  }
}

// A plan rebuilds the same quantized model on a fresh float model: same state dict keys and,
// with the state loaded, the same outputs.
TEST(QuantizeModel, PlanRoundTripRebuildsTheModel) {
  manual_seed(17);
  auto a = resnet20();
  Tensor x = randn({2, 16, 16, 1});
  QuantConfig cfg;
  cfg.activation.name = "uniform";
  QuantPlan plan = quantize_model(*a, cfg, x);
  a->train();
  a->forward(x);  // observers and LSQ scales initialise
  auto b = resnet20();
  apply_quant_plan(*b, QuantPlan::parse(plan.str()));
  auto sa = a->state_dict(layers::Layout::pytorch);
  auto sb = b->state_dict(layers::Layout::pytorch);
  ASSERT_EQ(sa.size(), sb.size());
  for (auto& [k, v] : sa) ASSERT_TRUE(sb.count(k)) << k;
  b->load_state_dict(sa, true, layers::Layout::pytorch);
  a->eval();
  b->eval();
  EXPECT_TENSOR_NEAR(b->forward(x), a->forward(x), 0, 0);
}

// LSQ calibration initialises s = 2 mean|x| / sqrt(Qp) (docs/methods.md, "LSQ") from the data seen.
TEST(Calibration, LsqActivationScaleFromTheBatches) {
  manual_seed(18);
  auto model = resnet20();
  QuantConfig cfg;
  cfg.first_last_bits = 0;
  Tensor b1 = randn({4, 16, 16, 1}), b2 = randn({4, 16, 16, 1}) * 2.0;
  quantize_model(*model, cfg, b1);
  std::vector<Tensor> batches{b1, b2};
  size_t i = 0;
  calibrate_model(
      *model, [&](Tensor& x) { return i < batches.size() ? (x = batches[i++], true) : false; }, 5,
      false, true);
  EXPECT_EQ(i, 2u);
  auto* q = dynamic_cast<LsqQuantizer*>(
      dynamic_cast<QConv2d*>(model->child("conv1").get())->input_quantizer());
  ASSERT_NE(q, nullptr);
  const double mean_abs =
      (sum(abs(b1)).item() + sum(abs(b2)).item()) / double(b1.numel() + b2.numel());
  EXPECT_NEAR(q->scale().item(), 2.0 * mean_abs / std::sqrt(7.0), 1e-5);  // signed 4 bit: Qp = 7
  EXPECT_FALSE(q->calibrating());
}

// The PfQ workflow (docs/methods.md, "PfQ"): a weights-only QAT stage, then a stage that turns
// activations on. Calibrating those activations must run the model with the 2-bit weights it was
// trained with; with float weights (what calibration did before) the ranges of a 2-bit MobileNetV2
// came out up to 500x too wide and the stage diverged at its first step (docs/results.md, PfQ).
TEST(Calibration, ActivationsAfterAWeightsOnlyStageSeeTheQuantizedWeights) {
  manual_seed(21);
  auto model = std::make_shared<layers::Sequential>();
  model->add(std::make_shared<layers::Conv2d>(
      layers::Conv2dOptions(1, 8, 3).with_padding(1).with_bias(false)));
  model->add(std::make_shared<layers::Conv2d>(
      layers::Conv2dOptions(8, 8, 3).with_padding(1).with_bias(false)));
  QuantConfig cfg;
  cfg.first_last_bits = 0;
  cfg.weight.options.set("bits", "2");
  cfg.activation.options.set("bits", "2");
  Tensor x = randn({4, 8, 8, 1});
  quantize_model(*model, cfg, x);
  auto once = [&] {
    return [&x, done = false](Tensor& b) mutable { return done ? false : (b = x, done = true); };
  };
  calibrate_model(*model, once(), 1, true, false);  // the weights-only stage
  calibrate_model(*model, once(), 1, false, true);  // the stage that adds activations
  auto* c0 = dynamic_cast<QConv2d*>(model->child("0").get());
  auto* c1 = dynamic_cast<QConv2d*>(model->child("1").get());
  ASSERT_NE(c0, nullptr);
  ASSERT_NE(c1, nullptr);
  ASSERT_NE(c1->input_quantizer(), nullptr);
  auto* q1 = dynamic_cast<LsqQuantizer*>(c1->input_quantizer());
  ASSERT_NE(q1, nullptr);
  autograd::NoGradGuard ng;
  model->eval();
  // Calibration passes inputs through unquantized, so conv 1 saw conv 0 of x with 2-bit weights.
  const Tensor wq = c0->weight_quantizer()->forward(c0->weight());
  const double mean_q = mean(abs(layers::conv2d(x, wq, Tensor(), c0->options()))).item();
  const double mean_f = mean(abs(layers::conv2d(x, c0->weight(), Tensor(), c0->options()))).item();
  ASSERT_GT(std::fabs(mean_q - mean_f), 0.05 * mean_f) << "2-bit weights should change the output";
  const double qp = double(q1->spec().range.qmax);
  EXPECT_NEAR(q1->scale().item(), 2.0 * mean_q / std::sqrt(qp), 1e-5 * mean_q);
  EXPECT_TRUE(c0->weight_quantizer()->enabled());
}

TEST(QuantAct, ReluThenQuantizer) {
  auto q =
      create_quantizer("uniform", {{"role", "activation"}, {"bits", "2"}, {"observer", "minmax"}});
  QuantAct act("relu", q);
  Tensor x = tensor_of({-1.0, 0.0, 0.5, 1.0, 3.0, 1.4}, {1, 1, 2, 3});
  Tensor y = act.forward(x);
  // min-max over relu(x) = [0, 3], unsigned 2 bits: scale 1, zero point 0.
  EXPECT_TENSOR_NEAR(y, tensor_of({0, 0, 0, 1, 3, 1}, {1, 1, 2, 3}), 0, 0);
  EXPECT_THAT(testing::error_of([&] { QuantAct bad("gelu", q); }), HasSubstr("gelu"));
}

// docs/methods.md, "Accounting" on a model small enough to count by hand.
TEST(Accounting, HandCountedSizeBopsAndCompression) {
  manual_seed(19);
  auto model = std::make_shared<layers::Sequential>();
  model->add(std::make_shared<layers::Conv2d>(
      layers::Conv2dOptions(3, 4, 3).with_padding(1).with_bias(false)));
  model->add(std::make_shared<layers::BatchNorm2d>(4));
  model->add(std::make_shared<layers::Flatten>());
  model->add(std::make_shared<layers::Linear>(256, 10));
  ModelAccount f = account_model(*model, {8, 8, 3});
  // Float: 108 + 2560 + 10 parameters + gamma, beta (8); 4 bytes each, plus BN mean/var.
  EXPECT_EQ(f.params, 108 + 2560 + 10 + 8);
  EXPECT_EQ(f.model_bytes, 4 * (108 + 2560 + 10) + 16 * 4);
  EXPECT_EQ(f.float_bytes, f.model_bytes);
  EXPECT_EQ(f.macs, 8 * 8 * 4 * 27 + 2560);
  EXPECT_DOUBLE_EQ(f.bops, double(f.macs) * 32 * 32);
  EXPECT_DOUBLE_EQ(f.compression_ratio, 1.0);

  QuantConfig cfg;  // LSQ W4A4 per-tensor, nothing kept at 8 bits
  cfg.first_last_bits = 0;
  quantize_model(*model, cfg, randn({2, 8, 8, 3}));
  ModelAccount q = account_model(*model, {8, 8, 3});
  // conv: 108 weights x 4 bit = 54 B, folded bias 4 x 4 B, weight scale 4 B, input scale 4 B;
  // BN folded: 0; linear: 2560 x 4 bit = 1280 B, bias 40 B, two scales 8 B.
  EXPECT_EQ(q.model_bytes, 54 + 16 + 4 + 4 + 1280 + 40 + 8);
  EXPECT_DOUBLE_EQ(q.bops, 6912.0 * 16 + 2560.0 * 16);
  EXPECT_DOUBLE_EQ(q.compression_ratio, 8.0);
  EXPECT_EQ(q.params, f.params);
  EXPECT_THAT(q.table(), HasSubstr("(folded)"));
  // Weights-only stage: activations float.
  set_activation_quantization(*model, false);
  EXPECT_DOUBLE_EQ(account_model(*model, {8, 8, 3}).bops, 6912.0 * 4 * 32 + 2560.0 * 4 * 32);
}

TEST(Accounting, PublishedResNet20ParameterCount) {
  auto model = resnet20(3);
  EXPECT_EQ(account_model(*model, {32, 32, 3}).params, 269722);  // He et al.: 0.27M
  EXPECT_EQ(account_model(*model, {32, 32, 3}).params, model->num_parameters());
}

// --- SAT (docs/methods.md, "SAT")
// -------------------------------------------------------------------------

QuantizerPtr dorefa_weight(int64_t bits) {
  return create_quantizer("dorefa", {{"role", "weight"}, {"bits", std::to_string(bits)}});
}

// 2-bit DoReFa of w = [[2, -2, 0.1], [-0.1, 0.6, -0.6]]: m = tanh 2, codes round(3 r) with
// r = tanh(w) / (2m) + 1/2 are 3, 0, 2, 1, 2, 1, so w_q = [[1, -1, 1/3], [-1/3, 1/3, -1/3]].
// Mean 0, unbiased variance (1 + 1 + 4/9) / 5 = 22/45, n_out = 2 (out_features):
// factor = 1 / sqrt(2 * 22/45) = sqrt(45/44).
TEST(Sat, ScaleOfALinearLayerByHand) {
  layers::Linear lin(3, 2, true);
  {
    autograd::NoGradGuard g;
    lin.weight().copy_(tensor_of({2, -2, 0.1, -0.1, 0.6, -0.6}, {2, 3}));
    lin.bias().copy_(tensor_of({0.25, -0.5}, {2}));
  }
  auto plain = std::make_shared<QLinear>(lin, dorefa_weight(2), nullptr);
  auto sat = std::make_shared<QLinear>(lin, dorefa_weight(2), nullptr);
  sat->set_sat_rescale(true);
  const double c = std::sqrt(45.0 / 44.0);
  EXPECT_EQ(sat_fan_out(lin.weight()), 2);
  EXPECT_NEAR(sat_factor(plain->quantized_weight(), 2).item(), c, 1e-6);
  const std::vector<double> wq = {1, -1, 1.0 / 3, -1.0 / 3, 1.0 / 3, -1.0 / 3};
  std::vector<double> want;
  for (double v : wq) want.push_back(v * c);
  EXPECT_TENSOR_NEAR(sat->quantized_weight(), tensor_of(want, {2, 3}), 1e-6, 1e-6);
  EXPECT_NEAR(var(sat->quantized_weight()).item(), 0.5, 1e-6);  // Var[w_sat] = 1 / n_out
  // The layer's output by hand, the same in training and eval.
  const std::vector<double> x = {0.5, -1.0, 2.0};
  for (bool training : {true, false}) {
    sat->train(training);
    std::vector<double> y = {0.25, -0.5};
    for (int j = 0; j < 2; ++j) {
      for (int i = 0; i < 3; ++i) y[size_t(j)] += want[size_t(j * 3 + i)] * x[size_t(i)];
    }
    EXPECT_TENSOR_NEAR(sat->forward(tensor_of(x, {1, 3})), tensor_of(y, {1, 2}), 1e-5, 1e-6);
  }
  // The factor is a constant: the weight gradient is the plain one times c.
  sat->train();
  Tensor up = tensor_of({1.0, -2.0}, {1, 2});
  sum(plain->forward(tensor_of(x, {1, 3})) * up).backward();
  Tensor g_plain = lin.weight().grad().clone();
  lin.weight().zero_grad();
  sum(sat->forward(tensor_of(x, {1, 3})) * up).backward();
  EXPECT_TENSOR_NEAR(lin.weight().grad(), g_plain * c, 1e-6, 1e-6);
}

// The classifier always, convolutions with sat_rescale_conv; kept in the plan (checkpoints,
// lowbit eval) and through BN folding; one fp32 constant per rescaled layer in the model size.
TEST(Sat, PlanFoldingAndAccounting) {
  manual_seed(23);
  auto make_model = [] {
    auto m = std::make_shared<layers::Sequential>();
    m->add(std::make_shared<layers::Conv2d>(
        layers::Conv2dOptions(3, 4, 3).with_padding(1).with_bias(false)));
    m->add(std::make_shared<layers::BatchNorm2d>(4));
    m->add(std::make_shared<layers::Flatten>());
    m->add(std::make_shared<layers::Linear>(256, 10));
    return m;
  };
  Tensor x = randn({2, 8, 8, 3});
  QuantConfig cfg;
  cfg.weight = {"dorefa", QuantizerOptions{{"bits", "4"}}};
  cfg.first_last_bits = 0;
  auto base = make_model();
  auto sat = make_model();
  sat->load_state_dict(base->state_dict());
  quantize_model(*base, cfg, x);
  cfg.sat = true;
  QuantPlan plan = quantize_model(*sat, cfg, x);
  ASSERT_EQ(plan.layers.size(), 2u);
  EXPECT_FALSE(plan.layers[0].sat_rescale);
  EXPECT_TRUE(plan.layers[1].sat_rescale);
  EXPECT_EQ(account_model(*sat, {8, 8, 3}).model_bytes,
            account_model(*base, {8, 8, 3}).model_bytes + 4);
  cfg.sat_rescale_conv = true;
  auto both = make_model();
  both->load_state_dict(base->state_dict(), false);
  QuantPlan plan2 = quantize_model(*both, cfg, x);
  EXPECT_TRUE(plan2.layers[0].sat_rescale);
  EXPECT_EQ(account_model(*both, {8, 8, 3}).model_bytes,
            account_model(*base, {8, 8, 3}).model_bytes + 8);
  // The plan round trip rebuilds the rescaling.
  auto rebuilt = make_model();
  apply_quant_plan(*rebuilt, QuantPlan::parse(plan2.str()));
  rebuilt->load_state_dict(both->state_dict(), true);
  both->eval();
  rebuilt->eval();
  EXPECT_TENSOR_NEAR(rebuilt->forward(x), both->forward(x), 0, 0);
  // Folded conv in eval: conv(x, c FQ(W_f)) + b_f with c of FQ(W_f) (DoReFa, 4 bits).
  auto* qc = dynamic_cast<QConv2d*>(both->child("0").get());
  ASSERT_NE(qc, nullptr);
  ASSERT_NE(qc->folded_bn(), nullptr);
  auto* bn = qc->folded_bn();
  qc->input_quantizer()->set_enabled(false);  // the reference convolves the float input
  autograd::NoGradGuard g;
  Tensor std_r = sqrt(bn->running_var() + 1e-5);
  Tensor wf = qc->weight() * (bn->weight() / std_r).reshape({4, 1, 1, 1});
  Tensor fq = dorefa_quantize(wf, 4, true);
  const double c = 1.0 / std::sqrt(36.0 * var(fq).item());  // n_out = K R S = 4 * 3 * 3
  Tensor b_f = bn->bias() - bn->weight() * bn->running_mean() / std_r;
  Tensor ref = layers::conv2d(x, fq * c, b_f, qc->options());
  EXPECT_TENSOR_NEAR(bn->forward(qc->forward(x)), ref, 1e-4, 1e-4);
}

TEST(Sat, ModelWithoutALinearClassifierIsRefusedNamingTheKey) {
  auto m = std::make_shared<layers::Sequential>();
  m->add(std::make_shared<layers::Conv2d>(layers::Conv2dOptions(3, 4, 3).with_padding(1)));
  m->add(std::make_shared<layers::Flatten>());
  QuantConfig cfg;
  cfg.sat = true;
  try {
    quantize_model(*m, cfg, randn({2, 8, 8, 3}));
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("sat.enabled"));
    EXPECT_THAT(e.what(), HasSubstr("Conv2d"));
  }
  // A rule that keeps the classifier float leaves SAT nothing to rescale.
  auto r = resnet20();
  cfg.rules.push_back(QuantRule{"linear", "", true, "", "", {}, {}, true});
  try {
    quantize_model(*r, cfg, randn({2, 16, 16, 1}));
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("sat.enabled"));
  }
}

// The quantized ResNet-20 (LSQ W4A4, folded BN) gives the same training step on both backends.
TEST(QuantizeModelGpu, ResNet20QatStepMatchesCpu) {
  LOWBIT_SKIP_WITHOUT_GPU();
  manual_seed(20);
  auto a = resnet20();
  auto b = resnet20();
  Tensor x = randn({4, 16, 16, 1});
  QuantPlan plan = quantize_model(*a, QuantConfig{}, x);
  apply_quant_plan(*b, plan);
  b->load_state_dict(a->state_dict());
  b->to(Device::cuda(0));
  a->train();
  b->train();
  Tensor ya = a->forward(x);
  Tensor yb = b->forward(x.to(Device::cuda(0)));
  EXPECT_TENSOR_NEAR(yb.to(Device::cpu()), ya, 1e-3, 1e-3);
  sum(ya * ya).backward();
  sum(yb * yb).backward();
  auto pa = a->named_parameters();
  auto pb = b->named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    ASSERT_TRUE(pb[i].second.grad().defined()) << pb[i].first;
    EXPECT_TENSOR_NEAR(pb[i].second.grad().to(Device::cpu()), pa[i].second.grad(), 2e-2, 2e-3)
        << pa[i].first;
  }
}

}  // namespace
}  // namespace lowbit::quant
