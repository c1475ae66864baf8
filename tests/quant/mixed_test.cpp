// The mixed-precision layers of the differentiable search (quant/mixed.h): G(alpha) and its
// gradient against the closed form and finite differences, the mixture's gradients by gradcheck,
// the mixture against its candidates computed one by one, the shared-BN form, and the argmax
// export back to plain layers.
#include "quant/mixed.h"

#include <gmock/gmock.h>

#include <cmath>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/random.h"
#include "layers/basic.h"
#include "models/registry.h"
#include "quant/binary.h"
#include "tests/common/gradcheck.h"
#include "tests/common/test_util.h"

namespace lowbit::quant {
namespace {

using ::testing::HasSubstr;

layers::ModulePtr dsnet() {
  models::ModelOptions o;
  o.in_channels = 1;
  o.input_size = 8;
  o.num_classes = 4;
  return models::create_model("dsnet", o);
}

// Candidates {8-bit, 1, 2 bits} on the DS net (4 searched layers), random alphas.
TEST(MixedPrecision, ExpectedSizeMatchesTheClosedFormAndFiniteDifferences) {
  manual_seed(3);
  auto model = dsnet();
  SearchSpec spec;
  spec.candidates = {{"uniform", QuantizerOptions{{"bits", "8"}, {"per_channel", "false"}}},
                     {"binary", QuantizerOptions{{"bits", "1"}}},
                     {"uniform", QuantizerOptions{{"bits", "2"}, {"per_channel", "false"}}}};
  const SearchPlan plan = plan_search(*model, spec, randn({2, 8, 8, 1}));
  ASSERT_EQ(plan.layers.size(), 4u);
  EXPECT_EQ(plan.layers[0].weights, 32 * 9);
  EXPECT_EQ(plan.layers[1].weights, 32 * 9);
  EXPECT_EQ(plan.layers[2].weights, 64 * 32);
  EXPECT_EQ(plan.layers[3].weights, 4 * 64);
  EXPECT_EQ(plan.layers[0].bn, "features.0.1");
  EXPECT_EQ(plan.layers[3].bn, "");
  apply_search_plan(*model, plan);
  auto layers = mixed_layers(*model);
  ASSERT_EQ(layers.size(), 4u);
  {
    autograd::NoGradGuard g;
    for (auto& [name, c] : layers) c->alpha().copy_(randn({3}));
  }
  // Closed form in double.
  const double bits[3] = {8, 1, 2};
  double total = 0;
  for (const auto& l : plan.layers) total += double(l.weights);
  double g_ref = 0;
  std::vector<std::vector<double>> dg(4);
  for (size_t i = 0; i < 4; ++i) {
    const Tensor a = layers[i].second->alpha().detach().to(DType::f64).contiguous();
    double z = 0, p[3], gbar = 0;
    for (int j = 0; j < 3; ++j) z += std::exp(a.data<double>()[j]);
    for (int j = 0; j < 3; ++j) {
      p[j] = std::exp(a.data<double>()[j]) / z;
      gbar += p[j] * bits[j];
    }
    const double n = double(plan.layers[i].weights);
    g_ref += n * gbar / (32 * total);
    for (int j = 0; j < 3; ++j) dg[i].push_back(n * p[j] * (bits[j] - gbar) / (32 * total));
  }
  Tensor g = expected_size(*model, plan);
  EXPECT_NEAR(g.item(), g_ref, 1e-6);
  g.backward();
  for (size_t i = 0; i < 4; ++i) {
    const Tensor gr = layers[i].second->alpha().grad().to(DType::f64).contiguous();
    for (int j = 0; j < 3; ++j) EXPECT_NEAR(gr.data<double>()[j], dg[i][size_t(j)], 1e-7);
  }
  // And by finite differences through the module (alphas as f64 leaves).
  std::vector<Tensor> inputs;
  for (auto& [name, c] : layers) inputs.push_back(c->alpha().detach().to(DType::f64));
  EXPECT_TRUE(testing::gradcheck(
      [&](const std::vector<Tensor>& a) {
        for (size_t i = 0; i < a.size(); ++i) layers[i].second->alpha() = a[i];
        return expected_size(*model, plan);
      },
      inputs));
}

// With the candidates' quantization off (identity) the mixture is smooth: its gradients in the
// input, the weight, alpha and both candidate BNs' parameters pass a finite-difference check.
TEST(MixedPrecision, MixtureGradientsPassGradcheck) {
  manual_seed(5);
  auto conv = std::make_shared<layers::Conv2d>(
      layers::Conv2dOptions(2, 3, 3).with_padding(1).with_bias(true));
  auto bn = std::make_shared<layers::BatchNorm2d>(3);
  std::vector<QuantizerPtr> cands{
      create_quantizer("binary", {{"role", "weight"}, {"channels", "3"}}),
      create_quantizer("uniform", {{"role", "weight"}, {"bits", "8"}, {"channels", "3"}})};
  for (auto& q : cands) q->set_enabled(false);
  MixedConv2d m(*conv, cands, bn, false);
  EXPECT_TRUE(bn->bypass());
  m.train();
  // The CPU convolution computes in f32: the check runs in f32 with an f32 tolerance, as the
  // conv's own gradcheck (tests/layers/conv2d_test.cpp).
  Tensor up = randn({2, 4, 4, 3});
  std::vector<Tensor> inputs{randn({2, 4, 4, 2}), m.weight().detach().clone(), randn({2}),
                             randn({3}) * 0.3 + 1.0, randn({3}) * 0.3};
  testing::GradcheckOptions o;
  o.eps = 1e-2;
  o.rtol = 1e-2;
  o.atol = 1e-3;
  EXPECT_TRUE(testing::gradcheck(
      [&](const std::vector<Tensor>& in) {
        m.weight() = in[1].to(DType::f32);
        m.choice().alpha() = in[2].to(DType::f32);
        m.candidate_bn(0)->weight() = in[3].to(DType::f32);
        m.candidate_bn(1)->bias() = in[4].to(DType::f32);
        return (m.forward(in[0].to(DType::f32)) * up).to(DType::f64);
      },
      inputs, o));
}

// The mixture equals sum_j p_j BN_j(conv(x, Q_j(W))) with each candidate computed alone (the
// forced outputs), candidate 0 equals an independent binarised conv -> BN, and the model's BN
// after the conv is bypassed while its ReLU is kept.
TEST(MixedPrecision, MixtureIsTheWeightedSumOfItsCandidates) {
  manual_seed(7);
  auto conv = std::make_shared<layers::Conv2d>(layers::Conv2dOptions(3, 4, 3).with_padding(1));
  layers::BatchNormOptions bo{4};
  bo.fuse_relu = true;
  auto bn = std::make_shared<layers::BatchNorm2d>(bo);
  const Tensor w0 = conv->weight().detach().clone();
  std::vector<QuantizerPtr> cands{
      create_quantizer("binary", {{"role", "weight"}, {"channels", "4"}}),
      create_quantizer(
          "uniform",
          {{"role", "weight"}, {"bits", "8"}, {"channels", "4"}, {"per_channel", "false"}})};
  MixedConv2d m(*conv, cands, bn, false);
  m.train();
  {
    autograd::NoGradGuard g;
    m.choice().alpha().copy_(from_vector(std::vector<float>{0.3f, -0.4f}, {2}));
  }
  const Tensor x = randn({2, 5, 5, 3});
  autograd::NoGradGuard g;
  const Tensor y = m.forward(x);
  m.choice().force(0);
  const Tensor y0 = m.forward(x);
  m.choice().force(1);
  const Tensor y1 = m.forward(x);
  m.choice().force(-1);
  const double p0 = 1.0 / (1.0 + std::exp(-0.4 - 0.3));
  EXPECT_TENSOR_NEAR(y, y0 * p0 + y1 * (1.0 - p0), 1e-5, 1e-6);
  // Candidate 0 alone, from scratch: a fresh BN in training mode on conv(x, binarize(W)).
  layers::BatchNorm2d ref_bn(4);
  ref_bn.train();
  const Tensor ref =
      ref_bn.forward(layers::conv2d(x, binarize(w0, true, true, 0), Tensor(), conv->options()));
  EXPECT_TENSOR_NEAR(y0, ref, 1e-5, 1e-6);
  // The model's BN only applies its ReLU now.
  EXPECT_TENSOR_NEAR(bn->forward(y), relu(y), 0, 0);
}

// shared_bn (and layers without a BN): one conv with the mixed weight sum_j p_j Q_j(W), the
// model's BN untouched; equal to the mixed outputs by linearity.
TEST(MixedPrecision, SharedBnMixesTheWeights) {
  manual_seed(9);
  auto conv = std::make_shared<layers::Conv2d>(layers::Conv2dOptions(3, 4, 3).with_padding(1));
  auto bn = std::make_shared<layers::BatchNorm2d>(4);
  std::vector<QuantizerPtr> cands{
      create_quantizer("binary", {{"role", "weight"}, {"channels", "4"}}),
      create_quantizer("uniform", {{"role", "weight"}, {"bits", "4"}, {"channels", "4"}})};
  MixedConv2d m(*conv, cands, bn, true);
  EXPECT_FALSE(bn->bypass());
  EXPECT_EQ(m.candidate_bn(0), nullptr);
  {
    autograd::NoGradGuard g;
    m.choice().alpha().copy_(from_vector(std::vector<float>{1.0f, 0.5f}, {2}));
  }
  const Tensor x = randn({2, 5, 5, 3});
  autograd::NoGradGuard g;
  const Tensor y = m.forward(x);
  m.choice().force(0);
  const Tensor y0 = m.forward(x);
  m.choice().force(1);
  const Tensor y1 = m.forward(x);
  const double p0 = 1.0 / (1.0 + std::exp(0.5 - 1.0));
  EXPECT_TENSOR_NEAR(y, y0 * p0 + y1 * (1.0 - p0), 1e-5, 1e-5);
}

// finish_search: each layer becomes a plain layer with its float weight, the chosen candidate's
// BN is copied into the model's BN, and the choices as rules rebuild the scheme through
// quantize_model (replace: true drops the default quantizer's options).
TEST(MixedPrecision, ArgmaxExportGivesPlainLayersAndRules) {
  manual_seed(11);
  auto model = dsnet();
  SearchSpec spec;  // binary, 8-bit
  const Tensor probe = randn({2, 8, 8, 1});
  const SearchPlan plan = plan_search(*model, spec, probe);
  apply_search_plan(*model, plan);
  EXPECT_EQ(SearchPlan::parse(plan.str()).str(), plan.str());
  auto layers = mixed_layers(*model);
  {
    autograd::NoGradGuard g;
    for (size_t i = 0; i < layers.size(); ++i) {
      // Layers 0 and 2 choose 8 bits, 1 and 3 binary.
      layers[i].second->alpha().copy_(
          from_vector(std::vector<float>{i % 2 ? 1.0f : -1.0f, 0.0f}, {2}));
    }
  }
  MixedConv2d* mc = nullptr;
  for (auto& [n, m] : model->named_modules()) {
    if (n == "features.0.0") mc = dynamic_cast<MixedConv2d*>(m.get());
  }
  ASSERT_NE(mc, nullptr);
  {
    autograd::NoGradGuard g;
    mc->candidate_bn(1)->weight().fill_(2.5);  // features.0's 8-bit BN
  }
  const Tensor w = mc->weight().detach().clone();
  const auto choices = finish_search(*model, plan);
  ASSERT_EQ(choices.size(), 4u);
  EXPECT_EQ(choices[0].bits, 8);
  EXPECT_EQ(choices[1].bits, 1);
  EXPECT_EQ(choices[2].bits, 8);
  EXPECT_EQ(choices[3].bits, 1);
  EXPECT_TRUE(mixed_layers(*model).empty());
  std::map<std::string, layers::ModulePtr> mods;
  for (auto& [n, m] : model->named_modules()) mods[n] = m;
  EXPECT_EQ(mods.at("features.0.0")->type_name(), "Conv2d");
  auto* bn = dynamic_cast<layers::BatchNorm2d*>(mods.at("features.0.1").get());
  EXPECT_FALSE(bn->bypass());
  EXPECT_TENSOR_NEAR(bn->weight(), full({32}, 2.5), 0, 0);
  EXPECT_TENSOR_NEAR(dynamic_cast<layers::Conv2d*>(mods.at("features.0.0").get())->weight(), w, 0,
                     0);
  // The rules over a config whose default weight quantizer has options binary does not read.
  QuantConfig qc;
  qc.weight = {"lsq", QuantizerOptions{{"bits", "4"}, {"per_channel", "true"}}};
  qc.first_last_bits = 0;
  qc.rules = choice_rules(choices);
  const QuantPlan qp = plan_quantization(*model, qc, probe);
  ASSERT_EQ(qp.layers.size(), 4u);
  EXPECT_EQ(qp.layers[0].weight.name, "uniform");
  EXPECT_EQ(qp.layers[1].weight.name, "binary");
  EXPECT_FALSE(qp.layers[1].weight.options.has("per_channel"));
  EXPECT_EQ(parse_rules(rules_str(qc.rules)).size(), 4u);
  EXPECT_THAT(choice_rules_yaml(choices, "test"), HasSubstr("match: \"features.1.0\""));
  EXPECT_THAT(choice_table(choices), HasSubstr("smaller than fp32"));
}

TEST(MixedPrecision, BadPlansAreInputErrors) {
  auto model = dsnet();
  SearchSpec spec;
  spec.skip = {"*"};
  EXPECT_THAT(testing::error_of([&] {
                plan_search(*model, spec, randn({2, 8, 8, 1}));
              }),
              HasSubstr("no Conv2d or Linear layer left to search"));
  SearchSpec empty;
  empty.candidates.clear();
  EXPECT_THAT(testing::error_of([&] {
                plan_search(*model, empty, randn({2, 8, 8, 1}));
              }),
              HasSubstr("search.candidates: the list is empty"));
  SearchSpec bad;
  bad.candidates = {{"binary", QuantizerOptions{{"bits", "4"}}}};
  EXPECT_THAT(testing::error_of([&] {
                plan_search(*model, bad, randn({2, 8, 8, 1}));
              }),
              HasSubstr("search.candidates.0"));
}

}  // namespace
}  // namespace lowbit::quant

