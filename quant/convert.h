// Model conversion by rules (quantize_model): a float model becomes its quantized form, each
// Conv2d a QConv2d and each Linear a QLinear (weight quantizer + input quantizer), with the
// BatchNorm2d that directly follows a conv folded into it for QAT (docs/methods.md, "BN folding for
// QAT"). The YAML `quant:` section of an experiment fills QuantConfig (train/config.cpp,
// docs/config.md).
//
// Conversion goes through a QuantPlan: one entry per quantized layer with its fully resolved
// quantizer options. The plan is stored in checkpoints, so a resumed run or `lowbit eval`
// rebuilds exactly the same quantized model without data.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "layers/module.h"
#include "quant/quantizer.h"

namespace lowbit::quant {

// A quantizer by registry name and options (bits, per_channel, observer, ...). role, channels and
// axis are filled in by the conversion.
struct QuantizerChoice {
  std::string name;
  QuantizerOptions options;
};

// One rule of quant.rules. A layer takes the defaults, then every matching rule in order
// (later rules win): its name matches the glob `match` ('*', '?', '[...]', fnmatch) and its
// type is `type` (Conv2d | Linear; empty: any).
struct QuantRule {
  std::string match;
  std::string type;
  bool skip = false;                                   // keep this layer float
  std::string weight_quantizer, activation_quantizer;  // replace the quantizer ("" keeps it)
  QuantizerOptions weight, activation;                 // options merged over the current ones
  bool quantize_input = true;                          // false: this layer's input stays float
  // The quantizers given replace the current ones with exactly the options given (the options
  // of the current quantizer are not merged in); a mixed-precision search's choices are such
  // rules (quant/mixed.h).
  bool replace = false;
};

struct QuantConfig {
  QuantizerChoice weight{"lsq", QuantizerOptions{{"bits", "4"}}};
  QuantizerChoice activation{"lsq", QuantizerOptions{{"bits", "4"}}};
  // Bits of the first and last quantized layers (weights and input), the usual practice;
  // 0 quantizes them like the rest. Rules are applied after this.
  int64_t first_last_bits = 8;
  bool fold_bn = true;          // docs/methods.md, "BN folding for QAT"
  int64_t freeze_bn_epoch = 3;  // docs/methods.md, "BN folding for QAT" lowbit default; -1: never
  int64_t freeze_quantizers_epoch =
      4;                            // observers / learned ranges frozen from this epoch; -1: never
  int64_t calibration_batches = 4;  // batches observed before a stage that turns quantizers on
  std::vector<QuantRule> rules;
  // SAT (docs/methods.md, "SAT", quant/sat.h): rescale the quantized weights of the last layer,
  // which must be a quantized Linear (the classifier), and with sat_rescale_conv of every quantized
  // Conv2d.
  bool sat = false;
  bool sat_rescale_conv = false;
};

struct LayerPlan {
  std::string name;  // dotted module name
  std::string type;  // Conv2d | Linear (the float type)
  QuantizerChoice weight;
  QuantizerChoice input;     // name empty: float input
  std::string fold_bn;       // dotted name of the folded BatchNorm2d, "" for none
  bool sat_rescale = false;  // SAT's constant rescaling of the quantized weight (quant/sat.h)
};

struct QuantPlan {
  std::vector<LayerPlan> layers;
  nlohmann::json to_json() const;
  static QuantPlan from_json(const nlohmann::json& j);
  std::string str() const;  // JSON text (checkpoint metadata)
  static QuantPlan parse(const std::string& text);
};

// Decides what quantize_model will do, from one recorded forward pass on `probe` (a batch in
// NHWC, e.g. the first training batch; eval mode, no gradients, model restored): the order of the
// layers (first and last), conv -> BN pairs for folding, and whether each layer's input is
// signed (its minimum over the probe is negative) unless the options say `signed`, and which
// layers SAT rescales (InputError naming quant.sat.enabled when the last layer is not a quantized
// Linear).
QuantPlan plan_quantization(layers::Module& model, const QuantConfig& cfg, const Tensor& probe);
// Swaps every planned layer for its quantized form (quantizers on the model's device).
void apply_quant_plan(layers::Module& model, const QuantPlan& plan);
// plan_quantization + apply_quant_plan.
QuantPlan quantize_model(layers::Module& model, const QuantConfig& cfg, const Tensor& probe);
bool is_quantized(layers::Module& model);

// Calibration (before QAT): forwards `batches` batches from next_batch in eval mode without
// gradients with the selected quantizers calibrating (observers observe, learned quantizers
// take their initial values from the data, docs/methods.md). Activation quantizers not selected are
// disabled meanwhile; weight quantizers not selected keep their state, so the activation ranges of
// a stage after a weights-only QAT stage are measured on the quantized weights being trained (with
// float weights, which that stage never trained, they can be off by orders of magnitude).
void calibrate_model(layers::Module& model, const std::function<bool(Tensor&)>& next_batch,
                     int64_t batches, bool weights, bool activations);

// Turns the input (activation) quantizers of every quantized layer on or off (a weights-only
// QAT stage runs with them off).
void set_activation_quantization(layers::Module& model, bool on);
// Freezes (or unfreezes) the statistics of every BatchNorm2d in the tree (docs/methods.md, "BN
// folding for QAT").
void freeze_bn_statistics(layers::Module& model, bool on);

}  // namespace lowbit::quant
