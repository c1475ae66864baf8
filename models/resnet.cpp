// ResNets. CIFAR-style (He et al. 2016, sec. 4.2): 3x3 stem, three stages of 16/32/64
// channels with n = (depth - 2) / 6 basic blocks each; option A shortcuts subsample and pad
// channels with zeros (no parameters), option B uses 1x1 conv + BN projections. Names follow
// the widely used CIFAR ResNet code (conv1, bn1, layer1.0.conv1, ..., linear).
// ImageNet-style as torchvision (resnet18/34 BasicBlock, resnet50 Bottleneck with the stride
// on the 3x3 conv, "v1.5"); names and parameter counts match torchvision's.
#include <memory>

#include "core/autograd.h"
#include "core/ops.h"
#include "models/common.h"
#include "models/registry.h"

namespace lowbit::models {

namespace {

using layers::Child;

using layers::BatchNorm2d;
using layers::Conv2d;
using layers::Conv2dOptions;
using layers::Module;
using layers::ModulePtr;

// Option A shortcut: x[:, ::2, ::2, :] (when stride 2) with `pad` zero channels on each side.
struct PadChannels : autograd::Function<PadChannels> {
  static constexpr const char* kName = "pad_channels";
  static Tensor forward(autograd::FunctionCtx& ctx, const Tensor& x, double stride_d,
                        double pad_d) {
    const int64_t stride = int64_t(stride_d), pad = int64_t(pad_d);
    ctx.saved_values = {double(x.size(1)), double(x.size(2)), double(x.size(3)), stride_d, pad_d};
    Tensor sub = x.slice(1, 0, x.size(1), stride).slice(2, 0, x.size(2), stride);
    Tensor out = zeros({x.size(0), sub.size(1), sub.size(2), x.size(3) + 2 * pad},
                       TensorOptions(x.dtype(), x.device()));
    out.slice(3, pad, pad + x.size(3)).copy_(sub);
    return out;
  }
  static std::vector<Tensor> backward(autograd::FunctionCtx& ctx, const std::vector<Tensor>& g) {
    const auto& v = ctx.saved_values;
    const int64_t h = int64_t(v[0]), w = int64_t(v[1]), c = int64_t(v[2]);
    const int64_t stride = int64_t(v[3]), pad = int64_t(v[4]);
    Tensor dx = zeros({g[0].size(0), h, w, c}, TensorOptions(g[0].dtype(), g[0].device()));
    dx.slice(1, 0, h, stride).slice(2, 0, w, stride).copy_(g[0].slice(3, pad, pad + c));
    return {dx};
  }
};

class ShortcutA : public Module {
 public:
  ShortcutA(int64_t stride, int64_t pad) : stride_(stride), pad_(pad) {}
  Tensor forward(const Tensor& x) override {
    return PadChannels::apply(x, double(stride_), double(pad_));
  }
  std::string type_name() const override { return "LambdaLayer"; }
  std::string extra_repr() const override {
    return str_cat("option A, stride=", stride_, ", pad=", pad_);
  }

 private:
  int64_t stride_, pad_;
};

std::shared_ptr<Conv2d> conv(int64_t in, int64_t out, int64_t k, int64_t stride) {
  return std::make_shared<Conv2d>(
      Conv2dOptions(in, out, k).with_stride(stride).with_padding((k - 1) / 2).with_bias(false));
}

// CIFAR and ImageNet basic block: conv3x3 -> BN -> ReLU -> conv3x3 -> BN, + shortcut, ReLU.
class BasicBlock : public Module {
 public:
  BasicBlock(int64_t in, int64_t planes, int64_t stride, ModulePtr shortcut,
             const char* shortcut_name) {
    conv1_ = register_child("conv1", conv(in, planes, 3, stride));
    bn1_ = register_module("bn1", bn_relu(planes));
    conv2_ = register_child("conv2", conv(planes, planes, 3, 1));
    bn2_ = register_module("bn2", std::make_shared<BatchNorm2d>(planes));
    if (shortcut) shortcut_ = register_child(shortcut_name, shortcut);
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = bn1_->forward(conv1_->forward(x));  // BN with fused ReLU
    h = bn2_->forward(conv2_->forward(h));
    return add_relu(h, shortcut_ ? shortcut_->forward(x) : x);  // relu(h + shortcut), one pass
  }
  std::string type_name() const override { return "BasicBlock"; }

 private:
  Child<Conv2d> conv1_, conv2_;
  std::shared_ptr<BatchNorm2d> bn1_, bn2_;
  Child<Module> shortcut_;
};

// torchvision Bottleneck (expansion 4), stride on the 3x3 conv.
class Bottleneck : public Module {
 public:
  Bottleneck(int64_t in, int64_t planes, int64_t stride, ModulePtr downsample) {
    conv1_ = register_child("conv1", conv(in, planes, 1, 1));
    bn1_ = register_module("bn1", bn_relu(planes));
    conv2_ = register_child("conv2", conv(planes, planes, 3, stride));
    bn2_ = register_module("bn2", bn_relu(planes));
    conv3_ = register_child("conv3", conv(planes, planes * 4, 1, 1));
    bn3_ = register_module("bn3", std::make_shared<BatchNorm2d>(planes * 4));
    if (downsample) downsample_ = register_child("downsample", downsample);
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = bn1_->forward(conv1_->forward(x));
    h = bn2_->forward(conv2_->forward(h));
    h = bn3_->forward(conv3_->forward(h));
    return add_relu(h, downsample_ ? downsample_->forward(x) : x);
  }
  std::string type_name() const override { return "Bottleneck"; }