namespace lowbit::quant {
namespace {

// The mixed layer on CUDA against the CPU: same output, input, weight, alpha and BN gradients,
// for separate BNs and for the shared form.
TEST(MixedPrecisionGpu, MatchesCpu) {
  LOWBIT_SKIP_WITHOUT_GPU();
  for (bool shared : {false, true}) {
    manual_seed(13);
    auto run = [&](Device dev) {
      manual_seed(13);
      auto conv = std::make_shared<layers::Conv2d>(layers::Conv2dOptions(3, 8, 3).with_padding(1));
      auto bn = std::make_shared<layers::BatchNorm2d>(8);
      std::vector<QuantizerPtr> cands{
          create_quantizer("binary", {{"role", "weight"}, {"channels", "8"}}),
          create_quantizer("uniform", {{"role", "weight"}, {"bits", "4"}, {"channels", "8"}})};
      auto m = std::make_shared<MixedConv2d>(*conv, cands, bn, shared);
      m->to(dev);
      bn->to(dev);
      m->train();
      {
        autograd::NoGradGuard g;
        m->choice().alpha().copy_(from_vector(std::vector<float>{0.2f, -0.1f}, {2}).to(dev));
      }
      Tensor x = randn({4, 6, 6, 3}).to(dev).requires_grad_(true);
      Tensor up = randn({4, 6, 6, 8}).to(dev);
      Tensor y = bn->forward(m->forward(x));
      sum(y * up).backward();
      return std::vector<Tensor>{y, x.grad(), m->weight().grad(), m->choice().alpha().grad()};
    };
    auto c = run(Device::cpu());
    auto g = run(Device::cuda(0));
    for (size_t i = 0; i < c.size(); ++i) {
      EXPECT_TENSOR_NEAR(g[i].to(Device::cpu()), c[i], 1e-4, 1e-4)
          << "shared " << shared << " " << i;
    }
  }
}

}  // namespace
}  // namespace lowbit::quant
