// Channel surgery. Reference: removing channel c is exact when the channel carries exactly 0,
// i.e. the original model with c's filters (and depthwise filters) zeroed and every BN of the
// group at beta = running mean = 0 on c (BN output gamma * (0 - 0) / s + 0 = 0, ReLU(0) = 0).
// The pruned model must match that reference up to float summation order (fewer zero terms):
// rtol 1e-4, atol 1e-5 on logits of order 1.
#include "prune/surgery.h"

#include <gmock/gmock.h>

#include "layers/basic.h"
#include "prune/prune.h"
#include "tests/common/test_util.h"
#include "tests/prune/prune_test_util.h"

namespace lowbit::prune {
namespace {

using lowbit::testing::error_of;
using ::testing::HasSubstr;
using namespace lowbit::prune::testing;  // NOLINT

// Zeroes group channels `chans` in every member of group `gid` (traced on `ref`).
void zero_group_channels(const ChannelGraph& g, int gid, const std::vector<int64_t>& chans) {
  for (int m : g.groups[size_t(gid)].members) {
    const GraphLayer& l = g.layers[size_t(m)];
    if (auto* conv = l.conv()) {
      scale_filters(*conv, chans, 0.0);
      if (conv->bias().defined()) set_entries(conv->bias(), chans, 0.0);
    } else if (auto* bn = l.bn()) {
      set_entries(bn->bias(), chans, 0.0);
      set_entries(bn->running_mean(), chans, 0.0);
    }
  }
}

struct Case {
  std::string model, shortcut;
  Shape hwc;
};

// Removes channels {1, C/2} of every removable non-residual group and compares against the
// zeroed reference; then checks shapes and a training step.
void check_branch_surgery(const Case& c) {
  SCOPED_TRACE(c.model + " " + c.shortcut);
  manual_seed(7);
  const auto o = zoo_options(c.hwc[2], c.hwc[0], c.shortcut);
  auto m = models::create_model(c.model, o);
  randomize_bn(*m);
  auto ref = clone_model(c.model, o, *m);
  const ChannelGraph g = trace_channel_graph(*m, c.hwc);
  const ChannelGraph gref = trace_channel_graph(*ref, c.hwc);
  ChannelRequest req;
  std::map<std::string, int64_t> expect_out;
  int groups = 0;
  for (const ChannelGroup& grp : g.groups) {
    if (!grp.removable || grp.residual || grp.roots.size() != 1) continue;
    const std::vector<int64_t> chans{1, grp.channels / 2};
    req[g.layers[size_t(grp.roots[0])].name] = chans;
    zero_group_channels(gref, grp.id, chans);
    for (int mem : grp.members) expect_out[g.layers[size_t(mem)].name] = grp.channels - 2;
    ++groups;
  }
  ASSERT_GT(groups, 0);
  const SurgeryResult r = remove_channels(*m, g, req);
  EXPECT_TRUE(r.kept.empty());
  EXPECT_EQ(int(r.removed.size()), groups);

  const Tensor x = randn({2, c.hwc[0], c.hwc[1], c.hwc[2]});
  EXPECT_TENSOR_NEAR(eval_forward(*m, x), eval_forward(*ref, x), 1e-4, 1e-5);
  // Shapes: members lost two channels, consumers two inputs.
  const ChannelGraph g2 = trace_channel_graph(*m, c.hwc);
  for (auto& [name, k] : expect_out) EXPECT_EQ(g2.layer(name).out_channels, k) << name;
  for (const GraphLayer& l : g2.layers) {
    if (auto* conv = l.conv()) {
      EXPECT_EQ(conv->weight().size(0), conv->options().out_channels) << l.name;
      EXPECT_EQ(conv->weight().size(3) * conv->options().groups, conv->options().in_channels)
          << l.name;
    }
  }
  // A training step runs and every parameter gets a gradient of its own shape.
  m->train();
  Tensor loss = m->forward(x).sum();
  loss.backward();
  for (auto& [n, p] : m->named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << n;
    EXPECT_EQ(p.grad().shape(), p.shape()) << n;
  }
}

TEST(PruneSurgery, ResNet20OptionAMatchesZeroedReference) {
  check_branch_surgery({"resnet20", "A", {32, 32, 3}});
}
TEST(PruneSurgery, ResNet20OptionBMatchesZeroedReference) {
  check_branch_surgery({"resnet20", "B", {32, 32, 3}});
}
TEST(PruneSurgery, MobileNetV2MatchesZeroedReference) {
  check_branch_surgery({"mobilenet_v2", "A", {32, 32, 3}});
}
TEST(PruneSurgery, Vgg16BnMatchesZeroedReference) {
  check_branch_surgery({"vgg16_bn", "A", {32, 32, 3}});
}
TEST(PruneSurgery, DsNetAndMobileNetV1MatchZeroedReference) {
  check_branch_surgery({"dsnet", "A", {28, 28, 1}});
  check_branch_surgery({"mobilenet_v1", "A", {32, 32, 3}});
}

TEST(PruneSurgery, ResidualChannelGoesOnlyWhenEveryProducerAgrees) {
  manual_seed(3);
  const auto o = zoo_options(3, 32, "B");
  auto m = models::create_model("resnet20", o);
  randomize_bn(*m);
  auto ref = clone_model("resnet20", o, *m);
  const ChannelGraph g = trace_channel_graph(*m, {32, 32, 3});
  const ChannelGroup& s2 = g.groups[size_t(g.layer("layer2.0.bn2").group)];
  ASSERT_TRUE(s2.removable && s2.residual);
  // One producer alone: nothing changes, the request is reported as kept.
  const SurgeryResult partial = remove_channels(*m, g, {{"layer2.0.conv2", {5}}});
  EXPECT_TRUE(partial.removed.empty());
  ASSERT_EQ(partial.kept.size(), 1u);
  EXPECT_THAT(partial.kept[0], HasSubstr("layer2.0.shortcut.0"));
  EXPECT_EQ(module_as<layers::Conv2d>(*m, "layer2.0.conv2")->options().out_channels, 32);
  // Every producer: the stream loses channel 5 everywhere, readers lose input 5.
  ChannelRequest all;
  for (int r : s2.roots) all[g.layers[size_t(r)].name] = {5, 20};
  const SurgeryResult full = remove_channels(*m, g, all);
  ASSERT_EQ(full.removed.size(), 1u);
  EXPECT_EQ(full.removed.begin()->second, (std::vector<int64_t>{5, 20}));
  for (const char* n : {"layer2.0.conv2", "layer2.1.conv2", "layer2.0.shortcut.0"}) {
    EXPECT_EQ(module_as<layers::Conv2d>(*m, n)->options().out_channels, 30) << n;
  }
  for (const char* n : {"layer2.1.conv1", "layer3.0.conv1", "layer3.0.shortcut.0"}) {
    EXPECT_EQ(module_as<layers::Conv2d>(*m, n)->options().in_channels, 30) << n;
  }
  EXPECT_EQ(module_as<layers::BatchNorm2d>(*m, "layer2.2.bn2")->options().num_features, 30);
  const ChannelGraph gref = trace_channel_graph(*ref, {32, 32, 3});
  zero_group_channels(gref, gref.layer("layer2.0.bn2").group, {5, 20});
  const Tensor x = randn({2, 32, 32, 3});
  EXPECT_TENSOR_NEAR(eval_forward(*m, x), eval_forward(*ref, x), 1e-4, 1e-5);
}

TEST(PruneSurgery, RefusesToEmptyALayerAndFixedGroups) {
  auto m = models::create_model("resnet20", zoo_options());
  const ChannelGraph g = trace_channel_graph(*m, {32, 32, 3});
  std::vector<int64_t> all(16);
  for (int64_t i = 0; i < 16; ++i) all[size_t(i)] = i;
  const std::string e = error_of([&] { remove_channels(*m, g, {{"layer1.0.conv1", all}}); });
  EXPECT_THAT(e, HasSubstr("all 16 output channels of layer 'layer1.0.conv1'"));
  EXPECT_THROW(remove_channels(*m, g, {{"layer1.0.conv1", all}}), InputError);
  EXPECT_EQ(module_as<layers::Conv2d>(*m, "layer1.0.conv1")->options().out_channels, 16);
  // The option-A stream crosses pad_channels: mask-only.
  EXPECT_THAT(error_of([&] {
                remove_channels(*m, g, {{"layer1.0.conv2", {0}}});
              }),
              HasSubstr("pad_channels"));
  EXPECT_THAT(error_of([&] {
                remove_channels(*m, g, {{"layer1.0.bn1", {0}}});
              }),
              HasSubstr("not a dense Conv2d"));
  EXPECT_THAT(error_of([&] {
                remove_channels(*m, g, {{"layer1.0.conv1", {16}}});
              }),
              HasSubstr("out of range"));
}

TEST(PruneSurgery, PrunedStateDictLoadsIntoAFreshModel) {
  manual_seed(11);
  for (const char* layout_name : {"lowbit", "pytorch"}) {
    SCOPED_TRACE(layout_name);
    const auto layout =
        std::string(layout_name) == "lowbit" ? layers::Layout::lowbit : layers::Layout::pytorch;
    const auto o = zoo_options();
    auto m = models::create_model("mobilenet_v2", o);
    randomize_bn(*m);
    // PfQ with exact borders adds conv biases and bias maps; the mask adds weight masks.
    collapse(*m, "features.3.conv.0.0", "features.3.conv.0.1", {2, 7});  // removed
    // Positive constants through the depthwise chain: relu6(0.5) -> dw -> BN (gamma 0.1, beta 1)
    // -> relu6 is about 1 inside and differs on the border: a bias map on the projection.
    set_entries(module_as<layers::BatchNorm2d>(*m, "features.3.conv.0.1")->bias(), {2, 7}, 0.5);
    set_entries(module_as<layers::BatchNorm2d>(*m, "features.3.conv.1.1")->weight(), {2, 7}, 0.1);
    set_entries(module_as<layers::BatchNorm2d>(*m, "features.3.conv.1.1")->bias(), {2, 7}, 1.0);
    collapse(*m, "features.3.conv.2", "features.3.conv.3", {1});  // residual: masked
    PruneOptions po;
    po.border = "exact";
    const PruneReport rep = prune_model(*m, po, {32, 32, 3});
    EXPECT_EQ(rep.removed, 2);
    EXPECT_EQ(rep.masked, 1);
    const layers::StateDict sd = m->state_dict(layout);
    EXPECT_TRUE(sd.count("features.3.conv.2.weight_mask"));
    EXPECT_TRUE(sd.count("features.3.conv.2.bias_map"));

    auto fresh = models::create_model("mobilenet_v2", o);
    EXPECT_THROW(fresh->load_state_dict(sd, true, layout), InputError);
    EXPECT_GT(apply_channel_shapes(*fresh, sd, layout), 0);
    fresh->load_state_dict(sd, true, layout);
    const Tensor x = randn({2, 32, 32, 3});
    EXPECT_TENSOR_NEAR(eval_forward(*fresh, x), eval_forward(*m, x), 0, 0);
    EXPECT_EQ(fresh->num_parameters(), m->num_parameters());
  }
}

TEST(PruneMaskedConv, MaskedFiltersStayZeroAndGetNoGradient) {
  manual_seed(5);
  layers::Conv2d conv(layers::Conv2dOptions(3, 4, 3).with_padding(1));
  layers::BatchNorm2d bn(4);
  mask_channels(conv, &bn, {1, 3});
  const Tensor x = randn({2, 5, 5, 3});
  Tensor y = conv.forward(x);
  const std::vector<double> w = lowbit::testing::to_doubles(conv.weight());
  for (size_t i = 0; i < w.size(); ++i) {
    const int64_t k = int64_t(i) / (3 * 3 * 3);
    if (k == 1 || k == 3) {
      ASSERT_EQ(w[i], 0.0) << i;
    }
  }
  y.sum().backward();
  const std::vector<double> gw = lowbit::testing::to_doubles(conv.weight().grad());
  int nonzero_kept = 0;
  for (size_t i = 0; i < gw.size(); ++i) {
    const int64_t k = int64_t(i) / (3 * 3 * 3);
    if (k == 1 || k == 3) {
      ASSERT_EQ(gw[i], 0.0) << i;
    } else {
      nonzero_kept += gw[i] != 0.0;
    }
  }
  EXPECT_GT(nonzero_kept, 0);
  // The state dict gains the mask only now.
  EXPECT_TRUE(conv.state_dict().count("weight_mask"));
  EXPECT_FALSE(layers::Conv2d(layers::Conv2dOptions(3, 4, 3)).state_dict().count("weight_mask"));
  // Running means of masked channels are 0 so the BN outputs exactly beta in eval.
  EXPECT_EQ(lowbit::testing::to_doubles(bn.running_mean())[1], 0.0);
}

TEST(PruneMaskedConv, BiasMapChecksTheOutputSize) {
  layers::Conv2d conv(layers::Conv2dOptions(3, 4, 3).with_padding(1));
  conv.set_bias_map(ones({5, 5, 4}));
  EXPECT_EQ(conv.forward(zeros({1, 5, 5, 3})).shape(), (Shape{1, 5, 5, 4}));
  EXPECT_THAT(error_of([&] {
                conv.forward(zeros({1, 6, 6, 3}));
              }),
              HasSubstr("bias map (border = exact) for 5x5 outputs"));
}

}  // namespace
}  // namespace lowbit::prune
