// LsqQuantizer: the learned step size around the fused lsq_quantize op. Registered as "lsq".
#include "quant/lsq.h"

#include <cmath>

#include "core/autograd.h"
#include "core/ops.h"
#include "dist/process_group.h"
#include "dist/world.h"

namespace lowbit::quant {

namespace {
QuantizerTraits lsq_traits() {
  QuantizerTraits t;
  t.default_bits = 4;
  return t;
}
}  // namespace

// ------------------------------------------------------------------------ LsqQuantizerBase

LsqQuantizerBase::LsqQuantizerBase(OptionReader& r) : LearnedRangeQuantizer(r, lsq_traits()) {
  grad_scale_mode_ = r.get_choice("grad_scale", "auto", {"auto", "elements", "none"});
  scale_ = ones(param_shape());
}

double LsqQuantizerBase::grad_scale(const Tensor& x) const {
  if (grad_scale_mode_ == "none") return 1.0;
  const ChannelLayout l = layout_of(x);
  const int64_t n =
      grad_scale_mode_ == "elements" ? std::max<int64_t>(x.numel() / l.channels, 1) : lsq_count(x);
  return lsq_grad_scale(n, spec().range.qmax);
}

void LsqQuantizerBase::clamp_parameters() { clamp_in_place(scale_, kMinLearnedScale, INFINITY); }

// ------------------------------------------------------------------------ LsqQuantizer

LsqQuantizer::LsqQuantizer(OptionReader& r) : LsqQuantizerBase(r) {
  std::vector<std::string> inits = observer_names();
  inits.insert(inits.begin(), "lsq");
  init_ = r.get_choice("init", "lsq", inits);
  if (init_ != "lsq") {
    // z = 0 always: symmetric for signed ranges; for unsigned ones the asymmetric qparams of a
    // range starting at 0 have z = 0 too. mse scores its candidates with these qparams.
    observer_ = create_observer(init_, r, ObserverContext{spec().range, signed_range()});
  }
  register_parameter("scale", &scale_);
  register_buffer("initialized", &initialized_);
}

bool LsqQuantizer::signed_range() const { return spec().range.qmin < 0; }

std::string LsqQuantizer::options_repr() const {
  return "grad_scale=" + grad_scale_mode_ +
         (observer_ ? ", init=" + observer_->repr() : std::string());
}

void LsqQuantizer::set_scale(const Tensor& s0) {
  scale_.copy_(clamp(s0, kMinLearnedScale, INFINITY).reshape(param_shape()));
  mark_initialized();
}

void LsqQuantizer::init_from(const Tensor& x) {
  autograd::NoGradGuard guard;
  const ChannelLayout l = layout_of(x);
  if (observer_) {  // the scale is set when calibration ends (percentile and mse need it all)
    if (!min_val_.defined()) {  // on x's device, f32 (C)
      min_val_ = full({l.channels}, INFINITY, TensorOptions(DType::f32, x.device()));
      max_val_ = full({l.channels}, -INFINITY, TensorOptions(DType::f32, x.device()));
    }
    observer_->observe(x.detach().contiguous(), l, min_val_, max_val_);
    return;
  }
  Tensor s = sum(abs(x.detach().contiguous().reshape(layout_shape(l)).to(DType::f64)), {0, 2})
                 .contiguous();
  int64_t n = l.outer * l.inner;
  if (dist::is_distributed()) {
    // Data-parallel: the mean |x| of the global batch, so every rank starts from the same scale
    // (all ranks call this together; their training and calibration shards are equally long).
    dist::process_group(s.device()).all_reduce(s, dist::ReduceOp::sum);
    n *= dist::world_size();
  }
  abs_sum_ = abs_sum_.defined() ? abs_sum_ + s : s;
  count_ += n;
  // s0 = 2 * mean|x| / sqrt(Qp), at least 1e-8 (docs/methods.md, "LSQ").
  const double k = 2.0 / std::sqrt(double(std::max<int64_t>(spec().range.qmax, 1)));
  set_scale(abs_sum_ * (k / double(std::max<int64_t>(count_, 1))));
}

void LsqQuantizer::finish_init() {
  if (observer_ && min_val_.defined()) {  // something was observed
    // s0 = the scale of PyTorch's qparams for the observed range (docs/methods.md, "Observers"):
    // max|x| / 127.5 for signed 8 bits, x_max / 255 for unsigned (the zero-point, 0 or ignored, is
    // dropped).
    autograd::NoGradGuard guard;
    observer_->finalize(min_val_, max_val_);
    if (!signed_range()) min_val_ = zeros_like(min_val_);  // LSQ clips negatives to 0 anyway
    set_scale(calc_qparams(min_val_, max_val_, spec().range, signed_range()).first);
    min_val_ = max_val_ = Tensor();
  }
  abs_sum_ = Tensor();
  count_ = 0;
}

Tensor LsqQuantizer::quantize_learned(const Tensor& x) {
  return lsq_quantize(x, learned(scale_), spec().range, grad_scale(x), spec().axis);
}

std::optional<IntegerForm> LsqQuantizer::integer_form() {
  if (!enabled() || calibrating() || !initialized()) return std::nullopt;
  return make_integer_form(scale_, Tensor(), spec().range);
}

LOWBIT_OPTION_HELP("grad_scale",
                   "g of the step gradient: auto (1/sqrt(N Qp), N per scale or features per "
                   "sample), elements (N = all elements per scale), none (1)");
LOWBIT_REGISTER_QUANTIZER(
    "lsq", LsqQuantizer, "LSQ: a learned step size s, codes clamp(round(x / s)), symmetric",
    {{"init", "the initial s: lsq (2 mean|x| / sqrt(Qp)) or an observer's range (its qparams)"}});

}  // namespace lowbit::quant
