// The channel dependency graph traced from the model zoo: groups, residual streams, depthwise
// chains, consumers, and the groups that can only be masked (pads, model output, ops the trace
// cannot follow).
#include "prune/graph.h"

#include <gmock/gmock.h>

#include <algorithm>

#include "layers/basic.h"
#include "tests/common/test_util.h"
#include "tests/prune/prune_test_util.h"

namespace lowbit::prune {
namespace {

using lowbit::testing::error_of;
using ::testing::HasSubstr;
using testing::zoo_options;

const ChannelGroup& group_of(const ChannelGraph& g, const std::string& layer) {
  return g.groups.at(size_t(g.layer(layer).group));
}

std::vector<std::string> consumer_names(const ChannelGraph& g, const ChannelGroup& grp) {
  std::vector<std::string> out;
  for (const Consumer& c : grp.consumers) out.push_back(g.layers[size_t(c.layer)].name);
  return out;
}

TEST(PruneGraph, ResNet20OptionAStreamIsOneShiftedMaskOnlyGroup) {
  auto m = models::create_model("resnet20", zoo_options());
  const ChannelGraph g = trace_channel_graph(*m, {32, 32, 3});
  const ChannelGroup& stream = group_of(g, "bn1");
  EXPECT_TRUE(stream.residual);
  EXPECT_FALSE(stream.removable);
  EXPECT_THAT(stream.why_fixed, HasSubstr("pad_channels"));
  // Every stage's stream is one group: pad_channels puts the 16 channels of stage 1 in the
  // middle of stage 2's 32 (offset 8), and those in the middle of stage 3's 64 (offset 16).
  EXPECT_EQ(group_of(g, "layer3.2.bn2").id, stream.id);
  EXPECT_EQ(g.layer("layer1.0.bn2").offset - g.layer("layer2.0.bn2").offset, 8);
  EXPECT_EQ(g.layer("layer2.0.bn2").offset - g.layer("layer3.0.bn2").offset, 16);
  EXPECT_EQ(stream.channels, 64);
  EXPECT_THAT(consumer_names(g, stream), ::testing::Contains("linear"));
  // Branch groups: conv1 + bn1 of each block, read by conv2, removable.
  const ChannelGroup& branch = group_of(g, "layer2.1.conv1");
  EXPECT_TRUE(branch.removable);
  EXPECT_FALSE(branch.residual);
  EXPECT_EQ(branch.channels, 32);
  EXPECT_EQ(group_of(g, "layer2.1.bn1").id, branch.id);
  EXPECT_THAT(consumer_names(g, branch), ::testing::ElementsAre("layer2.1.conv2"));
  EXPECT_EQ(g.groups.size(), 10u);
}

TEST(PruneGraph, ResNet20OptionBStagesAreRemovableResidualGroups) {
  auto m = models::create_model("resnet20", zoo_options(3, 32, "B"));
  const ChannelGraph g = trace_channel_graph(*m, {32, 32, 3});
  const ChannelGroup& s2 = group_of(g, "layer2.0.bn2");
  EXPECT_TRUE(s2.residual);
  EXPECT_TRUE(s2.removable) << s2.why_fixed;
  EXPECT_EQ(s2.channels, 32);
  EXPECT_EQ(group_of(g, "layer2.0.shortcut.1").id, s2.id);
  EXPECT_EQ(group_of(g, "layer2.2.bn2").id, s2.id);
  EXPECT_NE(group_of(g, "layer1.2.bn2").id, s2.id);
  EXPECT_EQ(s2.roots.size(), 4u);  // layer2.{0,1,2}.conv2 and the projection
  std::vector<std::string> readers = consumer_names(g, s2);
  std::sort(readers.begin(), readers.end());
  EXPECT_EQ(readers, (std::vector<std::string>{"layer2.1.conv1", "layer2.2.conv1", "layer3.0.conv1",
                                               "layer3.0.shortcut.0"}));
  EXPECT_THAT(consumer_names(g, group_of(g, "layer3.2.bn2")), ::testing::Contains("linear"));
}

TEST(PruneGraph, MobileNetV2DepthwiseChainsFollowTheirProducer) {
  auto m = models::create_model("mobilenet_v2", zoo_options());
  const ChannelGraph g = trace_channel_graph(*m, {32, 32, 3});
  const ChannelGroup& e = group_of(g, "features.5.conv.0.0");
  EXPECT_EQ(g.layer("features.5.conv.1.0").kind, LayerKind::depthwise);
  EXPECT_EQ(group_of(g, "features.5.conv.1.0").id, e.id);
  EXPECT_EQ(group_of(g, "features.5.conv.1.1").id, e.id);
  EXPECT_TRUE(e.removable);
  EXPECT_FALSE(e.residual);
  ASSERT_EQ(e.consumers.size(), 1u);
  EXPECT_EQ(g.layers[size_t(e.consumers[0].layer)].name, "features.5.conv.2");
  EXPECT_EQ(g.layers[size_t(e.consumers[0].from)].name, "features.5.conv.1.1");
  EXPECT_EQ(e.consumers[0].path, std::vector<std::string>{"relu6"});
  // The stem chain (expand ratio 1: stem -> dw -> projection).
  EXPECT_EQ(group_of(g, "features.1.conv.0.0").id, group_of(g, "features.0.0").id);
  // Residual stream of the 32-channel stage; the last group is read by the classifier through
  // ReLU6 and global average pooling.
  EXPECT_TRUE(group_of(g, "features.6.conv.3").residual);
  EXPECT_EQ(group_of(g, "features.4.conv.3").id, group_of(g, "features.6.conv.3").id);
  const ChannelGroup& last = group_of(g, "features.18.1");
  ASSERT_EQ(last.consumers.size(), 1u);
  EXPECT_EQ(g.layers[size_t(last.consumers[0].layer)].name, "classifier.1");
  EXPECT_EQ(last.consumers[0].path, (std::vector<std::string>{"relu6", "sum", "mul_scalar"}));
}

TEST(PruneGraph, EveryZooModelTraces) {
  struct Case {
    const char* name;
    Shape hwc;
    int64_t size;
  };
  for (const Case& c : {Case{"resnet18", {32, 32, 3}, 32}, Case{"resnet50", {32, 32, 3}, 32},
                        Case{"mobilenet_v1", {32, 32, 3}, 32}, Case{"vgg16_bn", {32, 32, 3}, 32},
                        Case{"dsnet", {28, 28, 1}, 28}}) {
    SCOPED_TRACE(c.name);
    auto m = models::create_model(c.name, zoo_options(c.hwc[2], c.size, "B"));
    const ChannelGraph g = trace_channel_graph(*m, c.hwc);
    int convs = 0;
    for (auto& [n, mod] : m->named_modules())
      convs += dynamic_cast<layers::Conv2d*>(mod.get()) != nullptr;
    int traced = 0;
    for (const GraphLayer& l : g.layers) {
      if (l.kind == LayerKind::linear) continue;
      ++traced;
      EXPECT_GE(l.group, 0) << l.name;
    }
    EXPECT_GE(traced, convs);
    for (const ChannelGroup& grp : g.groups) {
      // Only residual streams of these models are shared; every other group can be removed.
      if (!grp.residual) {
        EXPECT_TRUE(grp.removable) << g.str();
      }
    }
  }
  // VGG: one group per conv, the last read by the Linear through max pooling and GAP.
  auto vgg = models::create_model("vgg16_bn", zoo_options());
  const ChannelGraph g = trace_channel_graph(*vgg, {32, 32, 3});
  EXPECT_EQ(g.groups.size(), 13u);
  const ChannelGroup& last = group_of(g, "features.40");
  ASSERT_EQ(last.consumers.size(), 1u);
  EXPECT_EQ(last.consumers[0].path, (std::vector<std::string>{"max_pool2d", "sum", "mul_scalar"}));
  // ResNet-50 bottleneck: conv1 -> bn1 read by conv2 only.
  auto r50 = models::create_model("resnet50", zoo_options());
  const ChannelGraph g50 = trace_channel_graph(*r50, {32, 32, 3});
  EXPECT_THAT(consumer_names(g50, group_of(g50, "layer3.1.bn1")),
              ::testing::ElementsAre("layer3.1.conv2"));
  EXPECT_TRUE(group_of(g50, "layer3.1.bn3").residual);
  EXPECT_EQ(group_of(g50, "layer3.0.downsample.1").id, group_of(g50, "layer3.5.bn3").id);
}

// A module doing something channel surgery cannot follow (a channel slice).
class SliceChannels : public layers::Module {
 public:
  Tensor forward(const Tensor& x) override { return x.slice(3, 0, 2); }
  std::string type_name() const override { return "SliceChannels"; }
};

layers::ModulePtr conv_bn(int64_t in, int64_t out) {
  auto s = std::make_shared<layers::Sequential>();
  s->add(std::make_shared<layers::Conv2d>(layers::Conv2dOptions(in, out, 3).with_padding(1)));
  s->add(std::make_shared<layers::BatchNorm2d>(out));
  return s;
}

TEST(PruneGraph, OutputAndUnknownOpsMakeGroupsMaskOnly) {
  auto m = std::make_shared<layers::Sequential>();
  m->add(conv_bn(3, 4));
  m->add(std::make_shared<SliceChannels>());
  m->add(conv_bn(2, 5));
  const ChannelGraph g = trace_channel_graph(*m, {6, 6, 3});
  const ChannelGroup& first = group_of(g, "0.0");
  EXPECT_FALSE(first.removable);
  EXPECT_THAT(first.why_fixed, HasSubstr("slice"));
  const ChannelGroup& last = group_of(g, "2.0");
  EXPECT_FALSE(last.removable);
  EXPECT_THAT(last.why_fixed, HasSubstr("model output"));
}

class Twice : public layers::Module {
 public:
  Twice() {
    conv_ =
        register_module("conv", std::make_shared<layers::Conv2d>(layers::Conv2dOptions(3, 3, 1)));
  }
  Tensor forward(const Tensor& x) override { return conv_->forward(conv_->forward(x)); }
  std::string type_name() const override { return "Twice"; }

