// Post-training quantization (docs/ptq.md): `lowbit ptq` and stages of kind ptq. A trained float
// model is quantized without training: its Conv2d/Linear layers are converted by the ptq:
// section (uniform quantizers, BN folded), the observers calibrate on training images, ZeroQ's
// distilled images or Gaussian noise, and the result is evaluated. With ptq.budget, ZeroQ's
// sensitivity and Pareto frontier pick a weight bit width per layer; with ptq.search, Quantune
// (XGBoost cost model), grid or random search pick the configuration of the five knobs.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "layers/module.h"
#include "quant/quantune.h"
#include "train/config.h"
#include "train/trainer.h"

namespace lowbit::train {

struct PtqRunResult {
  EvalResult before, after;  // float and quantized, on the whole test set
  int64_t model_bytes = 0, float_bytes = 0;
  double bops = 0.0, float_bops = 0.0;
  double seconds = 0.0;
};

// `lowbit ptq`: loads the config's model with the float weights in `checkpoint`, quantizes it
// after training (the ptq: section), evaluates it and writes out_dir/: model.safetensors (the
// quantized model with its plan), summary.json, log.jsonl, ptq_layers.txt (per layer: bits,
// bytes, BOPs), and with a budget sensitivity.txt and pareto.{txt,csv}, with a search
// search.{txt,json}. One process (a distributed run quantizes in a kind: ptq stage).
PtqRunResult run_ptq(const ExperimentConfig& cfg, const std::string& checkpoint,
                     const std::string& out_dir, const std::string& device_override = "",
                     bool print = true);

// ZeroQ distilled data: `batches` batches of NHWC images whose BN statistics through `model`
// match its running statistics (Adam on the input, ReduceLROnPlateau; docs/methods.md).
// loss_curve (when not null) receives the loss of every iteration of every batch.
// progress (when set) is called every 50 iterations with (batch, iteration, loss).
std::vector<Tensor> distill_data(
    layers::Module& model, const ZeroqConfig& z, const Shape& sample, Device dev,
    std::vector<double>* loss_curve = nullptr,
    const std::function<void(int64_t, int64_t, double)>& progress = nullptr);

// The five knobs of Quantune's search space (docs/ptq.md), and a knob configuration applied to
// a ptq: section (also the calibration images it asks for).
quant::ConfigSpace quantune_space();
PtqConfig apply_knobs(const PtqConfig& base, const quant::ConfigSpace& space,
                      const quant::Config& c);

}  // namespace lowbit::train
