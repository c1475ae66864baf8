// The named choices of an experiment config, each a Registry (core/registry.h) filled by static
// registrars next to the code they name: optimizers (optimizer.cpp), LR schedules
// (schedule.cpp), datasets (data_setup.cpp) and stage kinds (trainer.cpp). Config validation,
// `lowbit train --help` and the docs check (tests/train/config_test.cpp) read their names, so a
// new entry is one registrar, with no list to update elsewhere. lowbit_train is linked
// whole-archive (lowbit_train_whole) so every registrar runs.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/registry.h"
#include "data/dataset.h"
#include "train/config.h"
#include "train/optimizer.h"
#include "train/schedule.h"

namespace lowbit::train {

// --- optimizers: stages[].optimizer.name ------------------------------------------------------
using OptimizerFactory = std::function<std::unique_ptr<Optimizer>(std::vector<ParamGroup> groups,
                                                                  const OptimizerConfig& c)>;
Registry<OptimizerFactory>& optimizer_registry();

// --- LR schedules: stages[].schedule.name (warm-up composes with any of them) ----------------
struct ScheduleContext {
  double base_lr = 0.0;
  int64_t steps_per_epoch = 1;  // optimizer steps
  int64_t total_steps = 1;      // of the stage, at least 1
  // Epochs (fractions allowed) as optimizer steps, rounded, at least 1.
  int64_t steps(double epochs) const;
};
using ScheduleFactory =
    std::function<std::shared_ptr<LrSchedule>(const ScheduleConfig& c, const ScheduleContext& ctx)>;
Registry<ScheduleFactory>& schedule_registry();

// --- datasets: data.dataset -------------------------------------------------------------------
struct DatasetGeometry {
  int64_t hw = 0, channels = 0, classes = 0;  // after crops, square
};
struct DatasetSpec {
  // The training and test sets of a config (data.root, synthetic_*, seed).
  std::function<std::pair<data::DatasetPtr, data::DatasetPtr>(const ExperimentConfig& cfg)> open;
  // Default per-channel normalisation (mean, std) on [0, 1] pixels.
  std::function<std::pair<std::vector<float>, std::vector<float>>(const DataConfig& d)>
      normalisation;
  // What the model is built for without opening any file (lowbit info --model, eval offline).
  std::function<DatasetGeometry(const DataConfig& d)> geometry;
  // ImageNet-style folders: random-resized (or centre) crops to data.image_size, and
  // data.resize before the evaluation crop.
  bool crops = false;
};
Registry<DatasetSpec>& dataset_registry();

// --- stage kinds: stages[].kind ---------------------------------------------------------------
struct StageContext;  // trainer.cpp: the model, data, device and run folder of a starting stage
struct StageKind {
  std::string what;                  // one line, for --help
  bool quantizes = false;            // the model is quantized in this stage (`quantize:` applies)
  bool needs_quant = false;          // needs the top-level quant: section
  bool needs_prune = false;          // needs the top-level prune: section
  bool before_quantization = false;  // refused once the model is quantized (pruning)
  std::function<void(StageContext& ctx)>
      prepare;  // at the stage's start (not on a mid-stage resume)
};
Registry<StageKind>& stage_kind_registry();

// The names of every registry, one line each ("optimizers: adamw, sgd"), for --help.
std::string registered_choices();

}  // namespace lowbit::train
