// PfQ (docs/methods.md, "PfQ"-5.4) and the ratio baselines through prune_model.
// "Trained" models: BN statistics randomised away from the threshold, then chosen Conv+BN
// channels collapsed: their filters decayed to 1e-5 of the init, running var 1e-8, running
// mean 0 (docs/methods.md, "PfQ"). The masked reference is built by hand from the same model:
// filters zeroed and running mean 0, so each collapsed BN outputs exactly its constant. With border
// = exact the pruned model must equal that reference up to float summation order (rtol 1e-4, atol
// 1e-5 on outputs of order 1); with border = full it is exact at every output whose receptive field
// stays inside the image and off by at most the padded taps' share on the border.
#include <gmock/gmock.h>

#include <nlohmann/json.hpp>

#include "layers/basic.h"
#include "prune/prune.h"
#include "prune/surgery.h"
#include "tests/common/test_util.h"
#include "tests/prune/prune_test_util.h"

namespace lowbit::prune {
namespace {

using lowbit::testing::error_of;
using lowbit::testing::to_doubles;
using ::testing::HasSubstr;
using namespace lowbit::prune::testing;  // NOLINT

struct Collapse {
  std::string conv, bn;
  std::vector<int64_t> channels;
};

struct PfqCase {
  std::string model, shortcut;
  Shape hwc;
  std::vector<Collapse> collapses;
  int64_t removed, masked;
};

void check_exact_fold(const PfqCase& c) {
  SCOPED_TRACE(c.model + " " + c.shortcut);
  manual_seed(21);
  const auto o = zoo_options(c.hwc[2], c.hwc[0], c.shortcut);
  auto m = models::create_model(c.model, o);
  randomize_bn(*m);
  for (const Collapse& k : c.collapses) {
    collapse(*m, k.conv, k.bn, k.channels, 1e-5);
    // Positive constants (ReLU keeps them), so that every fold matters downstream.
    set_entries(module_as<layers::BatchNorm2d>(*m, k.bn)->bias(), k.channels, 0.8);
  }
  auto ref = clone_model(c.model, o, *m);
  for (const Collapse& k : c.collapses) collapse(*ref, k.conv, k.bn, k.channels, 0.0);
  const Tensor x = randn({2, c.hwc[0], c.hwc[1], c.hwc[2]});
  const Tensor y_orig = eval_forward(*m, x);

  PruneOptions po;
  po.border = "exact";
  const PruneReport rep = prune_model(*m, po, c.hwc);
  EXPECT_EQ(rep.removed, c.removed) << rep.table();
  EXPECT_EQ(rep.masked, c.masked) << rep.table();
  EXPECT_LT(rep.params_after, rep.params_before);
  const Tensor y = eval_forward(*m, x);
  EXPECT_TENSOR_NEAR(y, eval_forward(*ref, x), 1e-4, 1e-5);
  // And the approximation itself (decayed filters -> their constant) is small here.
  EXPECT_TENSOR_NEAR(y, y_orig, 0.05, 0.05);
}

TEST(Pfq, ExactFoldMatchesMaskedReferenceResNet20B) {
  check_exact_fold({"resnet20",
                    "B",
                    {32, 32, 3},
                    {{"layer1.0.conv1", "layer1.0.bn1", {0, 5}},
                     {"layer2.1.conv1", "layer2.1.bn1", {3}},
                     {"layer3.0.conv2", "layer3.0.bn2", {7}},
                     {"layer2.0.shortcut.0", "layer2.0.shortcut.1", {2}}},
                    3,
                    2});
}

TEST(Pfq, ExactFoldMatchesMaskedReferenceResNet20A) {
  check_exact_fold({"resnet20",
                    "A",
                    {32, 32, 3},
                    {{"layer1.1.conv1", "layer1.1.bn1", {2, 9}},
                     {"layer2.2.conv2", "layer2.2.bn2", {4}},
                     {"conv1", "bn1", {3}}},
                    2,
                    2});
}

TEST(Pfq, ExactFoldMatchesMaskedReferenceMobileNetV2) {
  check_exact_fold({"mobilenet_v2",
                    "A",
                    {32, 32, 3},
                    {{"features.0.0", "features.0.1", {4}},                    // stem -> dw -> proj
                     {"features.1.conv.1", "features.1.conv.2", {2}},          // proj -> expansion
                     {"features.4.conv.0.0", "features.4.conv.0.1", {0, 10}},  // through dw
                     {"features.7.conv.1.0", "features.7.conv.1.1", {5}},      // dw only
                     {"features.5.conv.2", "features.5.conv.3", {3}},          // residual: masked
                     {"features.18.0", "features.18.1", {100}}},               // -> classifier
                    6,
                    1});
}

TEST(Pfq, ExactFoldMatchesMaskedReferenceDsNetAndVgg) {
  check_exact_fold(
      {"dsnet",
       "A",
       {28, 28, 1},
       {{"features.0.0", "features.0.1", {1, 4}}, {"features.2.0", "features.2.1", {3}}},
       3,
       0});
  check_exact_fold({"vgg16_bn",
                    "A",
                    {32, 32, 3},
                    {{"features.0", "features.1", {5}}, {"features.40", "features.41", {7}}},
                    2,
                    0});
}

// conv1 (3x3, pad 1) -> BN + ReLU -> conv2 (k x k, pad (k-1)/2): the output is conv2's map, so
// border and interior positions can be told apart.
std::shared_ptr<layers::Sequential> tiny(int64_t k2) {
  manual_seed(99);
  auto s = std::make_shared<layers::Sequential>();
  s->add(std::make_shared<layers::Conv2d>(
      layers::Conv2dOptions(3, 6, 3).with_padding(1).with_bias(false)));
  layers::BatchNormOptions bo{6};
  bo.fuse_relu = true;
  s->add(std::make_shared<layers::BatchNorm2d>(bo));
  s->add(
      std::make_shared<layers::Conv2d>(layers::Conv2dOptions(6, 4, k2).with_padding((k2 - 1) / 2)));
  randomize_bn(*s);
  auto* bn = module_as<layers::BatchNorm2d>(*s, "1");
  set_entries(bn->bias(), {1}, 0.7);   // a_1 = 0.7
  set_entries(bn->bias(), {4}, -0.3);  // a_4 = relu(-0.3) = 0: nothing to fold
  collapse(*s, "0", "1", {1, 4}, 0.0);
  return s;
}

TEST(Pfq, FullBorderIsExactInsideAndBoundedOnTheBorder) {
  const Tensor x = randn({2, 8, 8, 3});
  auto ref = tiny(3);
  const Tensor y_ref = eval_forward(*ref, x);
  auto m = tiny(3);
  PruneOptions po;  // border = full (lowbit default)
  const PruneReport rep = prune_model(*m, po, {8, 8, 3});
  ASSERT_EQ(rep.removed, 2);
  EXPECT_EQ(module_as<layers::Conv2d>(*m, "2")->options().in_channels, 4);
  const Tensor y = eval_forward(*m, x);
  EXPECT_TENSOR_NEAR(y.slice(1, 1, 7).slice(2, 1, 7), y_ref.slice(1, 1, 7).slice(2, 1, 7), 1e-5,
                     1e-5);
  // Border: the folded bias is too large by a_1 * (sum of W2 over the padded taps), at most
  // a_1 * sum_{r,s} |W2[k, r, s, 1]|.
  auto* w2 = module_as<layers::Conv2d>(*ref, "2");
  const Tensor bound = (abs(w2->weight().detach().slice(3, 1, 2)).sum({1, 2, 3}) * 0.7);  // (K)
  const Tensor err = abs(y - y_ref);
  const std::vector<double> e = to_doubles(err), b = to_doubles(bound);
  double worst = 0;
  for (size_t i = 0; i < e.size(); ++i) {
    const size_t k = i % 4;
    ASSERT_LE(e[i], b[k] + 1e-5) << i;
    worst = std::max(worst, e[i]);
  }
  EXPECT_GT(worst, 1e-3);  // the border approximation is real, not exact by accident
  // border = exact removes it.
  auto m2 = tiny(3);
  po.border = "exact";
  prune_model(*m2, po, {8, 8, 3});
  EXPECT_TRUE(module_as<layers::Conv2d>(*m2, "2")->bias_map().defined());
  EXPECT_TENSOR_NEAR(eval_forward(*m2, x), y_ref, 1e-5, 1e-5);
}

TEST(Pfq, FullBorderIsExactForPointwiseConsumers) {
  const Tensor x = randn({2, 8, 8, 3});
  auto ref = tiny(1);
  auto m = tiny(1);
  const PruneReport rep = prune_model(*m, PruneOptions{}, {8, 8, 3});
  ASSERT_EQ(rep.removed, 2);
  EXPECT_TENSOR_NEAR(eval_forward(*m, x), eval_forward(*ref, x), 1e-5, 1e-5);
  // The constant 0.7 went into the bias: b2'[k] - b2[k] = 0.7 * W2[k, 0, 0, 1].
  auto* c2 = module_as<layers::Conv2d>(*ref, "2");
  const Tensor expect =
      c2->bias().detach() + c2->weight().detach().slice(3, 1, 2).reshape({4}) * 0.7;
  EXPECT_TENSOR_NEAR(module_as<layers::Conv2d>(*m, "2")->bias(), expect, 1e-6, 1e-6);
}

TEST(Pfq, FindsCollapsedFiltersAndReportsThem) {
  manual_seed(4);
  const auto o = zoo_options(3, 32, "B");
  auto m = models::create_model("resnet20", o);
  randomize_bn(*m);
  collapse(*m, "layer1.0.conv1", "layer1.0.bn1", {0, 5}, 1e-5);
  collapse(*m, "layer3.0.conv2", "layer3.0.bn2", {7}, 1e-5);
  auto* bn1 = module_as<layers::BatchNorm2d>(*m, "layer1.0.bn1");
  set_entries(bn1->bias(), {0}, 0.3);   // constant relu(0.3) = 0.3: folded into conv2's bias
  set_entries(bn1->bias(), {5}, -0.2);  // relu(-0.2) = 0: nothing to fold
  const PruneReport rep = prune_model(*m, PruneOptions{}, {32, 32, 3});
  ASSERT_EQ(rep.channels.size(), 3u) << rep.table();
  EXPECT_EQ(rep.channels[0].layer, "layer1.0.bn1");
  EXPECT_EQ(rep.channels[0].conv, "layer1.0.conv1");
  EXPECT_EQ(rep.channels[0].channel, 0);
  EXPECT_EQ(rep.channels[0].action, "removed");
  EXPECT_EQ(rep.channels[1].channel, 5);
  EXPECT_EQ(rep.channels[2].layer, "layer3.0.bn2");
  EXPECT_EQ(rep.channels[2].action, "masked");
  EXPECT_THAT(rep.channels[2].reason, HasSubstr("residual"));
  EXPECT_NEAR(rep.channels[0].var, 1e-8, 1e-12);
  // Output std |gamma| sqrt(var / (var + eps)) and the constant relu(beta) (fused ReLU).
  const PrunedChannel& c0 = rep.channels[0];
  EXPECT_NEAR(c0.out_std, std::fabs(c0.gamma) * std::sqrt(1e-8 / (1e-8 + 1e-5)), 1e-9);
  EXPECT_NEAR(c0.constant, 0.3, 1e-7);
  EXPECT_EQ(rep.channels[1].constant, 0.0);
  EXPECT_NEAR(rep.channels[2].constant, rep.channels[2].beta, 1e-7);  // bn2: no activation
  EXPECT_EQ(rep.removed, 2);
  EXPECT_EQ(rep.masked, 1);
  EXPECT_EQ(rep.skipped, 0);
  // Parameters: conv1 loses 2 filters (2*27*16... 2 * 3*3*16), bn1 2*2, conv2 2 input slices
  // (16 * 3*3 * 2); the folded constant gives conv2 a bias (16).
  const int64_t delta = 2 * 9 * 16 + 2 * 2 + 16 * 9 * 2 - 16;
  EXPECT_EQ(rep.params_before - rep.params_after, delta);
  EXPECT_LT(rep.bytes_after, rep.bytes_before);
  EXPECT_LT(rep.bops_after, rep.bops_before);
  EXPECT_LT(rep.macs_after, rep.macs_before);
  bool saw_conv1 = false, saw_masked = false;
  for (const LayerChange& l : rep.layers) {
    if (l.name == "layer1.0.conv1") {
      saw_conv1 = true;
      EXPECT_EQ(l.channels_before, 16);
      EXPECT_EQ(l.channels_after, 14);
      EXPECT_EQ(l.params_before - l.params_after, 2 * 9 * 16);
    }
    if (l.name == "layer3.0.conv2") {
      saw_masked = true;
      EXPECT_EQ(l.masked, 1);
      EXPECT_EQ(l.channels_after, 64);
    }
  }
  EXPECT_TRUE(saw_conv1 && saw_masked) << rep.table();
  const std::string t = rep.table();
  EXPECT_THAT(t, HasSubstr("layer1.0.conv1"));
  EXPECT_THAT(t, HasSubstr("2 removed, 1 masked, 0 skipped"));
  const nlohmann::json j = rep.to_json();
  EXPECT_EQ(j["removed"], 2);
  EXPECT_EQ(j["channels"].size(), 3u);
  EXPECT_EQ(j["channels"][2]["action"], "masked");
  EXPECT_EQ(j["options"]["border"], "full");
}

TEST(Pfq, ResidualSkipAndMaskMode) {
  manual_seed(8);
  const auto o = zoo_options(3, 32, "B");
  auto base = models::create_model("resnet20", o);
  randomize_bn(*base);
  collapse(*base, "layer1.0.conv1", "layer1.0.bn1", {0, 5}, 1e-3);
  collapse(*base, "layer3.0.conv2", "layer3.0.bn2", {7}, 1e-3);
  const Tensor x = randn({2, 32, 32, 3});

  auto skip = clone_model("resnet20", o, *base);
  PruneOptions ps;
  ps.residual = "skip";
  const PruneReport rs = prune_model(*skip, ps, {32, 32, 3});
  EXPECT_EQ(rs.removed, 2);
  EXPECT_EQ(rs.skipped, 1);
  EXPECT_FALSE(module_as<layers::Conv2d>(*skip, "layer3.0.conv2")->weight_mask().defined());

  auto masked = clone_model("resnet20", o, *base);
  PruneOptions pm;
  pm.mode = "mask";
  const PruneReport rm = prune_model(*masked, pm, {32, 32, 3});
  EXPECT_EQ(rm.masked, 3);
  EXPECT_EQ(rm.removed, 0);
  EXPECT_EQ(rm.params_after, rm.params_before);
  EXPECT_EQ(module_as<layers::Conv2d>(*masked, "layer1.0.conv1")->options().out_channels, 16);
  auto exact = clone_model("resnet20", o, *base);
  PruneOptions pe;
  pe.border = "exact";
  prune_model(*exact, pe, {32, 32, 3});
  // Mask mode is exact (docs/methods.md, "PfQ"): same eval output as structural with exact borders.
  EXPECT_TENSOR_NEAR(eval_forward(*masked, x), eval_forward(*exact, x), 1e-4, 1e-5);
  // Fine-tuning keeps masked filters at zero: their gradient is zero.
  masked->train();
  masked->forward(x).sum().backward();
  auto* c1 = module_as<layers::Conv2d>(*masked, "layer1.0.conv1");
  const std::vector<double> g = to_doubles(c1->weight().grad().slice(0, 5, 6));
  for (double v : g) ASSERT_EQ(v, 0.0);
}

TEST(Pfq, DataMeanConstantIsTheCalibrationMean) {
  const auto o = zoo_options(1, 28);
  manual_seed(13);
  auto m = models::create_model("dsnet", o);
  randomize_bn(*m);
  // Filters decayed to 5% only: the BN output still varies, so the data mean differs from beta.
  collapse(*m, "features.2.0", "features.2.1", {3, 9}, 0.05);
  std::vector<Tensor> batches;
  for (int i = 0; i < 3; ++i) batches.push_back(randn({4, 28, 28, 1}));

  // The expected constants: mean of the BN output (ReLU fused) over the batches.
  struct Rec : layers::ForwardRecorder {
    layers::Module* target = nullptr;
    Tensor sum;
    int64_t n = 0;
    void on_forward(layers::Module& mod, const Tensor&, const Tensor& out) override {
      if (&mod != target) return;
      Tensor s = lowbit::sum(out.to(DType::f64), {0, 1, 2});
      sum = sum.defined() ? sum + s : s;
      n += out.size(0) * out.size(1) * out.size(2);
    }
  } rec;
  rec.target = module_as<layers::Module>(*m, "features.2.1");
  {
    layers::RecordForward guard(&rec);
    for (const Tensor& b : batches) eval_forward(*m, b);
  }
  const std::vector<double> mean = to_doubles(rec.sum * (1.0 / double(rec.n)));

  auto ref = clone_model("dsnet", o, *m);
  size_t next = 0;
  PruneOptions po;
  po.constant = "data_mean";
  po.border = "exact";
  const PruneReport rep = prune_model(*m, po, {28, 28, 1}, [&](Tensor& x) {
    if (next >= batches.size()) return false;
    x = batches[next++];
    return true;
  });
  ASSERT_EQ(rep.removed, 2);
  EXPECT_NEAR(rep.channels[0].constant, mean[3], 1e-6);
  EXPECT_NEAR(rep.channels[1].constant, mean[9], 1e-6);
  EXPECT_GT(std::fabs(rep.channels[0].constant - std::max(rep.channels[0].beta, 0.0)), 1e-4);
  // Reference: the collapsed BN outputs exactly its data mean.
  collapse(*ref, "features.2.0", "features.2.1", {3, 9}, 0.0);
  auto* rb = module_as<layers::BatchNorm2d>(*ref, "features.2.1");
  set_entries(rb->bias(), {3}, mean[3]);
  set_entries(rb->bias(), {9}, mean[9]);
  const Tensor x = randn({2, 28, 28, 1});
  EXPECT_TENSOR_NEAR(eval_forward(*m, x), eval_forward(*ref, x), 1e-4, 1e-5);
  EXPECT_THAT(error_of([&] {
                auto m2 = models::create_model("dsnet", o);
                prune_model(*m2, po, {28, 28, 1});
              }),
              HasSubstr("needs calibration batches"));
}

TEST(Pfq, OutputStdThresholdAndRefusals) {
  const auto o = zoo_options(1, 28);
  manual_seed(17);
  auto m = models::create_model("dsnet", o);
  randomize_bn(*m);
  collapse(*m, "features.2.0", "features.2.1", {3, 9}, 0.0);
  set_entries(module_as<layers::BatchNorm2d>(*m, "features.2.1")->weight(), {3}, 1e-3);
  PruneOptions po;
  po.out_std_threshold = 1e-4;  // channel 3: 1e-3 * sqrt(1e-8 / 1.001e-5) ~ 3e-5; channel 9 larger
  const PruneReport rep = prune_model(*m, po, {28, 28, 1});
  ASSERT_EQ(rep.channels.size(), 1u);
  EXPECT_EQ(rep.channels[0].channel, 3);

  std::vector<int64_t> all(64);
  for (int64_t i = 0; i < 64; ++i) all[size_t(i)] = i;
  auto dead = models::create_model("dsnet", o);
  collapse(*dead, "features.2.0", "features.2.1", all, 0.0);
  const int64_t before = dead->num_parameters();
  EXPECT_THAT(error_of([&] {
                prune_model(*dead, PruneOptions{}, {28, 28, 1});
              }),
              HasSubstr("all 64 output channels of layer 'features.2.0'"));
  EXPECT_EQ(dead->num_parameters(), before);  // refused before anything changed

  PruneOptions bad;
  bad.border = "center";
  EXPECT_THAT(error_of([&] {
                prune_model(*m, bad, {28, 28, 1});
              }),
              HasSubstr("border = 'center' is not one of: full, exact"));
  bad = PruneOptions{};
  bad.method = "magic";
  EXPECT_THAT(error_of([&] { prune_model(*m, bad, {28, 28, 1}); }), HasSubstr("bn_gamma, l1, pfq"));
  bad = PruneOptions{};
  bad.method = "l1";
  bad.mode = "mask";
  EXPECT_THROW(prune_model(*m, bad, {28, 28, 1}), InputError);
}

TEST(PruneBaselines, L1AndBnGammaRemoveTheLowestScores) {
  manual_seed(23);
  const auto o = zoo_options(3, 32, "B");
  auto m = models::create_model("resnet20", o);
  randomize_bn(*m);
  scale_filters(*module_as<layers::Conv2d>(*m, "layer1.0.conv1"), {2, 9, 11, 13}, 0.01);
  auto ref = clone_model("resnet20", o, *m);
  PruneOptions po;
  po.method = "l1";
  po.ratio = 0.25;
  const PruneReport rep = prune_model(*m, po, {32, 32, 3});
  // 9 branch convs (16/32/64 channels): a quarter each; the streams are skipped.
  EXPECT_EQ(rep.removed, 3 * (4 + 8 + 16));
  std::vector<int64_t> l1_first;
  for (const PrunedChannel& c : rep.channels) {
    if (c.layer == "layer1.0.conv1") l1_first.push_back(c.channel);
  }
  EXPECT_EQ(l1_first, (std::vector<int64_t>{2, 9, 11, 13}));
  EXPECT_EQ(module_as<layers::Conv2d>(*m, "layer2.0.conv1")->options().out_channels, 24);
  EXPECT_EQ(module_as<layers::Conv2d>(*m, "layer2.0.conv2")->options().out_channels, 32);
  // No folding: equal to the reference whose removed channels carry exactly zero.
  const ChannelGraph gref = trace_channel_graph(*ref, {32, 32, 3});
  for (const PrunedChannel& c : rep.channels) {
    const GraphLayer& l = gref.layer(c.conv);
    for (int mem : gref.groups[size_t(l.group)].members) {
      const GraphLayer& ml = gref.layers[size_t(mem)];
      if (auto* conv = ml.conv()) scale_filters(*conv, {c.channel}, 0.0);
      if (auto* bn = ml.bn()) {
        set_entries(bn->bias(), {c.channel}, 0.0);
        set_entries(bn->running_mean(), {c.channel}, 0.0);
      }
    }
  }
  const Tensor x = randn({2, 32, 32, 3});
  EXPECT_TENSOR_NEAR(eval_forward(*m, x), eval_forward(*ref, x), 1e-4, 1e-5);

  // Network slimming: the smallest |gamma|, here globally.
  manual_seed(29);
  auto s = models::create_model("resnet20", o);
  randomize_bn(*s);
  set_entries(module_as<layers::BatchNorm2d>(*s, "layer2.1.bn1")->weight(), {4, 6}, -1e-3);
  set_entries(module_as<layers::BatchNorm2d>(*s, "layer3.2.bn1")->weight(), {1}, 1e-4);
  PruneOptions pg;
  pg.method = "bn_gamma";
  pg.scope = "global";
  pg.ratio = 3.0 / (3 * (16 + 32 + 64)) + 1e-9;  // exactly three of the 336 candidates
  const PruneReport rg = prune_model(*s, pg, {32, 32, 3});
  ASSERT_EQ(rg.removed, 3) << rg.table();
  EXPECT_EQ(rg.channels[0].layer, "layer2.1.conv1");
  EXPECT_EQ(rg.channels[2].layer, "layer3.2.conv1");
  EXPECT_EQ(module_as<layers::BatchNorm2d>(*s, "layer2.1.bn1")->options().num_features, 30);
  EXPECT_THAT(rg.table(), ::testing::HasSubstr("removed: "));
  EXPECT_THAT(rg.table(), ::testing::HasSubstr(" -> not folded"));  // baselines fold nothing
}

TEST(PfqGpu, MatchesCpu) {
  LOWBIT_SKIP_WITHOUT_GPU();
  for (const char* border : {"full", "exact"}) {
    SCOPED_TRACE(border);
    manual_seed(31);
    const auto o = zoo_options();
    auto cpu = models::create_model("mobilenet_v2", o);
    randomize_bn(*cpu);
    collapse(*cpu, "features.4.conv.0.0", "features.4.conv.0.1", {0, 10}, 1e-3);
    collapse(*cpu, "features.7.conv.1.0", "features.7.conv.1.1", {5}, 1e-3);
    collapse(*cpu, "features.5.conv.2", "features.5.conv.3", {3}, 1e-3);
    collapse(*cpu, "features.18.0", "features.18.1", {100}, 1e-3);
    auto gpu = clone_model("mobilenet_v2", o, *cpu);
    gpu->to(Device::cuda(0));
    PruneOptions po;
    po.border = border;
    const PruneReport rc = prune_model(*cpu, po, {32, 32, 3});
    const PruneReport rg = prune_model(*gpu, po, {32, 32, 3});
    ASSERT_EQ(rc.channels.size(), rg.channels.size());
    for (size_t i = 0; i < rc.channels.size(); ++i) {
      EXPECT_EQ(rc.channels[i].layer, rg.channels[i].layer);
      EXPECT_EQ(rc.channels[i].channel, rg.channels[i].channel);
      EXPECT_EQ(rc.channels[i].action, rg.channels[i].action);
      EXPECT_NEAR(rc.channels[i].constant, rg.channels[i].constant, 1e-6);
    }
    EXPECT_EQ(rc.params_after, rg.params_after);
    const auto sg = gpu->state_dict();
    ASSERT_EQ(cpu->state_dict().size(), sg.size());
    for (auto& [n, p] : cpu->state_dict()) {
      // A key on one side only (a bias map on one, a bias on the other) fails here, by name.
      ASSERT_TRUE(sg.count(n)) << n << " is in the CPU model only";
      EXPECT_EQ(p.shape(), sg.at(n).shape()) << n;
      EXPECT_EQ(sg.at(n).device(), Device::cuda(0)) << n;
    }
    const Tensor x = randn({2, 32, 32, 3});
    // cuDNN and oneDNN sum in different orders: float tolerance.
    EXPECT_TENSOR_NEAR(eval_forward(*gpu, x.to(Device::cuda(0))).to(Device::cpu()),
                       eval_forward(*cpu, x), 1e-4, 1e-4);
  }
}

}  // namespace
}  // namespace lowbit::prune
