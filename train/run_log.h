// What a training run records, as one stream with two sinks: every record (a JSON object with
// "kind" and, from the trainer, "stage") is a line of OUT/log.jsonl and, with `tensorboard: true`,
// its numbers are scalars in OUT/events.out.tfevents.* (train/tensorboard.h), tagged
// <stage>/<kind>/<field> at the record's "step" (step records) or "epoch" (epoch records).
// The event file also gets the config as text and, per epoch, histograms of the parameters.
// Rank 0 alone holds a RunLog (docs/training.md, "Watching runs").
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "layers/module.h"
#include "train/progress.h"
#include "train/tensorboard.h"

namespace lowbit::train {

class RunLog {
 public:
  // Appends to dir/log.jsonl; opens a new event file in dir when `tensorboard`.
  RunLog(const std::string& dir, bool tensorboard);

  // One record: a log.jsonl line (flushed) and its scalars (fields other than the position
  // "epoch", "step" and "world_size" whose value is a number, and the numbers inside nested
  // objects and arrays, tagged by their path).
  void record(const nlohmann::json& rec);
  // The config as TensorBoard text (tag "config", a YAML code block), at step 0.
  void config_text(const std::string& yaml);
  // Histograms of every parameter at `epoch`: quantizers' learned parameters (LSQ scales, PACT
  // clips, ...) tagged quantizers/<name>, the others params/<name>. Then flush().
  void histograms(layers::Module& model, int64_t epoch);
  // Makes what was written visible to a TensorBoard watching the folder.
  void flush();
  // The event file's path; empty without tensorboard.
  std::string event_path() const { return events_ ? events_->path() : std::string(); }

 private:
  void scalars(const std::string& tag, const nlohmann::json& v, int64_t step);

  JsonlLog jsonl_;
  std::unique_ptr<EventFile> events_;
};

}  // namespace lowbit::train