 private:
  std::shared_ptr<layers::Conv2d> conv_;
};

TEST(PruneGraph, SharedLayersAreRefused) {
  auto m = std::make_shared<Twice>();
  EXPECT_THAT(error_of([&] {
                trace_channel_graph(*m, {4, 4, 3});
              }),
              HasSubstr("'conv' is called more than once"));
}

TEST(PruneGraph, TraceLeavesModelUntouched) {
  auto m = models::create_model("resnet20", zoo_options(3, 32, "B"));
  m->train();
  trace_channel_graph(*m, {32, 32, 3});
  EXPECT_TRUE(m->is_training());
  for (auto& [n, p] : m->named_parameters()) {
    EXPECT_TRUE(p.requires_grad()) << n;
    EXPECT_FALSE(p.grad().defined()) << n;
  }
  // No BN statistics were updated (the trace runs in eval mode).
  for (auto& [n, b] : m->named_buffers()) {
    if (n.find("num_batches_tracked") != std::string::npos) {
      EXPECT_EQ(b.item(), 0.0) << n;
    }
  }
}

TEST(PruneConstants, ThroughActivationsAndPooling) {
  EXPECT_EQ(*constant_through(-0.5, {"relu"}), 0.0);
  EXPECT_EQ(*constant_through(7.0, {"relu6", "sum", "mul_scalar"}), 6.0);
  EXPECT_EQ(*constant_through(0.25, {"max_pool2d", "view"}), 0.25);
  EXPECT_FALSE(constant_through(1.0, {"sigmoid"}).has_value());
  EXPECT_FALSE(constant_through(1.0, {"sum"}).has_value());  // a sum without the mean's scale
}

}  // namespace
}  // namespace lowbit::prune
