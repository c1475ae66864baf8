// UniformQuantizer: observers in, calc_qparams, fused fake_quantize out. Registered as "uniform".
#include "quant/uniform.h"

#include <cmath>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"

namespace lowbit::quant {

namespace {
QuantizerTraits uniform_traits() { return QuantizerTraits{}; }
}  // namespace

UniformQuantizer::UniformQuantizer(OptionReader& r) : UniformQuantizer(r, uniform_traits()) {}

UniformQuantizer::UniformQuantizer(OptionReader& r, const QuantizerTraits& traits)
    : Quantizer(r, traits) {
  const bool weight = role() == QuantRole::weight;
  symmetric_ = r.get_bool("symmetric", weight);
  const std::string obs = r.get_choice("observer", weight ? "minmax" : "ema", observer_names());
  observer_ = create_observer(obs, r, ObserverContext{spec().range, symmetric_});
  const Shape shape = param_shape();
  scale_ = ones(shape);
  zero_point_ = zeros(shape, DType::i32);
  min_val_ = full(shape, INFINITY);
  max_val_ = full(shape, -INFINITY);
  register_buffer("scale", &scale_);
  register_buffer("zero_point", &zero_point_);
  register_buffer("min_val", &min_val_);
  register_buffer("max_val", &max_val_);
}

std::string UniformQuantizer::options_repr() const {
  return str_cat("observer=", observer_->repr(), ", symmetric=", symmetric_ ? "true" : "false");
}

void UniformQuantizer::observe(const Tensor& x) {
  if (x.numel() == 0) return;
  autograd::NoGradGuard guard;
  observer_->observe(x.detach().contiguous(), layout_of(x), min_val_, max_val_);
  has_stats_ = true;
  stale_ = true;
}

bool UniformQuantizer::has_statistics() {
  if (!has_stats_) {  // e.g. loaded from a state dict: one host copy, then remembered
    const std::vector<float> mn = min_val_.to_vector<float>(), mx = max_val_.to_vector<float>();
    for (size_t c = 0; c < mn.size(); ++c) has_stats_ = has_stats_ || mn[c] <= mx[c];
  }
  return has_stats_;
}

std::pair<Tensor, Tensor> UniformQuantizer::compute_qparams(const Tensor& min_val,
                                                            const Tensor& max_val) {
  return calc_qparams(min_val, max_val, spec().range, symmetric_);
}

void UniformQuantizer::update_qparams() {
  autograd::NoGradGuard guard;
  observer_->finalize(min_val_, max_val_);
  auto [s, z] = compute_qparams(min_val_, max_val_);
  // New tensors rather than in-place writes: a forward whose backward has not run yet keeps
  // the qparams it used.
  scale_ = s.reshape(param_shape());
  zero_point_ = z.reshape(param_shape());
  stale_ = false;
}

const Tensor& UniformQuantizer::scale() {
  if (stale_) update_qparams();
  return scale_;
}

const Tensor& UniformQuantizer::zero_point() {
  if (stale_) update_qparams();
  return zero_point_;
}

void UniformQuantizer::calibrate(const Tensor& x) { observe(x); }

void UniformQuantizer::end_calibration() {
  autograd::NoGradGuard guard;
  observer_->finalize(min_val_, max_val_);
  stale_ = true;  // the qparams follow the buffers, whoever writes them next
}

Tensor UniformQuantizer::quantize(const Tensor& x) {
  if (is_training() && !frozen() && (observer_->observes_in_training() || !has_statistics())) {
    observe(x);
  }
  LOWBIT_CHECK(has_statistics(), "quantizer '", name(), "' (observer ", observer_->name(),
               ") has observed nothing: calibrate it (set_calibrating) or run it in training "
               "mode first");
  if (stale_) update_qparams();
  return fake_quantize(x, scale_, zero_point_, spec().range, spec().axis);
}

LOWBIT_OPTION_HELP("observer", "how the range (x_min, x_max) is observed; the qparams follow");
LOWBIT_OPTION_HELP("symmetric",
                   "symmetric range around 0 (zero point 0 signed, mid-range unsigned)");
LOWBIT_REGISTER_QUANTIZER("uniform", UniformQuantizer,
                          "uniform affine: scale and zero point from an observed range");

std::optional<IntegerForm> UniformQuantizer::integer_form() {
  if (!enabled() || calibrating() || !has_statistics()) return std::nullopt;
  return make_integer_form(scale(), zero_point(), spec().range);
}

}  // namespace lowbit::quant
