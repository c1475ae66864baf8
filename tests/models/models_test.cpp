// Model zoo: published parameter counts, state-dict names as torchvision, and a forward and
// backward pass on small inputs.
#include <gmock/gmock.h>

#include <map>
#include <string>

#include "core/ops.h"
#include "core/random.h"
#include "layers/batchnorm.h"
#include "models/registry.h"
#include "tests/common/test_util.h"

namespace lowbit::models {
namespace {

ModelOptions imagenet(int64_t classes = 1000) {
  ModelOptions o;
  o.num_classes = classes;
  o.in_channels = 3;
  o.input_size = 224;
  return o;
}

TEST(Models, PublishedParameterCounts) {
  EXPECT_EQ(create_model("resnet18", imagenet())->num_parameters(), 11689512);
  EXPECT_EQ(create_model("resnet34", imagenet())->num_parameters(), 21797672);
  EXPECT_EQ(create_model("resnet50", imagenet())->num_parameters(), 25557032);
  EXPECT_EQ(create_model("mobilenet_v2", imagenet())->num_parameters(), 3504872);
  EXPECT_EQ(create_model("vgg16_bn", imagenet())->num_parameters(), 138365992);
  // MobileNetV1 1.0-224 with BN: 4,231,976 (Howard et al. report 4.2 M).
  EXPECT_EQ(create_model("mobilenet_v1", imagenet())->num_parameters(), 4231976);
  ModelOptions cifar;
  EXPECT_EQ(create_model("resnet20", cifar)->num_parameters(), 269722);    // "0.27M"
  EXPECT_EQ(create_model("resnet56", cifar)->num_parameters(), 853018);    // "0.85M"
  EXPECT_EQ(create_model("resnet110", cifar)->num_parameters(), 1727962);  // "1.7M"
}

TEST(Models, TorchvisionStateDictNames) {
  auto r18 = create_model("resnet18", imagenet());
  auto sd = r18->state_dict(layers::Layout::pytorch);
  for (const char* k :
       {"conv1.weight", "bn1.running_var", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.num_batches_tracked", "fc.weight", "fc.bias"}) {
    EXPECT_TRUE(sd.count(k)) << k;
  }
  EXPECT_EQ(sd.at("conv1.weight").shape(), (Shape{64, 3, 7, 7}));
  EXPECT_EQ(sd.size(), 122u);  // torchvision resnet18 state_dict has 122 entries
  auto mv2 = create_model("mobilenet_v2", imagenet())->state_dict(layers::Layout::pytorch);
  for (const char* k :
       {"features.0.0.weight", "features.1.conv.0.0.weight", "features.1.conv.1.weight",
        "features.2.conv.3.running_mean", "features.18.1.bias", "classifier.1.weight"}) {
    EXPECT_TRUE(mv2.count(k)) << k;
  }
}

TEST(Models, UnknownNameListsKnownOnes) {
  try {
    create_model("resnet21", ModelOptions{});
    FAIL();
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("resnet20"));
  }
}

struct SmallRun {
  const char* name;
  int64_t in_channels, size;
};

class ModelsForward : public ::testing::TestWithParam<SmallRun> {};

TEST_P(ModelsForward, ForwardBackwardOnSmallInput) {
  const SmallRun r = GetParam();
  manual_seed(50);
  ModelOptions o;
  o.num_classes = 10;
  o.in_channels = r.in_channels;
  o.input_size = r.size;
  if (std::string(r.name).rfind("mobilenet", 0) == 0) o.width_mult = 0.25;
  auto m = create_model(r.name, o);
  Tensor x = randn({2, r.size, r.size, r.in_channels});
  Tensor y = m->forward(x);
  ASSERT_EQ(y.shape(), (Shape{2, 10}));
  sum(y * y).backward();
  for (auto& [n, p] : m->named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << n;
    EXPECT_TRUE(std::isfinite(sum(p.grad()).item())) << n;
  }
}

INSTANTIATE_TEST_SUITE_P(Zoo, ModelsForward,
                         ::testing::Values(SmallRun{"resnet20", 1, 28}, SmallRun{"resnet32", 3, 32},
                                           SmallRun{"mobilenet_v1", 3, 32},
                                           SmallRun{"mobilenet_v2", 1, 28},
                                           SmallRun{"vgg16_bn", 1, 28}, SmallRun{"dsnet", 1, 28}),
                         [](const auto& param_info) { return std::string(param_info.param.name); });

TEST(Models, ResNet20OptionBUsesProjections) {
  ModelOptions o;
  o.shortcut = "B";
  auto m = create_model("resnet20", o);
  EXPECT_TRUE(m->state_dict().count("layer2.0.shortcut.0.weight"));
  // Option A's 269,722 plus the two projections (1x1 conv without bias + BN): 16->32 and 32->64.
  EXPECT_EQ(m->num_parameters(), 269722 + (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64));
}

// Which BatchNorms carry the ReLU that follows them (models/common.h, bn_relu): a ResNet block's
// first BN and the stem's, every VGG BN; the BN before the residual add does not.
TEST(Models, BatchNormsFuseTheFollowingRelu) {
  const auto fused = [](const std::string& model, const ModelOptions& o) {
    std::map<std::string, bool> out;
    for (const auto& [name, m] : create_model(model, o)->named_modules()) {
      if (auto* bn = dynamic_cast<layers::BatchNorm2d*>(m.get())) {
        out[name] = bn->options().fuse_relu;
        EXPECT_EQ(bn->options().eps, 1e-5) << model << " " << name;
        EXPECT_EQ(bn->options().momentum, 0.1) << model << " " << name;
      }
    }
    return out;
  };
  const auto r20 = fused("resnet20", ModelOptions());
  EXPECT_TRUE(r20.at("bn1"));
  EXPECT_TRUE(r20.at("layer1.0.bn1"));
  EXPECT_FALSE(r20.at("layer1.0.bn2"));
  const auto r50 = fused("resnet50", ModelOptions());
  EXPECT_TRUE(r50.at("bn1"));
  EXPECT_TRUE(r50.at("layer1.0.bn1"));
  EXPECT_TRUE(r50.at("layer1.0.bn2"));
  EXPECT_FALSE(r50.at("layer1.0.bn3"));
  EXPECT_FALSE(r50.at("layer1.0.downsample.1"));
  for (const auto& [name, on] : fused("vgg16_bn", ModelOptions())) EXPECT_TRUE(on) << name;
}

}  // namespace
}  // namespace lowbit::models
