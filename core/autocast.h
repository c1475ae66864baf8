// Autocast: mixed precision without touching the model, as torch.autocast. Inside an
// AutocastGuard(DType::bf16) the "lower-precision ops" (convolution and linear, see
// layers/conv2d.cpp and layers/basic.cpp) cast their f32 floating inputs and weights to bf16 on
// the fly; the cast is the differentiable Tensor::to, so the parameters, their gradients, the
// optimizer state and the checkpoints stay f32 (master weights for free). Every other op runs
// in the dtype it is given: BatchNorm computes its statistics in f32/f64 and returns its input's
// dtype, elementwise ops promote, the loss reads bf16 logits as float. docs/design.md, "Mixed
// precision".
#pragma once

#include <optional>

#include "core/tensor.h"

namespace lowbit {

// The active autocast dtype of this thread (bf16 or f16), or none.
std::optional<DType> autocast_dtype();

// Enables autocast to `dtype` (bf16 or f16) in its scope; std::nullopt disables it.
class AutocastGuard {
 public:
  explicit AutocastGuard(std::optional<DType> dtype);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  std::optional<DType> prev_;
};

// What a lower-precision op computes on: `t` cast to the autocast dtype when autocast is on and
// `t` is an f32 tensor; otherwise `t` itself (f64 stays f64, as in PyTorch). Undefined stays
// undefined.
Tensor autocast_input(const Tensor& t);

}  // namespace lowbit
