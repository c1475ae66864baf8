// The walk of a model's module tree in the order the shipped models' forwards run it, shared by
// the exports: the integer model (quant/int_export.h) and ONNX (tools/onnx_export.h).
//
// Sequential and the shipped models' containers (ResNet, MobileNetV1/V2, VGG, DsNet): children
// in order. Conv2d / QConv2d, then the BatchNorm2d after it (a folded one included: the hook
// decides), Linear / QLinear (after a global average pool, or a flatten, when its input is still
// spatial: the shipped heads do that in their forward), ReLU, ReLU6, MaxPool2d, GlobalAvgPool2d,
// Flatten, Identity and Dropout (eval: identity); the residual blocks BasicBlock and Bottleneck
// (ResNets: conv/BN chain, option A or B shortcut, add, ReLU) and InvertedResidual (MobileNetV2:
// its children, plus the input when the shape is kept). Any other module goes to other(), an
// InputError naming it unless the walker overrides it.
//
// Values are integers the walker hands out (its own table); the walk only needs each value's
// per-sample shape, (H, W, C) or (F), NHWC as lowbit computes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "layers/basic.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "layers/module.h"
#include "layers/pooling.h"

namespace lowbit::quant {

class ModelWalker {
 public:
  virtual ~ModelWalker() = default;
  // Walks `m` (named `name`, "" for the root) from value v; returns the value of its output.
  int walk(layers::Module& m, const std::string& name, int v);

 protected:
  // The per-sample shape of value v: (H, W, C) or (F).
  virtual std::vector<int64_t> shape_of(int v) const = 0;
  // What the walker writes, for messages ("the integer format").
  virtual std::string format_name() const = 0;
  // Appended to the message for a module without a form ("; export --format onnx").
  virtual std::string unsupported_hint() const { return ""; }

  virtual int conv(layers::Conv2d& c, const std::string& name, int v) = 0;    // Conv2d or QConv2d
  virtual int linear(layers::Linear& l, const std::string& name, int v) = 0;  // v is (F)
  virtual int batch_norm(layers::BatchNorm2d& bn, const std::string& name, int v) = 0;
  virtual int relu(const std::string& name, int v, bool six) = 0;
  virtual int max_pool(const layers::Pool2dOptions& p, const std::string& name, int v) = 0;
  virtual int global_avg_pool(const std::string& name, int v) = 0;  // (H, W, C) -> (C)
  virtual int flatten(const std::string& name, int v) = 0;  // (H, W, C) -> (H W C), that order
  virtual int add(const std::string& name, int a, int b) = 0;
  // ResNet's option A shortcut: x[:, ::stride, ::stride, :] with `pad` zero channels each side.
  virtual int shortcut_a(const std::string& name, int v, int64_t stride, int64_t pad) = 0;
  // Any module the walk does not know; default: an InputError naming it.
  virtual int other(layers::Module& m, const std::string& name, int v);
};

}  // namespace lowbit::quant
