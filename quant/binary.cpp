// Binary: the scale, the fused ops (CPU kernels; CUDA generated from them), autograd, and the
// quantizer registered as "binary".
#include "quant/binary.h"

#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "quant/fused_cpu.h"

namespace lowbit::quant {

LOWBIT_REGISTER_FUSED_OP(BinaryOp, cpu, CpuLaunch);
LOWBIT_REGISTER_FUSED_OP(BinarySumOp, cpu, CpuLaunch);

Tensor binarize(const Tensor& x_in, bool scaled, bool per_channel, int64_t axis) {
  const char* op = "binarize";
  LOWBIT_CHECK(x_in.defined() && is_floating(x_in.dtype()), op, ": x must be a floating tensor");
  int64_t channels = 1;
  if (scaled && per_channel) channels = x_in.size(checked_axis(x_in.shape(), axis, op));
  const ChannelLayout l = channel_layout(x_in.shape(), axis, channels, op);
  Tensor x = x_in.detach().contiguous();
  BinaryParams p;
  p.n = std::max<int64_t>(l.outer * l.inner, 1);
  if (scaled && x.numel() > 0) {
    autograd::NoGradGuard guard;
    // a_k = mean |W[k]| (docs/methods.md, "Binary and ternary")
    p.scale = mean(abs(x.reshape(layout_shape(l)).to(acc_dtype(x.dtype()))), {0, 2}).contiguous();
  }
  Tensor y = fused_forward<BinaryOp>(x, l, p);
  if (autograd::any_requires_grad({x_in})) {
    autograd::SavedTensor sx(x, op), ss(p.scale, op);
    autograd::record(op, {x_in}, y, [=](const Tensor& g_in) {
      Tensor xs = sx.unpack();
      Tensor g = g_in.to(xs.dtype()).contiguous();
      BinaryParams bp = p;
      bp.scale = ss.unpack();
      if (bp.scale.defined()) {
        // sum_j sign(W[k,j]) dL/dW_b[k,j], reduced per channel (fused reduce pass).
        bp.sums =
            fused_backward<BinarySumOp>(xs, g, l, bp, false, true).second.reshape({l.channels});
      }
      return std::vector<Tensor>{fused_backward<BinaryOp>(xs, g, l, bp, true, false).first};
    });
  }
  return y;
}

namespace {
QuantizerTraits binary_traits() {
  QuantizerTraits t;
  t.default_role = QuantRole::weight;
  t.default_bits = 1;
  t.min_bits = 1;
  t.max_bits = 1;
  t.reads_signed = false;
  t.default_per_channel = true;
  t.per_channel_needs_channels = false;
  return t;
}
}  // namespace

BinaryQuantizer::BinaryQuantizer(OptionReader& r) : Quantizer(r, binary_traits()) {
  const bool weight = role() == QuantRole::weight;
  scaled_ =
      r.get_choice("scaling", weight ? "mean_abs" : "none", {"mean_abs", "none"}) == "mean_abs";
}

std::string BinaryQuantizer::options_repr() const {
  return str_cat("scaling=", scaled_ ? "mean_abs" : "none");
}

Tensor BinaryQuantizer::quantize(const Tensor& x) {
  return binarize(x, scaled_, spec().per_channel, spec().axis);
}

LOWBIT_REGISTER_QUANTIZER("binary", BinaryQuantizer,
                          "binary: sign(x), times mean|x| per channel (XNOR-Net) when scaled",
                          {{"scaling", "mean_abs (a_k = mean |W[k]|) or none (plain sign)"}});

}  // namespace lowbit::quant
