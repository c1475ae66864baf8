// LearnedRangeQuantizer: initialisation from data, the initialized flag, running range, clamps.
#include "quant/learned_range.h"

#include "core/autograd.h"
#include "core/ops.h"
#include "quant/observer.h"

namespace lowbit::quant {

LearnedRangeQuantizer::LearnedRangeQuantizer(OptionReader& r, const QuantizerTraits& traits)
    : Quantizer(r, traits) {
  initialized_ = zeros({}, DType::i64);
}

bool LearnedRangeQuantizer::initialized() {
  if (!init_host_) init_host_ = initialized_.item() != 0.0;  // once, e.g. after loading
  return init_host_;
}

void LearnedRangeQuantizer::mark_initialized() {
  initialized_.fill_(1.0);
  init_host_ = true;
}

std::pair<Tensor, Tensor> LearnedRangeQuantizer::running_min_max(const Tensor& x) {
  autograd::NoGradGuard guard;
  auto [mn, mx] = batch_min_max(x, layout_of(x));
  run_min_ = run_min_.defined() ? minimum(run_min_, mn) : mn;
  run_max_ = run_max_.defined() ? maximum(run_max_, mx) : mx;
  return {run_min_, run_max_};
}

void LearnedRangeQuantizer::clamp_in_place(Tensor& p, double lo, double hi) {
  autograd::NoGradGuard guard;
  p.copy_(clamp(p, lo, hi));
}

Tensor LearnedRangeQuantizer::quantize(const Tensor& x) {
  if (!initialized()) {  // uncalibrated: the first tensor it sees (each quantizer's init rule,
                         // docs/methods.md)
    init_from(x);
    end_calibration();
  }
  return quantize_learned(x);
}

void LearnedRangeQuantizer::calibrate(const Tensor& x) {
  if (x.numel() > 0) init_from(x);
}

void LearnedRangeQuantizer::end_calibration() {
  finish_init();
  run_min_ = Tensor();
  run_max_ = Tensor();
}

}  // namespace lowbit::quant
