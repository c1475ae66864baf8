// Lowering a QAT model (BN folded) to the integer model of quant/int_inference.h, and the
// fake-quant codes the integer model is checked against (docs/export.md).
//
// The lowering walks the module tree as the shipped models' forwards run it: Sequential in
// order; QConv2d (its folded BatchNorm2d, with the fused ReLU, right after it); QLinear (after a
// global average pool, or a flatten, when its input is still spatial); ReLU, ReLU6, MaxPool2d,
// GlobalAvgPool2d, Flatten, Identity, Dropout (eval: identity); the residual blocks BasicBlock,
// Bottleneck (ResNets, option A and B shortcuts) and InvertedResidual (MobileNetV2). Any other
// module, a float conv or linear, a BatchNorm2d that is not folded, a layer whose input is not
// quantized or a quantizer without an integer form is an InputError naming the layer and what
// to do. Quantization points are lowbit's: the input quantizer of every quantized layer; what
// lies between (the folded bias, ReLU, residual adds, pooling) stays exact in int32.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "layers/module.h"
#include "quant/int_inference.h"

namespace lowbit::quant {

struct LowerOptions {
  // Round each folded bias to its integer grid (scale s_x s_w[k]) in the model itself (BN beta,
  // conv or linear bias), so that the fake-quant evaluation and the integer model add the same
  // bias (docs/methods.md, "Integer inference"). Without it the integer model still rounds, the
  // model is left untouched.
  bool snap_biases = true;
};

// Lowers `model` (eval mode; its quantizers initialised) for inputs of per-sample shape
// (H, W, C). InputError for what has no integer form.
IntModel lower_to_int(layers::Module& model, const std::vector<int64_t>& input_shape,
                      const LowerOptions& o = {});

// The codes lowbit's fake quantization gives at the input of every quantized layer for the batch
// x (N, H, W, C): layer name -> codes (N x the layer's input, NHWC), computed from the recorded
// float input with the quantizer's integer form exactly as the fake-quant kernel rounds.
// *logits (when given) receives the model's output.
std::map<std::string, std::vector<int32_t>> fake_quant_codes(layers::Module& model, const Tensor& x,
                                                             Tensor* logits = nullptr);

// Codes of one layer's input, integer model against fake quantization.
struct CodeStats {
  int64_t total = 0, equal = 0, max_diff = 0;
  void add(const CodeStats& o);
};
struct CodeComparison {
  std::vector<std::pair<std::string, CodeStats>> layers;  // in the integer model's order
  std::vector<float> int_logits;                          // N x classes
  std::vector<float> fake_quant_logits;
  CodeStats total() const;
  void add(const CodeComparison& o);  // another batch of the same model (logits appended)
};
// Runs the integer model and the fake-quant model on x (N, H, W, C) and compares the codes at
// every quantized layer's input. per_layer: each layer reads the fake-quant codes of its input
// (checks each layer's integer arithmetic alone); otherwise the integer model runs on its own
// codes end to end (a rare one-code difference then reaches the layers after it).
CodeComparison compare_with_fake_quant(layers::Module& model, const IntModel& im, const Tensor& x,
                                       bool fixed_point, bool per_layer);

}  // namespace lowbit::quant