 private:
  Child<Conv2d> conv1_, conv2_, conv3_;
  std::shared_ptr<BatchNorm2d> bn1_, bn2_, bn3_;
  Child<Module> downsample_;
};

ModulePtr projection(int64_t in, int64_t out, int64_t stride) {
  auto seq = std::make_shared<layers::Sequential>();
  seq->add(conv(in, out, 1, stride));
  seq->add(std::make_shared<BatchNorm2d>(out));
  return seq;
}

class CifarResNet : public Module {
 public:
  CifarResNet(int depth, const ModelOptions& o) {
    LOWBIT_CHECK_INPUT((depth - 2) % 6 == 0, "CIFAR ResNet depth must be 6n+2, got ", depth);
    LOWBIT_CHECK_INPUT(o.shortcut == "A" || o.shortcut == "B",
                       "resnet shortcut must be A or B, got '", o.shortcut, "'");
    const int64_t n = (depth - 2) / 6;
    conv1_ = register_child("conv1", conv(o.in_channels, 16, 3, 1));
    bn1_ = register_module("bn1", bn_relu(16));
    int64_t in = 16;
    const int64_t widths[3] = {16, 32, 64};
    for (int s = 0; s < 3; ++s) {
      auto stage = std::make_shared<layers::Sequential>();
      for (int64_t b = 0; b < n; ++b) {
        const int64_t stride = (s > 0 && b == 0) ? 2 : 1;
        const int64_t planes = widths[s];
        ModulePtr sc;
        if (stride != 1 || in != planes) {
          sc = o.shortcut == "A" ? ModulePtr(std::make_shared<ShortcutA>(stride, (planes - in) / 2))
                                 : projection(in, planes, stride);
        }
        stage->add(std::make_shared<BasicBlock>(in, planes, stride, sc, "shortcut"));
        in = planes;
      }
      stages_.push_back(register_module("layer" + std::to_string(s + 1), stage));
    }
    linear_ = register_child("linear", std::make_shared<layers::Linear>(64, o.num_classes));
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = bn1_->forward(conv1_->forward(x));
    for (auto& s : stages_) h = s->forward(h);
    return linear_->forward(layers::global_avg_pool2d(h));
  }
  std::string type_name() const override { return "ResNet"; }

 private:
  Child<Conv2d> conv1_;
  std::shared_ptr<BatchNorm2d> bn1_;
  std::vector<std::shared_ptr<layers::Sequential>> stages_;
  Child<layers::Linear> linear_;
};

class ImageNetResNet : public Module {
 public:
  ImageNetResNet(bool bottleneck, std::vector<int> blocks, const ModelOptions& o) {
    conv1_ = register_child("conv1", conv(o.in_channels, 64, 7, 2));
    bn1_ = register_module("bn1", bn_relu(64));
    maxpool_ = register_module(
        "maxpool", std::make_shared<layers::MaxPool2d>(layers::Pool2dOptions::square(3, 2, 1)));
    const int64_t expansion = bottleneck ? 4 : 1;
    int64_t in = 64;
    for (int s = 0; s < 4; ++s) {
      const int64_t planes = int64_t(64) << s;
      auto stage = std::make_shared<layers::Sequential>();
      for (int b = 0; b < blocks[size_t(s)]; ++b) {
        const int64_t stride = (s > 0 && b == 0) ? 2 : 1;
        ModulePtr ds;
        if (stride != 1 || in != planes * expansion)
          ds = projection(in, planes * expansion, stride);
        if (bottleneck)
          stage->add(std::make_shared<Bottleneck>(in, planes, stride, ds));
        else
          stage->add(std::make_shared<BasicBlock>(in, planes, stride, ds, "downsample"));
        in = planes * expansion;
      }
      stages_.push_back(register_module("layer" + std::to_string(s + 1), stage));
    }
    fc_ = register_child("fc", std::make_shared<layers::Linear>(in, o.num_classes));
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = maxpool_->forward(bn1_->forward(conv1_->forward(x)));
    for (auto& s : stages_) h = s->forward(h);
    return fc_->forward(layers::global_avg_pool2d(h));
  }
  std::string type_name() const override { return "ResNet"; }

 private:
  Child<Conv2d> conv1_;
  std::shared_ptr<BatchNorm2d> bn1_;
  std::shared_ptr<layers::MaxPool2d> maxpool_;
  std::vector<std::shared_ptr<layers::Sequential>> stages_;
  Child<layers::Linear> fc_;
};

}  // namespace

LOWBIT_REGISTER_MODEL("resnet20",
                      [](const ModelOptions& o) { return std::make_shared<CifarResNet>(20, o); });
LOWBIT_REGISTER_MODEL("resnet32",
                      [](const ModelOptions& o) { return std::make_shared<CifarResNet>(32, o); });
LOWBIT_REGISTER_MODEL("resnet44",
                      [](const ModelOptions& o) { return std::make_shared<CifarResNet>(44, o); });
LOWBIT_REGISTER_MODEL("resnet56",
                      [](const ModelOptions& o) { return std::make_shared<CifarResNet>(56, o); });
LOWBIT_REGISTER_MODEL("resnet110",
                      [](const ModelOptions& o) { return std::make_shared<CifarResNet>(110, o); });
LOWBIT_REGISTER_MODEL("resnet18", [](const ModelOptions& o) {
  return std::make_shared<ImageNetResNet>(false, std::vector<int>{2, 2, 2, 2}, o);
});
LOWBIT_REGISTER_MODEL("resnet34", [](const ModelOptions& o) {
  return std::make_shared<ImageNetResNet>(false, std::vector<int>{3, 4, 6, 3}, o);
});
LOWBIT_REGISTER_MODEL("resnet50", [](const ModelOptions& o) {
  return std::make_shared<ImageNetResNet>(true, std::vector<int>{3, 4, 6, 3}, o);
});

}  // namespace lowbit::models
