// What the run commands of train/ share (trainer.cpp defines them; ptq.cpp uses them too): the
// structure a checkpoint records besides the weights, loading a trained model, evaluation, the
// CPU settings of a run, and the context a stage kind's prepare() works on.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "core/device.h"
#include "core/dtype.h"
#include "core/tensor.h"
#include "dist/process_group.h"
#include "layers/module.h"
#include "quant/convert.h"
#include "train/config.h"
#include "train/data_setup.h"
#include "train/safetensors.h"
#include "train/trainer.h"

namespace lowbit::train {

// Structure the weights need besides the model config: the quantization plan (metadata
// "quant_plan") when the model was converted.
struct ModelState {
  bool pruned = false;  // channel shapes differ from the config's model ("pruned" metadata)
  bool quantized = false;
  quant::QuantPlan plan;
};

void add_structure_meta(const ModelState& ms, std::map<std::string, std::string>* meta);
// Rebuilds the structure recorded in a file's metadata on a freshly built float model.
void apply_structure_meta(layers::Module& model, ModelState* ms, const SafetensorsFile& f,
                          const std::string& path);
// The process-wide CPU settings of a run: `threads:` and `cpu_conv:`.
void apply_cpu_settings(const ExperimentConfig& cfg);
// Mixed precision of a run (`amp:`): none, bf16 or f16.
std::optional<DType> amp_dtype(const ExperimentConfig& cfg);
// Top-1/top-5 and mean loss over the test set (the first max_samples images, rounded up to whole
// batches, when max_samples > 0), summed over the ranks of a data-parallel run.
EvalResult evaluate(layers::Module& model, DataSource& data, Device dev, int64_t max_samples = 0);
// The config's data and model with the weights (and the pruned / quantized structure) of
// `checkpoint`, on `dev`.
layers::ModulePtr load_trained(const ExperimentConfig& cfg, const std::string& checkpoint,
                               Device dev, DataSource* data, ModelState* ms);
// The config's model for the data's geometry (the model section's values where it sets them).
layers::ModulePtr build_model(const ExperimentConfig& cfg, const DataSource& data);
std::string now_iso();

// What a stage kind's prepare() works on (train/registries.h).
struct StageContext {
  const ExperimentConfig& cfg;
  int64_t stage;
  layers::Module& model;
  ModelState& ms;
  DataSource& data;
  Device dev;
  int64_t global_epoch;
  const std::filesystem::path& out_dir;
  bool progress;
  dist::ProcessGroup& group;

  const StageConfig& config() const { return cfg.stages[size_t(stage)]; }
  // A source of the first n training batches of this epoch's order (calibration).
  std::function<bool(Tensor&)> batches(int64_t n) {
    data.train->set_epoch(global_epoch);
    data.train->reset();
    data::DataLoader* loader = data.train.get();
    return [loader, n, i = int64_t(0)](Tensor& x) mutable {
      data::Batch b;
      if (i++ >= n || !loader->next(b)) return false;
      x = b.images;
      return true;
    };
  }
};

}  // namespace lowbit::train
