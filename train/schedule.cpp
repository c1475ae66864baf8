// The LR schedules of schedule.h: closed forms, argument checks.
#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "core/error.h"
#include "train/registries.h"

namespace lowbit::train {

namespace {

constexpr double kPi = 3.14159265358979323846;

void check_step(const char* name, int64_t step) {
  LOWBIT_CHECK(step >= 0, name, ": step ", step, " is negative");
}

void check_lr(const char* name, const char* what, double lr) {
  LOWBIT_CHECK_INPUT(std::isfinite(lr) && lr >= 0.0, name, ": ", what, " ", lr,
                     " must be a finite number >= 0");
}

// PyTorch's _annealing_cos: from start (pct 0) to end (pct 1).
double annealing_cos(double start, double end, double pct) {
  return end + (start - end) / 2.0 * (std::cos(kPi * pct) + 1.0);
}

}  // namespace

ConstantLr::ConstantLr(double base_lr) : base_lr_(base_lr) {
  check_lr("ConstantLr", "base lr", base_lr);
}

double ConstantLr::lr_at(int64_t step) const {
  check_step("ConstantLr", step);
  return base_lr_;
}

StepLr::StepLr(double base_lr, int64_t step_size, double gamma)
    : base_lr_(base_lr), step_size_(step_size), gamma_(gamma) {
  check_lr("StepLr", "base lr", base_lr);
  LOWBIT_CHECK_INPUT(step_size > 0, "StepLr: step_size ", step_size, " must be positive");
  LOWBIT_CHECK_INPUT(std::isfinite(gamma) && gamma > 0.0, "StepLr: gamma ", gamma,
                     " must be a finite number > 0");
}

double StepLr::lr_at(int64_t step) const {
  check_step("StepLr", step);
  return base_lr_ * std::pow(gamma_, double(step / step_size_));
}

MultiStepLr::MultiStepLr(double base_lr, std::vector<int64_t> milestones, double gamma)
    : base_lr_(base_lr), milestones_(std::move(milestones)), gamma_(gamma) {
  check_lr("MultiStepLr", "base lr", base_lr);
  LOWBIT_CHECK_INPUT(std::isfinite(gamma) && gamma > 0.0, "MultiStepLr: gamma ", gamma,
                     " must be a finite number > 0");
  for (size_t i = 0; i < milestones_.size(); ++i) {
    LOWBIT_CHECK_INPUT(milestones_[i] >= 0, "MultiStepLr: milestone ", milestones_[i],
                       " is negative");
    LOWBIT_CHECK_INPUT(i == 0 || milestones_[i] > milestones_[i - 1],
                       "MultiStepLr: milestones must increase, got ", milestones_);
  }
}

double MultiStepLr::lr_at(int64_t step) const {
  check_step("MultiStepLr", step);
  // PyTorch's bisect_right: a milestone m has passed once step >= m.
  const auto passed =
      std::upper_bound(milestones_.begin(), milestones_.end(), step) - milestones_.begin();
  return base_lr_ * std::pow(gamma_, double(passed));
}

CosineLr::CosineLr(double base_lr, int64_t t_max, double eta_min)
    : base_lr_(base_lr), t_max_(t_max), eta_min_(eta_min) {
  check_lr("CosineLr", "base lr", base_lr);
  check_lr("CosineLr", "eta_min", eta_min);
  LOWBIT_CHECK_INPUT(t_max > 0, "CosineLr: t_max ", t_max, " must be positive");
}

double CosineLr::lr_at(int64_t step) const {
  check_step("CosineLr", step);
  const double t = double(std::min(step, t_max_));
  return eta_min_ + (base_lr_ - eta_min_) * (1.0 + std::cos(kPi * t / double(t_max_))) / 2.0;
}

OneCycleLr::OneCycleLr(double max_lr, int64_t total_steps, double pct_start, double div_factor,
                       double final_div_factor)
    : max_lr_(max_lr), total_steps_(total_steps) {
  check_lr("OneCycleLr", "max_lr", max_lr);
  LOWBIT_CHECK_INPUT(total_steps > 0, "OneCycleLr: total_steps ", total_steps, " must be positive");
  LOWBIT_CHECK_INPUT(pct_start >= 0.0 && pct_start <= 1.0, "OneCycleLr: pct_start ", pct_start,
                     " must lie in [0, 1]");
  LOWBIT_CHECK_INPUT(std::isfinite(div_factor) && div_factor > 0.0, "OneCycleLr: div_factor ",
                     div_factor, " must be a finite number > 0");
  LOWBIT_CHECK_INPUT(std::isfinite(final_div_factor) && final_div_factor > 0.0,
                     "OneCycleLr: final_div_factor ", final_div_factor,
                     " must be a finite number > 0");
  initial_lr_ = max_lr / div_factor;
  min_lr_ = initial_lr_ / final_div_factor;
  warm_end_ = pct_start * double(total_steps) - 1.0;
  // PyTorch divides by both phase lengths; it fails at the first lr_at where one is <= 0.
  LOWBIT_CHECK_INPUT(warm_end_ > 0.0 && double(total_steps - 1) > warm_end_,
                     "OneCycleLr: pct_start ", pct_start, " of total_steps ", total_steps,
                     " leaves an empty warm-up or annealing phase (want 1 < pct_start * "
                     "total_steps < total_steps)");
}

double OneCycleLr::lr_at(int64_t step) const {
  check_step("OneCycleLr", step);
  LOWBIT_CHECK(step <= total_steps_, "OneCycleLr: step ", step, " is past total_steps ",
               total_steps_);
  const double t = double(step);
  if (t <= warm_end_) return annealing_cos(initial_lr_, max_lr_, t / warm_end_);
  const double end = double(total_steps_ - 1);
  return annealing_cos(max_lr_, min_lr_, (t - warm_end_) / (end - warm_end_));
}

LinearWarmup::LinearWarmup(std::shared_ptr<const LrSchedule> inner, int64_t warmup_steps,
                           double start_factor)
    : inner_(std::move(inner)), warmup_steps_(warmup_steps), start_factor_(start_factor) {
  LOWBIT_CHECK_INPUT(inner_ != nullptr, "LinearWarmup: no schedule to warm up");
  LOWBIT_CHECK_INPUT(warmup_steps >= 0, "LinearWarmup: warmup_steps ", warmup_steps,
                     " is negative");
  LOWBIT_CHECK_INPUT(start_factor >= 0.0 && start_factor <= 1.0, "LinearWarmup: start_factor ",
                     start_factor, " must lie in [0, 1]");
}

double LinearWarmup::lr_at(int64_t step) const {
  check_step("LinearWarmup", step);
  double factor = 1.0;
  if (warmup_steps_ > 0) {
    factor = start_factor_ +
             (1.0 - start_factor_) * double(std::min(step, warmup_steps_)) / double(warmup_steps_);
  }
  return inner_->lr_at(step) * factor;
}

namespace {

// stages[].schedule.name (train/registries.h); epochs in the config become optimizer steps.
const bool kSchedulesRegistered = [] {
  using Ctx = const ScheduleContext&;
  using Cfg = const ScheduleConfig&;
  using Ptr = std::shared_ptr<LrSchedule>;
  auto& r = schedule_registry();
  r.add("constant", [](Cfg, Ctx x) -> Ptr { return std::make_shared<ConstantLr>(x.base_lr); });
  r.add("step", [](Cfg c, Ctx x) -> Ptr {
    return std::make_shared<StepLr>(x.base_lr, x.steps(c.step_epochs), c.gamma);
  });
  r.add("multistep", [](Cfg c, Ctx x) -> Ptr {
    std::vector<int64_t> m;
    for (double e : c.milestones) m.push_back(x.steps(e));
    return std::make_shared<MultiStepLr>(x.base_lr, m, c.gamma);
  });
  r.add("cosine", [](Cfg c, Ctx x) -> Ptr {
    return std::make_shared<CosineLr>(x.base_lr, x.total_steps, c.eta_min);
  });
  r.add("onecycle", [](Cfg c, Ctx x) -> Ptr {
    return std::make_shared<OneCycleLr>(x.base_lr, x.total_steps, c.pct_start, c.div_factor,
                                        c.final_div_factor);
  });
  return true;
}();

}  // namespace

}  // namespace lowbit::train
