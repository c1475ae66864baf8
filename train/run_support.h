// What the run commands of train/ share (trainer.cpp defines them; ptq.cpp uses them too): the
// structure a checkpoint records besides the weights, loading a trained model, evaluation, the
// CPU settings of a run (ModelState and StageContext: train/stage_context.h).
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
#include "train/stage_context.h"
#include "train/trainer.h"

namespace lowbit::train {

void add_structure_meta(const ModelState& ms, std::map<std::string, std::string>* meta);
// Rebuilds the structure recorded in a file's metadata on a freshly built float model (resume:
// also the run's own records, a finished search's choices and results).
void apply_structure_meta(layers::Module& model, ModelState* ms, const SafetensorsFile& f,
                          const std::string& path, bool resume = false);
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
// Creates the output folder of a command (lowbit prune, lowbit ptq); InputError naming it when
// that fails.
std::filesystem::path make_out_dir(const std::string& out_dir);

}  // namespace lowbit::train
