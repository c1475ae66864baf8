// Model accounting (docs/methods.md, "Accounting"): model bytes with every tensor at its own bit
// width (a layer that SAT rescales, docs/methods.md, "SAT", adds its constant: one fp32 scalar),
// the weight compression ratio against float, and BOPs (MACs x weight bits x input-activation
// bits). Output sizes come from one recorded forward pass on a zero input of the given shape, so
// any model whose layers report through layers::notify_forward (Conv2d, Linear, BatchNorm2d and the
// quantized layers) is accounted without per-model code.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "layers/module.h"

namespace lowbit::quant {

struct LayerAccount {
  std::string name;          // dotted module name ("layer1.0.conv1")
  std::string type;          // "Conv2d", "QConv2d", "Linear", "QLinear", "BatchNorm2d"
  std::string shape;         // "16x3x3x16 -> 28x28" (weights KRSC, output spatial size) or "10x64"
  int64_t params = 0;        // parameters of the layer itself (weights, bias; BN: gamma, beta)
  int64_t weight_elems = 0;  // N_w
  int64_t weight_bits = 32;  // b_w (32 for float layers)
  int64_t act_bits = 32;     // b_a, the layer's input activation bits (32 when not quantized)
  int64_t macs = 0;          // per sample
  double bops = 0.0;         // per sample: macs * b_w * b_a
  int64_t bytes = 0;         // this layer's share of model_bytes (docs/methods.md, "Accounting")
  bool bn_folded = false;    // BN layers: folded into the preceding conv (counted as its bias)
};

struct ModelAccount {
  std::vector<LayerAccount> layers;
  int64_t params = 0;              // all parameters of the model
  int64_t model_bytes = 0;         // docs/methods.md, "Accounting"
  int64_t float_bytes = 0;         // 4 bytes per parameter and BN statistic (the float model)
  double compression_ratio = 1.0;  // CR of docs/methods.md, "Accounting" (weights only)
  double bops = 0.0;               // per sample
  int64_t macs = 0;                // per sample

  // A per-layer table with a total line, for the console and reports.
  std::string table() const;
  nlohmann::json to_json() const;
};

// Accounts `model` for one input sample of shape {H, W, C} (NHWC without the batch). Runs one
// forward pass in eval mode without gradients on zeros (the model's mode is restored), on the
// model's device; quantizers are not observed or changed (their forward is bypassed).
ModelAccount account_model(layers::Module& model, const Shape& sample_hwc);

}  // namespace lowbit::quant
