// Building blocks shared by the model definitions: conv+BN(+activation) sequences as
// torchvision composes them.
#pragma once

#include <memory>
#include <string>

#include "layers/basic.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "layers/pooling.h"

namespace lowbit::models {

enum class Act { none, relu, relu6 };

// BatchNorm2d (PyTorch's defaults: eps 1e-5, momentum 0.1, affine, running statistics) with the
// ReLU that follows it fused in (one pass); the ReLU's own slot, where a torchvision name needs
// one, is an Identity.
std::shared_ptr<layers::BatchNorm2d> bn_relu(int64_t channels);

// Conv2d(bias = false) -> BatchNorm2d -> activation, named 0, 1, 2 as torchvision's
// Conv2dNormActivation.
std::shared_ptr<layers::Sequential> conv_bn_act(int64_t in, int64_t out, int64_t k, int64_t stride,
                                                int64_t groups, Act act);
layers::ModulePtr activation(Act act);

// torchvision's _make_divisible: round to a multiple of `divisor`, never below 90% of v.
int64_t make_divisible(double v, int64_t divisor = 8);

}  // namespace lowbit::models
