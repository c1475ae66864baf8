// LsqPlusQuantizer: learned scale and offset around the fused lsq_plus_quantize op. Registered
// as "lsq_plus".
#include "quant/lsq_plus.h"

#include <cmath>

#include "core/autograd.h"
#include "core/ops.h"
#include "quant/lsq.h"

namespace lowbit::quant {

LsqPlusQuantizer::LsqPlusQuantizer(OptionReader& r) : LsqQuantizerBase(r) {
  learn_offset_ = r.get_bool("learn_offset", role() == QuantRole::activation);
  offset_ = zeros(param_shape());
  register_parameter("scale", &scale_);
  if (learn_offset_)
    register_parameter("offset", &offset_);
  else
    register_buffer("offset", &offset_);
  register_buffer("initialized", &initialized_);
}

std::string LsqPlusQuantizer::options_repr() const {
  return str_cat("grad_scale=", grad_scale_mode_,
                 ", learn_offset=", learn_offset_ ? "true" : "false");
}

void LsqPlusQuantizer::init_from(const Tensor& x) {
  autograd::NoGradGuard guard;
  const ChannelLayout l = layout_of(x);
  const QuantRange r = spec().range;
  Tensor s, beta;
  if (role() == QuantRole::activation) {
    auto [mn, mx] = running_min_max(x);  // over the calibration batches
    s = clamp((mx - mn) * (1.0 / double(r.qmax - r.qmin)), kMinLearnedScale, INFINITY);
    beta = mn - s * double(r.qmin);
  } else {
    Tensor v = x.detach().contiguous().reshape(layout_shape(l)).to(DType::f64);
    Tensor mu = mean(v, {0, 2});
    Tensor sd = sqrt(var(v, {0, 2}, /*unbiased=*/l.outer * l.inner > 1));
    Tensor a = maximum(abs(mu - sd * 3.0), abs(mu + sd * 3.0));
    s = clamp(a * (1.0 / std::ldexp(1.0, int(spec().bits - 1))), kMinLearnedScale, INFINITY);
    beta = zeros_like(s);
  }
  scale_.copy_(s.reshape(param_shape()));
  offset_.copy_(beta.reshape(param_shape()));
  mark_initialized();
}

Tensor LsqPlusQuantizer::quantize_learned(const Tensor& x) {
  return lsq_plus_quantize(x, learned(scale_), learned(offset_, learn_offset_), spec().range,
                           grad_scale(x), spec().axis);
}

LOWBIT_REGISTER_QUANTIZER("lsq_plus", LsqPlusQuantizer,
                          "LSQ+: a learned step size s and offset beta (asymmetric)",
                          {{"learn_offset", "learn beta (a parameter) or keep it 0 (a buffer)"}});

}  // namespace lowbit::quant
