// LsqQuantizer: the learned step size around the fused lsq_quantize op. Registered as "lsq".
#include "quant/lsq.h"

#include <cmath>

#include "core/autograd.h"
#include "core/ops.h"

namespace lowbit::quant {

namespace {
QuantizerTraits lsq_traits() {
  QuantizerTraits t;
  t.default_bits = 4;
  return t;
}
}  // namespace

LsqQuantizer::LsqQuantizer(OptionReader& r) : Quantizer(r, lsq_traits()) {
  grad_scale_mode_ = r.get_choice("grad_scale", "auto", {"auto", "elements", "none"});
  scale_ = ones(param_shape());
  initialized_ = zeros({}, DType::i64);
  register_parameter("scale", &scale_);
  register_buffer("initialized", &initialized_);
}

bool LsqQuantizer::initialized() {
  if (!init_host_) init_host_ = initialized_.item() != 0.0;  // once, e.g. after loading
  return init_host_;
}

double LsqQuantizer::grad_scale(const Tensor& x) const {
  if (grad_scale_mode_ == "none") return 1.0;
  const ChannelLayout l = layout_of(x);
  const int64_t n =
      grad_scale_mode_ == "elements" ? std::max<int64_t>(x.numel() / l.channels, 1) : lsq_count(x);
  return lsq_grad_scale(n, spec().range.qmax);
}

void LsqQuantizer::accumulate(const Tensor& x) {
  autograd::NoGradGuard guard;
  const ChannelLayout l = layout_of(x);
  Tensor s = sum(abs(x.detach().contiguous().reshape(layout_shape(l)).to(DType::f64)), {0, 2});
  abs_sum_ = abs_sum_.defined() ? abs_sum_ + s : s;
  count_ += l.outer * l.inner;
  // s0 = 2 * mean|x| / sqrt(Qp), at least 1e-8 (METHODS 3.1).
  const double k = 2.0 / std::sqrt(double(std::max<int64_t>(spec().range.qmax, 1)));
  Tensor s0 =
      clamp(abs_sum_ * (k / double(std::max<int64_t>(count_, 1))), kMinLearnedScale, INFINITY);
  scale_.copy_(s0.reshape(param_shape()));
  initialized_.fill_(1.0);
  init_host_ = true;
}

void LsqQuantizer::calibrate(const Tensor& x) {
  if (x.numel() > 0) accumulate(x);
}

void LsqQuantizer::end_calibration() {
  abs_sum_ = Tensor();
  count_ = 0;
}

void LsqQuantizer::clamp_parameters() {
  autograd::NoGradGuard guard;
  scale_.copy_(clamp(scale_, kMinLearnedScale, INFINITY));
}

Tensor LsqQuantizer::quantize(const Tensor& x) {
  if (!initialized()) {
    accumulate(x);
    end_calibration();
  }
  const Tensor s = frozen() ? scale_.detach() : scale_;
  return lsq_quantize(x, s, spec().range, grad_scale(x), spec().axis);
}

LOWBIT_REGISTER_QUANTIZER("lsq", LsqQuantizer);

}  // namespace lowbit::quant
