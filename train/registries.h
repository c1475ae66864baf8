// The named choices of an experiment config, each a Registry (core/registry.h) filled by static
// registrars next to the code they name: optimizers (optimizer.cpp), LR schedules
// (schedule.cpp), datasets (data_setup.cpp) and stage kinds (trainer.cpp). Config validation,
// `lowbit train --help` and the docs check (tests/train/config_test.cpp) read their names, so a
// new entry is one registrar, with no list to update elsewhere. lowbit_train is linked
// whole-archive (lowbit_train_whole) so every registrar runs.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/registry.h"
#include "data/dataset.h"
#include "data/loader.h"
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

// A stage kind that changes the training loop itself (kind: search) gives the trainer one of
// these per stage, made after prepare() and on a resume inside the stage. The trainer still
// runs the epochs, the weight steps, evaluation, logs and checkpoints; the loop adds to them.
class StageLoop {
 public:
  virtual ~StageLoop() = default;
  // The loader the stage's weight steps take their batches from (null: the training set's).
  virtual data::DataLoader* train_loader() { return nullptr; }
  // Parameters the weight optimizer and the gradient reducer must leave alone (the loop's own).
  virtual bool owns(const Tensor& param) const = 0;
  // After load_state_dict on a resume inside the stage (resumed), or at the stage's start.
  virtual void begin(bool resumed) = 0;
  // After each optimizer step on the weights.
  virtual void after_step(int64_t step) = 0;
  // The end of an epoch, after evaluation: adds to the epoch's log record.
  virtual void end_epoch(int64_t epoch, nlohmann::json& record) = 0;
  // Whether the stage is done before its last epoch (checked before each epoch).
  virtual bool done() const = 0;
  // The stage ended: the model becomes what the following stages train. Returns what the stage
  // found, for summary.json ("stages": {name: ...}).
  virtual nlohmann::json finish() = 0;
  // The loop's state in checkpoints (keys prefixed "stage." there).
  virtual std::map<std::string, Tensor> state_dict() const = 0;
  virtual void load_state_dict(const std::map<std::string, Tensor>& state) = 0;
};

struct StageKind {
  std::string what;                  // one line, for --help
  bool quantizes = false;            // the model is quantized in this stage (`quantize:` applies)
  bool needs_quant = false;          // needs the top-level quant: section
  bool needs_prune = false;          // needs the top-level prune: section
  bool before_quantization = false;  // refused once the model is quantized (pruning)
  std::function<void(StageContext& ctx)>
      prepare;  // at the stage's start (not on a mid-stage resume)
  // Optional: the stage's StageLoop (after prepare, or on a mid-stage resume).
  std::function<std::unique_ptr<StageLoop>(StageContext& ctx)> make_loop;
};
Registry<StageKind>& stage_kind_registry();

// The names of every registry, one line each ("optimizers: adamw, sgd"), for --help.
std::string registered_choices();

}  // namespace lowbit::train
