// Learning-rate schedules as pure functions of the step index: lr_at(t) depends on t and the
// constructor's arguments only, never on how often or in which order it was called, so resuming
// at step t needs nothing but t. Whether t counts iterations or epochs is the caller's choice
// (the config says which). The formulas are PyTorch's closed forms (torch.optim.lr_scheduler):
//
//   ConstantLr     base
//   StepLr         base * gamma^floor(t / step_size)
//   MultiStepLr    base * gamma^#{milestones m : m <= t}
//   CosineLr       eta_min + (base - eta_min) * (1 + cos(pi * min(t, t_max) / t_max)) / 2
//                  (held at eta_min after t_max, where PyTorch's closed form would rise again)
//   OneCycleLr     OneCycleLR with cosine annealing and PyTorch's defaults: from max_lr / div
//                  up to max_lr over the first pct_start of total_steps, then down to
//                  max_lr / div / final_div; defined for 0 <= t <= total_steps
//   LinearWarmup   inner(t) * (start_factor + (1 - start_factor) * min(t, warmup) / warmup):
//                  PyTorch's LinearLR chained with any other schedule, so the inner schedule
//                  keeps its own clock (milestones stay where the config put them)
// Constructors throw lowbit::InputError naming a bad argument; lr_at throws for t < 0.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace lowbit::train {

class LrSchedule {
 public:
  virtual ~LrSchedule() = default;
  virtual double lr_at(int64_t step) const = 0;
};

class ConstantLr final : public LrSchedule {
 public:
  explicit ConstantLr(double base_lr);
  double lr_at(int64_t step) const override;

 private:
  double base_lr_;
};

class StepLr final : public LrSchedule {
 public:
  StepLr(double base_lr, int64_t step_size, double gamma = 0.1);
  double lr_at(int64_t step) const override;

 private:
  double base_lr_;
  int64_t step_size_;
  double gamma_;
};

class MultiStepLr final : public LrSchedule {
 public:
  // milestones: increasing step indices.
  MultiStepLr(double base_lr, std::vector<int64_t> milestones, double gamma = 0.1);
  double lr_at(int64_t step) const override;

 private:
  double base_lr_;
  std::vector<int64_t> milestones_;
  double gamma_;
};

class CosineLr final : public LrSchedule {
 public:
  CosineLr(double base_lr, int64_t t_max, double eta_min = 0.0);
  double lr_at(int64_t step) const override;

 private:
  double base_lr_;
  int64_t t_max_;
  double eta_min_;
};

class OneCycleLr final : public LrSchedule {
 public:
  OneCycleLr(double max_lr, int64_t total_steps, double pct_start = 0.3, double div_factor = 25.0,
             double final_div_factor = 1e4);
  double lr_at(int64_t step) const override;  // throws for step > total_steps, as PyTorch

  double initial_lr() const { return initial_lr_; }
  double min_lr() const { return min_lr_; }

 private:
  double max_lr_;
  int64_t total_steps_;
  double initial_lr_;
  double min_lr_;
  double warm_end_;  // PyTorch's end_step of the first phase: pct_start * total_steps - 1
};

class LinearWarmup final : public LrSchedule {
 public:
  // start_factor in [0, 1]; warmup_steps >= 0 (0: no warm-up).
  LinearWarmup(std::shared_ptr<const LrSchedule> inner, int64_t warmup_steps,
               double start_factor = 1.0 / 3.0);
  double lr_at(int64_t step) const override;

 private:
  std::shared_ptr<const LrSchedule> inner_;
  int64_t warmup_steps_;
  double start_factor_;
};

}  // namespace lowbit::train
