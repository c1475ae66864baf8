// DSQ: the fused op (CPU kernels; CUDA in dsq.cu), its autograd, and the quantizer registered as
// "dsq".
#include "quant/dsq.h"

#include <cmath>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "quant/fused_cpu.h"
#include "quant/observer.h"

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
  Tensor x = x_in.detach().contiguous();
  Tensor y = fused_forward<DsqOp>(x, l, p);
  if (autograd::any_requires_grad({x_in, lower, upper, alpha})) {
    const bool need_x = x_in.requires_grad();
    const bool need[3] = {lower.requires_grad(), upper.requires_grad(), alpha.requires_grad()};
    const Tensor* params[3] = {&lower, &upper, &alpha};
    Shape shapes[3];
    DType dtypes[3];
    for (int k = 0; k < 3; ++k) {
      shapes[k] = params[k]->shape();
      dtypes[k] = params[k]->dtype();
    }
    autograd::SavedTensor sx(x, op), sl(p.lower, op), su(p.upper, op), sa(p.alpha, op);
    autograd::record(op, {x_in, lower, upper, alpha}, y, [=](const Tensor& g) {
      Tensor xs = sx.unpack();
      DsqParams bp{sl.unpack(), su.unpack(), sa.unpack(), p.bits};
      auto [dx, grads] = fused_backward<DsqOp>(xs, g.to(xs.dtype()).contiguous(), l, bp, need_x,
                                               need[0] || need[1] || need[2]);
      std::vector<Tensor> out{dx};
      for (int k = 0; k < 3; ++k) {
        out.push_back(need[k] ? grads.select(0, k).reshape(shapes[k]).to(dtypes[k]) : Tensor());
      }
      return out;
    });
  }
  return y;
}

namespace {
QuantizerTraits dsq_traits() {
  QuantizerTraits t;
  t.default_bits = 4;
  t.reads_signed = false;
  return t;
}
constexpr double kDsqAlphaMin = 1e-4, kDsqAlphaMax = 0.5;  // METHODS 3.5
constexpr double kDsqMinWidth = 1e-8;
}  // namespace

DsqQuantizer::DsqQuantizer(OptionReader& r) : Quantizer(r, dsq_traits()) {
  const double alpha0 = r.get_double("alpha", 0.2, 0.0, 1.0, /*lo_open=*/true);
  if (alpha0 >= 1.0) r.fail("alpha", "is out of range; allowed: (0, 1)");
  learn_alpha_ = r.get_bool("learn_alpha", true);
  lower_ = zeros(param_shape());
  upper_ = ones(param_shape());
  alpha_ = full(param_shape(), alpha0);
  initialized_ = zeros({}, DType::i64);
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

bool DsqQuantizer::initialized() {
  if (!init_host_) init_host_ = initialized_.item() != 0.0;
  return init_host_;
}

void DsqQuantizer::initialize_from(const Tensor& x) {
  autograd::NoGradGuard guard;
  auto [mn, mx] = batch_min_max(x, layout_of(x));
  run_min_ = run_min_.defined() ? minimum(run_min_, mn) : mn;
  run_max_ = run_max_.defined() ? maximum(run_max_, mx) : mx;
  lower_.copy_(run_min_.reshape(param_shape()));
  upper_.copy_(maximum(run_max_, run_min_ + kDsqMinWidth).reshape(param_shape()));
  initialized_.fill_(1.0);
  init_host_ = true;
}

void DsqQuantizer::calibrate(const Tensor& x) {
  if (x.numel() > 0) initialize_from(x);
}

void DsqQuantizer::end_calibration() {
  run_min_ = Tensor();
  run_max_ = Tensor();
}

void DsqQuantizer::clamp_parameters() {
  autograd::NoGradGuard guard;
  alpha_.copy_(clamp(alpha_, kDsqAlphaMin, kDsqAlphaMax));
  upper_.copy_(maximum(upper_, lower_ + kDsqMinWidth));
}

Tensor DsqQuantizer::quantize(const Tensor& x) {
  if (!initialized()) {
    initialize_from(x);
    end_calibration();
  }
  const bool fz = frozen();
  return dsq_quantize(x, fz ? lower_.detach() : lower_, fz ? upper_.detach() : upper_,
                      fz || !learn_alpha_ ? alpha_.detach() : alpha_, bits(), spec().axis);
}

LOWBIT_REGISTER_QUANTIZER("dsq", DsqQuantizer);

}  // namespace lowbit::quant
