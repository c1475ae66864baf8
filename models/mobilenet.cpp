// MobileNetV1 (Howard et al. 2017, Table 1) and MobileNetV2 (Sandler et al. 2018, Table 2, as
// torchvision builds it: names features.N.conv.M, classifier.1; 3,504,872 parameters at width 1
// with 1000 classes). Both take a width multiplier; V2 rounds channels with make_divisible(8).
#include <memory>

#include "core/ops.h"
#include "models/common.h"
#include "models/registry.h"

namespace lowbit::models {

namespace {

using layers::Child;

using layers::Module;
using layers::ModulePtr;
using layers::Sequential;

class InvertedResidual : public Module {
 public:
  InvertedResidual(int64_t in, int64_t out, int64_t stride, int64_t expand) {
    const int64_t hidden = in * expand;
    use_res_ = stride == 1 && in == out;
    auto seq = std::make_shared<Sequential>();
    if (expand != 1) seq->add(conv_bn_act(in, hidden, 1, 1, 1, Act::relu6));
    seq->add(conv_bn_act(hidden, hidden, 3, stride, hidden, Act::relu6));
    // The projection: conv (named by index) and BN, no activation, as torchvision.
    auto proj = conv_bn_act(hidden, out, 1, 1, 1, Act::none);
    for (auto& [name, m] : proj->named_children()) seq->add(m);
    conv_ = register_module("conv", seq);
  }
  Tensor forward(const Tensor& x) override {
    Tensor y = conv_->forward(x);
    return use_res_ ? x + y : y;
  }
  std::string type_name() const override { return "InvertedResidual"; }

 private:
  bool use_res_;
  std::shared_ptr<Sequential> conv_;
};

class MobileNetV2 : public Module {
 public:
  explicit MobileNetV2(const ModelOptions& o) {
    struct Stage {
      int64_t t, c, n, s;
    };
    const Stage stages[] = {{1, 16, 1, 1}, {6, 24, 2, 2},  {6, 32, 3, 2}, {6, 64, 4, 2},
                            {6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1}};
    // Small inputs (28x28, 32x32): the stem keeps stride 2 as torchvision; a config may change
    // the input size, which only affects the spatial sizes.
    int64_t in = make_divisible(32 * o.width_mult);
    const int64_t last = make_divisible(1280 * std::max(1.0, o.width_mult));
    features_ = std::make_shared<Sequential>();
    features_->add(conv_bn_act(o.in_channels, in, 3, 2, 1, Act::relu6));
    for (const Stage& st : stages) {
      const int64_t out = make_divisible(double(st.c) * o.width_mult);
      for (int64_t i = 0; i < st.n; ++i) {
        features_->add(std::make_shared<InvertedResidual>(in, out, i == 0 ? st.s : 1, st.t));
        in = out;
      }
    }
    features_->add(conv_bn_act(in, last, 1, 1, 1, Act::relu6));
    register_module("features", features_);
    classifier_ = std::make_shared<Sequential>();
    classifier_->add(std::make_shared<layers::Dropout>(o.dropout));
    classifier_->add(std::make_shared<layers::Linear>(last, o.num_classes));
    register_module("classifier", classifier_);
  }
  Tensor forward(const Tensor& x) override {
    return classifier_->forward(layers::global_avg_pool2d(features_->forward(x)));
  }
  std::string type_name() const override { return "MobileNetV2"; }

 private:
  std::shared_ptr<Sequential> features_, classifier_;
};

class MobileNetV1 : public Module {
 public:
  explicit MobileNetV1(const ModelOptions& o) {
    auto ch = [&](int64_t c) { return std::max<int64_t>(8, int64_t(double(c) * o.width_mult)); };
    const std::pair<int64_t, int64_t> dw[] = {{64, 1},  {128, 2},  {128, 1}, {256, 2}, {256, 1},
                                              {512, 2}, {512, 1},  {512, 1}, {512, 1}, {512, 1},
                                              {512, 1}, {1024, 2}, {1024, 1}};
    features_ = std::make_shared<Sequential>();
    int64_t in = ch(32);
    features_->add(conv_bn_act(o.in_channels, in, 3, 2, 1, Act::relu));
    for (auto [c, s] : dw) {
      const int64_t out = ch(c);
      auto block = std::make_shared<Sequential>();
      block->add("dw", conv_bn_act(in, in, 3, s, in, Act::relu));
      block->add("pw", conv_bn_act(in, out, 1, 1, 1, Act::relu));
      features_->add(block);
      in = out;
    }
    register_module("features", features_);
    fc_ = register_child("fc", std::make_shared<layers::Linear>(in, o.num_classes));
  }
  Tensor forward(const Tensor& x) override {
    return fc_->forward(layers::global_avg_pool2d(features_->forward(x)));
  }
  std::string type_name() const override { return "MobileNetV1"; }

 private:
  std::shared_ptr<Sequential> features_;
  Child<layers::Linear> fc_;
};

}  // namespace

LOWBIT_REGISTER_MODEL("mobilenet_v1",
                      [](const ModelOptions& o) { return std::make_shared<MobileNetV1>(o); });
LOWBIT_REGISTER_MODEL("mobilenet_v2",
                      [](const ModelOptions& o) { return std::make_shared<MobileNetV2>(o); });

}  // namespace lowbit::models
