// The registries of registries.h; their entries are registered where they are defined.
#include "train/registries.h"

#include <algorithm>

namespace lowbit::train {

int64_t ScheduleContext::steps(double epochs) const {
  return std::max<int64_t>(1, int64_t(epochs * double(steps_per_epoch) + 0.5));
}

Registry<OptimizerFactory>& optimizer_registry() {
  static Registry<OptimizerFactory> r("optimizer");
  return r;
}

Registry<ScheduleFactory>& schedule_registry() {
  static Registry<ScheduleFactory> r("LR schedule");
  return r;
}

Registry<DatasetSpec>& dataset_registry() {
  static Registry<DatasetSpec> r("dataset");
  return r;
}

Registry<StageKind>& stage_kind_registry() {
  static Registry<StageKind> r("stage kind");
  return r;
}

std::string registered_choices() {
  std::string s;
  s += "  stage kinds:   " + stage_kind_registry().joined_names() + "\n";
  s += "  optimizers:    " + optimizer_registry().joined_names() + "\n";
  s += "  LR schedules:  " + schedule_registry().joined_names() + "\n";
  s += "  datasets:      " + dataset_registry().joined_names() + "\n";
  return s;
}

}  // namespace lowbit::train
