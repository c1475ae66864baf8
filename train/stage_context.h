// What a stage kind works on (train/registries.h: prepare() and StageLoop): the model, its
// structure beyond the config (ModelState), the data, the device and the run folder.
#pragma once

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "dist/process_group.h"
#include "layers/module.h"
#include "quant/convert.h"
#include "train/config.h"
#include "train/data_setup.h"

namespace lowbit::train {

// Structure the weights need besides the model config, kept in checkpoint metadata: pruned
// channel shapes ("pruned"), the quantization plan ("quant_plan") when the model was converted,
// the mixed-precision layers of a search in progress ("search_plan") and a finished search's
// choices, which the following QAT stages apply ("search_rules").
struct ModelState {
  bool pruned = false;  // channel shapes differ from the config's model ("pruned" metadata)
  bool quantized = false;
  quant::QuantPlan plan;
  std::string search_plan;                     // quant::SearchPlan JSON while a search runs
  std::vector<quant::QuantRule> search_rules;  // quant::choice_rules of the last search
  // JSON object by stage name: what a stage's prepare() reported (StageContext::report) and what
  // its loop found (StageLoop::finish); summary.json's "stages".
  std::string stage_results;
};

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
  // What prepare() did, for the run's records: a log.jsonl record {"kind": <stage kind>,
  // "stage": <name>, ...rec} written when prepare() returns, and the stage's entry in
  // summary.json's "stages" (kept in checkpoints, so a resumed run still reports it).
  void report(nlohmann::json rec) {
    rec["kind"] = config().kind;
    rec["stage"] = config().name;
    nlohmann::json all = ms.stage_results.empty() ? nlohmann::json::object()
                                                  : nlohmann::json::parse(ms.stage_results);
    all[config().name] = std::move(rec);
    ms.stage_results = all.dump();
  }
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
