// VGG-16 with BatchNorm (Simonyan & Zisserman 2015, config D; torchvision's vgg16_bn names:
// features.N, classifier.N). Inputs of 64x64 and more get torchvision's classifier (adaptive
// 7x7 pool emulated by requiring 224x224, 4096-4096-classes with dropout); smaller inputs
// (CIFAR, Fashion-MNIST) get the usual CIFAR head, one Linear(512, classes) after global pooling.
// Also the small depthwise-separable net of the mixed-precision paper (docs/methods.md,
// "Mixed-precision search", lowbit default architecture).
#include <memory>

#include "core/ops.h"
#include "models/common.h"
#include "models/registry.h"

namespace lowbit::models {

namespace {

using layers::Child;

using layers::Module;
using layers::Sequential;

class Vgg16Bn : public Module {
 public:
  explicit Vgg16Bn(const ModelOptions& o) {
    const int64_t cfg[] = {64, 64,  -1,  128, 128, -1,  256, 256, 256,
                           -1, 512, 512, 512, -1,  512, 512, 512, -1};
    features_ = std::make_shared<Sequential>();
    int64_t in = o.in_channels;
    int64_t size = o.input_size;
    for (int64_t c : cfg) {
      if (c < 0) {
        // Inputs that are not a multiple of 32 (28x28) keep the remainder with ceil mode.
        layers::Pool2dOptions p = layers::Pool2dOptions::square(2);
        p.ceil_mode = true;
        features_->add(std::make_shared<layers::MaxPool2d>(p));
        size = (size + 1) / 2;
        continue;
      }
      features_->add(
          std::make_shared<layers::Conv2d>(layers::Conv2dOptions(in, c, 3).with_padding(1)));
      features_->add(bn_relu(c));
      features_->add(std::make_shared<layers::Identity>());  // the ReLU, fused into the BN
      in = c;
    }
    register_module("features", features_);
    classifier_ = std::make_shared<Sequential>();
    imagenet_head_ = o.input_size >= 224;
    if (imagenet_head_) {
      LOWBIT_CHECK_INPUT(o.input_size == 224,
                         "vgg16_bn with the ImageNet head wants 224x224 inputs, got ",
                         o.input_size);
      classifier_->add(std::make_shared<layers::Linear>(512 * 7 * 7, 4096));
      classifier_->add(std::make_shared<layers::ReLU>());
      classifier_->add(std::make_shared<layers::Dropout>(0.5));
      classifier_->add(std::make_shared<layers::Linear>(4096, 4096));
      classifier_->add(std::make_shared<layers::ReLU>());
      classifier_->add(std::make_shared<layers::Dropout>(0.5));
      classifier_->add(std::make_shared<layers::Linear>(4096, o.num_classes));
    } else {
      classifier_->add(std::make_shared<layers::Linear>(512, o.num_classes));
    }
    register_module("classifier", classifier_);
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = features_->forward(x);
    h = imagenet_head_ ? h.flatten(1) : layers::global_avg_pool2d(h);
    return classifier_->forward(h);
  }
  std::string type_name() const override { return "VGG"; }

 private:
  bool imagenet_head_ = false;
  std::shared_ptr<Sequential> features_, classifier_;
};

// conv3x3(in->32)+BN+ReLU, dw3x3(32)+BN+ReLU, pw1x1(32->64)+BN+ReLU, GAP, FC(64->classes).
class DsNet : public Module {
 public:
  explicit DsNet(const ModelOptions& o) {
    features_ = std::make_shared<Sequential>();
    features_->add(conv_bn_act(o.in_channels, 32, 3, 1, 1, Act::relu));
    features_->add(conv_bn_act(32, 32, 3, 1, 32, Act::relu));
    features_->add(conv_bn_act(32, 64, 1, 1, 1, Act::relu));
    register_module("features", features_);
    fc_ = register_child("fc", std::make_shared<layers::Linear>(64, o.num_classes));
  }
  Tensor forward(const Tensor& x) override {
    return fc_->forward(layers::global_avg_pool2d(features_->forward(x)));
  }
  std::string type_name() const override { return "DsNet"; }

 private:
  std::shared_ptr<Sequential> features_;
  Child<layers::Linear> fc_;
};

}  // namespace

LOWBIT_REGISTER_MODEL("vgg16_bn",
                      [](const ModelOptions& o) { return std::make_shared<Vgg16Bn>(o); });
LOWBIT_REGISTER_MODEL("dsnet", [](const ModelOptions& o) { return std::make_shared<DsNet>(o); });

}  // namespace lowbit::models
