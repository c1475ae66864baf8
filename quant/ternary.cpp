// Ternary: the threshold and scale, the fused forward (CPU kernels; CUDA generated from them), the
// identity backward, and the quantizer registered as "ternary".
#include "quant/ternary.h"

#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "quant/fused_cpu.h"

namespace lowbit::quant {

LOWBIT_REGISTER_FUSED_OP(TernaryOp, cpu, CpuLaunch);

Tensor ternarize(const Tensor& x_in, double threshold, bool per_channel, int64_t axis) {
  const char* op = "ternarize";
  LOWBIT_CHECK(x_in.defined() && is_floating(x_in.dtype()), op, ": x must be a floating tensor");
  LOWBIT_CHECK(threshold >= 0.0, op, ": threshold must be non-negative, got ", threshold);
  int64_t channels = 1;
  if (per_channel) channels = x_in.size(checked_axis(x_in.shape(), axis, op));
  const ChannelLayout l = channel_layout(x_in.shape(), axis, channels, op);
  Tensor x = x_in.detach().contiguous();
  TernaryParams p;
  {
    autograd::NoGradGuard guard;
    const DType acc = acc_dtype(x.dtype());
    Tensor a = abs(x.reshape(layout_shape(l)).to(acc));            // (outer, C, inner)
    Tensor delta = mean(a, {0, 2}, /*keepdim=*/true) * threshold;  // (1, C, 1)
    Tensor keep = gt(a, delta).to(acc);
    Tensor count = sum(keep, {0, 2});
    // a = mean(|w| over |w| > Delta_t); 0 where nothing passes (all-zero channel).
    Tensor alpha = sum(a * keep, {0, 2}) / maximum(count, ones_like(count));
    p.delta = delta.reshape({l.channels}).contiguous();
    p.alpha = alpha.contiguous();
  }
  Tensor y = fused_forward<TernaryOp>(x, l, p);
  if (autograd::any_requires_grad({x_in})) {
    const DType dt = x_in.dtype();
    autograd::record(op, {x_in}, y, [dt](const Tensor& g) {
      return std::vector<Tensor>{
          g.to(dt)};  // identity straight-through (docs/methods.md, "Binary and ternary")
    });
  }
  return y;
}

namespace {
QuantizerTraits ternary_traits() {
  QuantizerTraits t;
  t.default_role = QuantRole::weight;
  t.allows_activation = false;
  t.default_bits = 2;
  t.min_bits = 2;
  t.max_bits = 2;
  t.reads_signed = false;
  t.per_channel_needs_channels = false;
  return t;
}
}  // namespace

TernaryQuantizer::TernaryQuantizer(OptionReader& r) : Quantizer(r, ternary_traits()) {
  threshold_ = r.get_double("threshold", 0.7, 0.0, 1e30);
  set_range(QuantRange{-1, 1});  // codes {-1, 0, +1}
}

std::string TernaryQuantizer::options_repr() const { return str_cat("threshold=", threshold_); }

Tensor TernaryQuantizer::quantize(const Tensor& x) {
  return ternarize(x, threshold_, spec().per_channel, spec().axis);
}

LOWBIT_REGISTER_QUANTIZER("ternary", TernaryQuantizer,
                          "ternary (TWN): weights to {-a, 0, a}, threshold * mean|w|",
                          {{"threshold", "Delta = threshold * mean|w|; |w| <= Delta becomes 0"}});

}  // namespace lowbit::quant
