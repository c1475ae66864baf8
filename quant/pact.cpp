// PACT: the fused op (CPU kernels; CUDA generated from them), its autograd, and the quantizers
// registered as "pact" and "cg_pact" (docs/methods.md, "CG-PACT": PACT's forward with the
// calibrated clip gradient).
#include "quant/pact.h"

#include <cmath>
#include <vector>

#include "core/ops.h"
#include "quant/fused_autograd.h"
#include "quant/fused_cpu.h"

namespace lowbit::quant {

LOWBIT_REGISTER_FUSED_OP(PactOp, cpu, CpuLaunch);

Tensor pact_quantize(const Tensor& x_in, const Tensor& alpha, int64_t bits, bool calibrated,
                     double alpha_decay) {
  const char* op = "pact_quantize";
  LOWBIT_CHECK(x_in.defined() && is_floating(x_in.dtype()), op, ": x must be a floating tensor");
  LOWBIT_CHECK(bits >= 1 && bits <= 16, op, ": bits = ", bits, " is out of range 1 to 16");
  LOWBIT_CHECK(alpha.defined() && alpha.numel() == 1, op, ": alpha must have one element");
  if (alpha.device().is_cpu()) {
    const double a = alpha.item();
    LOWBIT_CHECK(a != 0.0 && std::isfinite(a), op,
                 ": the clip |alpha| must be positive and "
                 "finite, got alpha = ",
                 a);
  }
  const ChannelLayout l = channel_layout(x_in.shape(), 0, 1, op);
  PactParams p{detail::prepare_param(alpha, x_in, l, acc_dtype(x_in.dtype()), op, "alpha"), bits,
               calibrated, alpha_decay};
  return fused_quantize<PactOp>(op, x_in, l, p, {alpha}, {&PactParams::alpha});
}

namespace {
QuantizerTraits pact_traits() {
  QuantizerTraits t;
  t.allows_weight = false;
  t.default_bits = 4;
  t.reads_signed = false;
  t.allows_per_channel = false;
  return t;
}
}  // namespace

PactQuantizer::PactQuantizer(OptionReader& r) : Quantizer(r, pact_traits()) {
  calibrated_ = r.get_choice("gradient", "pact", {"pact", "calibrated"}) == "calibrated";
  init(r, 10.0);  // docs/methods.md, "PACT"
}

PactQuantizer::PactQuantizer(OptionReader& r, double alpha0) : Quantizer(r, pact_traits()) {
  calibrated_ = true;
  init(r, alpha0);
}

void PactQuantizer::init(OptionReader& r, double alpha0) {
  alpha0 = r.get_double("alpha", alpha0, 0.0, 1e30, /*lo_open=*/true);
  alpha_decay_ = r.get_double("alpha_decay", 0.0, 0.0, 1e30);
  alpha_ = full({1}, alpha0);
  register_parameter("alpha", &alpha_);
}

std::optional<IntegerForm> PactQuantizer::integer_form() {
  if (!enabled() || calibrating()) return std::nullopt;
  const double a = std::fabs(alpha_.item());
  const int64_t n = (int64_t(1) << bits()) - 1;
  IntegerForm f;
  f.scale = {double(float(a / double(n)))};  // the f32 scale QuantizeLinear / DequantizeLinear use
  f.zero_point = {0};
  f.range = QuantRange{0, n};
  return f;
}

std::string PactQuantizer::options_repr() const {
  return str_cat("alpha_decay=", alpha_decay_, ", gradient=", calibrated_ ? "calibrated" : "pact");
}

Tensor PactQuantizer::quantize(const Tensor& x) {
  const Tensor a = frozen() ? alpha_.detach() : alpha_;
  return pact_quantize(x, a, bits(), calibrated_, alpha_decay_);
}

LOWBIT_REGISTER_QUANTIZER(
    "pact", PactQuantizer,
    "PACT: activations clipped to a learned alpha, 2^b - 1 uniform levels on [0, alpha]",
    {{"alpha", "the initial clip alpha (a learned parameter)"},
     {"alpha_decay", "L2 regulariser alpha_decay * alpha^2, added by the backward"},
     {"gradient", "dq/dalpha: pact (1 above alpha) or calibrated (also (q - x) / alpha inside)"}});
LOWBIT_REGISTER_QUANTIZER("cg_pact", CgPactQuantizer,
                          "CG-PACT: PACT with the calibrated clip gradient, alpha from 8",
                          {{"alpha", "the initial clip alpha (a learned parameter)"},
                           {"alpha_decay",
                            "L2 regulariser alpha_decay * alpha^2, added by the backward"}});

}  // namespace lowbit::quant
