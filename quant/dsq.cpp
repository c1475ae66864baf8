// DSQ: the fused op (CPU kernels; CUDA generated from them), its autograd, and the quantizer
// registered as "dsq".
#include "quant/dsq.h"

#include <cmath>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "quant/fused_autograd.h"
#include "quant/fused_cpu.h"

namespace lowbit::quant {

LOWBIT_REGISTER_FUSED_OP(DsqOp, cpu, CpuLaunch);

Tensor dsq_quantize(const Tensor& x_in, const Tensor& lower, const Tensor& upper,
                    const Tensor& alpha, int64_t bits, int64_t axis) {
  const char* op = "dsq_quantize";
  LOWBIT_CHECK(x_in.defined() && is_floating(x_in.dtype()), op, ": x must be a floating tensor");
  LOWBIT_CHECK(bits >= 1 && bits <= 16, op, ": bits = ", bits, " is out of range 1 to 16");
  LOWBIT_CHECK(lower.defined() && upper.defined() && alpha.defined(), op,
               ": lower, upper and alpha must be defined");
  const ChannelLayout l = detail::param_layout(x_in, lower.numel(), axis, op);
  const DType acc = acc_dtype(x_in.dtype());
  DsqParams p{detail::prepare_param(lower, x_in, l, acc, op, "lower"),
              detail::prepare_param(upper, x_in, l, acc, op, "upper"),
              detail::prepare_param(alpha, x_in, l, acc, op, "alpha"), bits};
  if (x_in.device().is_cpu()) {
    const std::vector<double> lo = p.lower.to_vector<double>(), hi = p.upper.to_vector<double>(),
                              al = p.alpha.to_vector<double>();
    for (size_t c = 0; c < lo.size(); ++c) {
      LOWBIT_CHECK(lo[c]<hi[c], op, ": lower ", lo[c], " must be below upper ", hi[c], lo.size()> 1
                       ? str_cat(" at channel ", c)
                       : std::string());
      LOWBIT_CHECK(al[c] > 0.0 &&
                           al[c]<1.0, op, ": alpha must be in (0, 1), got ", al[c], al.size()> 1
                       ? str_cat(" at channel ", c)
                       : std::string());
    }
  }
  return fused_quantize<DsqOp>(op, x_in, l, p, {lower, upper, alpha},
                               {&DsqParams::lower, &DsqParams::upper, &DsqParams::alpha});
}

namespace {
QuantizerTraits dsq_traits() {
  QuantizerTraits t;
  t.default_bits = 4;
  t.reads_signed = false;
  return t;
}
constexpr double kDsqAlphaMin = 1e-4, kDsqAlphaMax = 0.5;  // docs/methods.md, "DSQ"
constexpr double kDsqMinWidth = 1e-8;
}  // namespace

DsqQuantizer::DsqQuantizer(OptionReader& r) : LearnedRangeQuantizer(r, dsq_traits()) {
  const double alpha0 = r.get_double("alpha", 0.2, 0.0, 1.0, /*lo_open=*/true, /*hi_open=*/true);
  learn_alpha_ = r.get_bool("learn_alpha", true);
  lower_ = zeros(param_shape());
  upper_ = ones(param_shape());
  alpha_ = full(param_shape(), alpha0);
  register_parameter("lower", &lower_);
  register_parameter("upper", &upper_);
  if (learn_alpha_)
    register_parameter("alpha", &alpha_);
  else
    register_buffer("alpha", &alpha_);
  register_buffer("initialized", &initialized_);
  // Codes: 2^b levels on [l, u].
  set_range(QuantRange{0, (int64_t(1) << bits()) - 1});
}

std::string DsqQuantizer::options_repr() const {
  return str_cat("learn_alpha=", learn_alpha_ ? "true" : "false");
}

void DsqQuantizer::init_from(const Tensor& x) {
  autograd::NoGradGuard guard;
  auto [mn, mx] = running_min_max(x);  // over the calibration batches
  lower_.copy_(mn.reshape(param_shape()));
  upper_.copy_(maximum(mx, mn + kDsqMinWidth).reshape(param_shape()));
  mark_initialized();
}

void DsqQuantizer::clamp_parameters() {
  clamp_in_place(alpha_, kDsqAlphaMin, kDsqAlphaMax);
  autograd::NoGradGuard guard;
  upper_.copy_(maximum(upper_, lower_ + kDsqMinWidth));
}

Tensor DsqQuantizer::quantize_learned(const Tensor& x) {
  return dsq_quantize(x, learned(lower_), learned(upper_), learned(alpha_, learn_alpha_), bits(),
                      spec().axis);
}

LOWBIT_REGISTER_QUANTIZER(
    "dsq", DsqQuantizer,
    "DSQ: learned bounds l < u, 2^b levels, gradients through a soft tanh staircase",
    {{"alpha", "initial characteristic alpha of the soft staircase (0: hard, 1: linear)"},
     {"learn_alpha", "learn alpha (a parameter) or keep it fixed (a buffer)"}});

}  // namespace lowbit::quant
