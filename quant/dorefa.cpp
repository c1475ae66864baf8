// DoReFa: the layer statistic, the fused op (CPU kernels; CUDA generated from them), autograd, and
// the quantizer registered as "dorefa".
#include "quant/dorefa.h"

#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "quant/fused_autograd.h"
#include "quant/fused_cpu.h"

namespace lowbit::quant {

LOWBIT_REGISTER_FUSED_OP(DorefaOp, cpu, CpuLaunch);

Tensor dorefa_quantize(const Tensor& x_in, int64_t bits, bool weight, bool modified_grid) {
  const char* op = "dorefa_quantize";
  LOWBIT_CHECK(x_in.defined() && is_floating(x_in.dtype()), op, ": x must be a floating tensor");
  LOWBIT_CHECK(bits >= 1 && bits <= 16, op, ": bits = ", bits, " is out of range 1 to 16");
  const ChannelLayout l = channel_layout(x_in.shape(), 0, 1, op);
  const DType acc = acc_dtype(x_in.dtype());
  Tensor x = x_in.detach().contiguous();
  DorefaParams p;
  p.bits = bits;
  p.weight = weight;
  p.modified = modified_grid;
  if (weight && x.numel() > 0) {
    autograd::NoGradGuard guard;
    // m = max|tanh w| = tanh(max|w|) (tanh is odd and increasing); b = 1: mean|w|.
    Tensor a = abs(x.to(acc));
    p.stat = (bits == 1 ? mean(a) : tanh(amax(a))).reshape({1}).contiguous();
  }
  return fused_quantize<DorefaOp>(op, x_in, l, p, {}, {&DorefaParams::stat});
}

namespace {
QuantizerTraits dorefa_traits() {
  QuantizerTraits t;
  t.default_bits = 4;
  t.reads_signed = false;
  t.allows_per_channel = false;
  return t;
}
}  // namespace

DorefaQuantizer::DorefaQuantizer(OptionReader& r) : Quantizer(r, dorefa_traits()) {
  if (role() == QuantRole::weight) {
    modified_ = r.get_choice("dorefa_grid", "original", {"original", "modified"}) == "modified";
  }
  // Codes: 2^b levels on [-1, 1] (weights) or [0, 1] (activations).
  set_range(QuantRange{0, (int64_t(1) << bits()) - 1});
}

std::string DorefaQuantizer::options_repr() const {
  return role() == QuantRole::weight ? str_cat("dorefa_grid=", modified_ ? "modified" : "original")
                                     : std::string();
}

Tensor DorefaQuantizer::quantize(const Tensor& x) {
  return dorefa_quantize(x, bits(), role() == QuantRole::weight, modified_);
}

LOWBIT_REGISTER_QUANTIZER(
    "dorefa", DorefaQuantizer,
    "DoReFa: weights through tanh scaled to [-1, 1], activations clipped to [0, 1]",
    {{"dorefa_grid", "weights: original (2^b - 1 steps on [-1, 1]) or modified grid"}});

}  // namespace lowbit::quant
