// The staged Trainer: builds the data loaders and the model from an ExperimentConfig, runs its
// stages (optimizer, LR schedule, epochs), evaluates, logs (progress bar, OUT/log.jsonl and
// TensorBoard events, train/run_log.h),
// writes checkpoints atomically each epoch (OUT/checkpoint.safetensors: weights in PyTorch
// layout and names, optimizer state, RNG state and position) and OUT/summary.json at the end.
// --resume continues from the checkpoint and ends with the same weights as an uninterrupted
// run on the same device.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/device.h"
#include "layers/module.h"
#include "train/config.h"
#include "train/data_setup.h"

namespace lowbit::train {

struct TrainerOptions {
  std::string out_dir = "runs/experiment";
  std::string device;  // overrides the config's device when non-empty
  bool resume = false;
  // A fresh run (no resume) in a folder holding another run (a different config.yaml) is refused
  // unless force, which clears the folder's run files first (docs/training.md, "Run folders").
  bool force = false;
  bool progress = true;            // the console progress bar / lines
  int64_t stop_after_epochs = -1;  // tests: stop (as if killed) after this many epochs in total
};

struct EvalResult {
  double loss = 0.0;
  double top1 = 0.0;  // fraction in [0, 1]
  double top5 = 0.0;
  int64_t samples = 0;
};

struct RunSummary {
  EvalResult test;
  int64_t params = 0;
  int64_t model_bytes = 0;
  double wall_s = 0.0;
  double images_per_s = 0.0;
  std::string device;
  int64_t epochs_done = 0;
  bool finished = false;
};

// "auto" picks cuda:0 when a GPU is visible, else the CPU; "cuda" without a GPU is an
// InputError naming what was asked and what exists.
Device resolve_device(const std::string& spec);

RunSummary run_training(const ExperimentConfig& cfg, const TrainerOptions& opts);

// `lowbit prune`: loads the config's model with the weights in `checkpoint`, evaluates it, prunes
// it with the config's prune: section (PfQ on the float model, docs/methods.md, "PfQ" step 2),
// evaluates again and writes out_dir/model.safetensors (a pruned model; the "pruned" metadata lets
// eval, init: and resume rebuild its shapes) and out_dir/prune_report.{txt,json}.
struct PruneRunResult {
  EvalResult before, after;
  int64_t params_before = 0, params_after = 0;
};
PruneRunResult run_prune(const ExperimentConfig& cfg, const std::string& checkpoint,
                         const std::string& out_dir, const std::string& device_override = "",
                         bool print = true);

// The config's model without opening its data: the dataset's known geometry (Fashion-MNIST
// 28x28x1/10, CIFAR 32x32x3/10|100, ImageNet image_size (224)x3/1000, synthetic as configured)
// gives classes, channels and size unless the model section sets them. *sample_hwc receives the
// input sample shape {H, W, C}.
layers::ModulePtr build_model_offline(const ExperimentConfig& cfg, Shape* sample_hwc);

// Evaluates the config's model with weights from a checkpoint (a full checkpoint or a
// weights-only file, PyTorch layout) on the config's test set.
EvalResult run_evaluation(const ExperimentConfig& cfg, const std::string& checkpoint,
                          const std::string& device_override = "");

// The config's data (*data) and model with the weights (and the pruned / quantized structure)
// of `checkpoint`, on `dev`; what run_evaluation evaluates. InputError when the checkpoint does
// not match the config.
layers::ModulePtr load_trained_model(const ExperimentConfig& cfg, const std::string& checkpoint,
                                     Device dev, DataSource* data);
// Top-1/top-5 and mean loss of `model` over data's whole test set (all ranks together).
EvalResult evaluate_model(layers::Module& model, DataSource& data, Device dev);

}  // namespace lowbit::train
