// Fake quantization: argument checks, autograd and the CPU kernels (the CUDA registration is
// generated from them). The math is in fake_quant.h; the launch machinery in fused.h.
#include "quant/fake_quant.h"

#include <cmath>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "quant/fused_autograd.h"
#include "quant/fused_cpu.h"

namespace lowbit::quant {

LOWBIT_REGISTER_FUSED_OP(AffineFakeQuantOp, cpu, CpuLaunch);
LOWBIT_REGISTER_FUSED_OP(LsqOp, cpu, CpuLaunch);
LOWBIT_REGISTER_FUSED_OP(LsqPlusOp, cpu, CpuLaunch);
LOWBIT_REGISTER_CHANNEL_OP(CalcQParamsOp, cpu, CpuLaunch);

QuantRange quant_range(int64_t bits, bool is_signed, bool narrow_range) {
  LOWBIT_CHECK_INPUT(bits >= 1 && bits <= 16, "bits = ", bits,
                     " is out of range; allowed: 1 to 16");
  LOWBIT_CHECK_INPUT(
      !(is_signed && bits == 1),
      "bits = 1 with signed = true gives the codes "
      "{-1, 0}; use unsigned 1-bit or the binary quantizer (docs/methods.md, 'Few bits')");
  LOWBIT_CHECK_INPUT(!narrow_range || is_signed,
                     "narrow_range = true needs signed = true "
                     "(it removes the code -2^(b-1) of a signed range)");
  QuantRange r;
  if (is_signed) {
    r.qmax = (int64_t(1) << (bits - 1)) - 1;
    r.qmin = narrow_range ? -r.qmax : -(int64_t(1) << (bits - 1));
  } else {
    r.qmin = 0;
    r.qmax = (int64_t(1) << bits) - 1;
  }
  return r;
}

double lsq_grad_scale(int64_t count, int64_t qp) {
  LOWBIT_CHECK(count > 0, "lsq_grad_scale: element count must be positive, got ", count);
  return 1.0 / std::sqrt(double(count) * double(std::max<int64_t>(qp, 1)));
}

namespace detail {

ChannelLayout param_layout(const Tensor& x, int64_t numel, int64_t axis, const char* op) {
  return channel_layout(x.shape(), axis, numel, op);
}

Tensor prepare_param(const Tensor& p, const Tensor& x, const ChannelLayout& l, DType dtype,
                     const char* op, const char* what) {
  LOWBIT_CHECK(p.defined(), op, ": ", what, " is undefined; want a tensor of ", l.channels,
               l.channels == 1 ? " element (per-tensor)" : " elements (per-channel)");
  LOWBIT_CHECK(p.device() == x.device(), op, ": ", what, " is on ", p.device(), " but x is on ",
               x.device());
  LOWBIT_CHECK(p.numel() == l.channels, op, ": ", what, " has ", p.numel(), " elements (shape ",
               p.shape(), "); want 1 (per-tensor) or ", l.channels, " (per-channel)");
  autograd::NoGradGuard guard;
  return p.detach().reshape({l.channels}).to(dtype).contiguous();
}

void check_positive(const Tensor& p, const char* op, const char* what) {
  if (!p.device().is_cpu()) return;
  const std::vector<double> v = p.to_vector<double>();
  for (size_t c = 0; c < v.size(); ++c) {
    LOWBIT_CHECK(
        v[c] > 0.0 && std::isfinite(v[c]), op, ": ", what, " must be positive and finite, got ",
        v[c], v.size() > 1 ? str_cat(" at channel ", c) : std::string(),
        std::isfinite(v[c])
            ? " (learned scales: call Quantizer::clamp_parameters() after optimizer steps)"
            : " (a learned or observed scale went NaN/inf: the training diverged; lower the "
              "learning rate or set clip_grad_norm)");
  }
}

}  // namespace detail

namespace {

void check_input(const Tensor& x, const char* op) {
  LOWBIT_CHECK(x.defined(), op, ": x is undefined; want a floating tensor (f32, f64, bf16, f16)");
  LOWBIT_CHECK(is_floating(x.dtype()), op, ": x must be floating (f32, f64, bf16, f16), got ",
               x.dtype());
}

Tensor prepare_zero_point(const Tensor& zp, const Tensor& x, const ChannelLayout& l,
                          QuantRange range, const char* op) {
  Tensor z = detail::prepare_param(zp, x, l, DType::i32, op, "zero_point");
  if (z.device().is_cpu()) {
    const std::vector<double> v = zp.to_vector<double>();
    for (size_t c = 0; c < v.size(); ++c) {
      LOWBIT_CHECK(
          v[c] == std::nearbyint(v[c]) && v[c] >= double(range.qmin) && v[c] <= double(range.qmax),
          op, ": zero_point must be an integer in [", range.qmin, ", ", range.qmax, "], got ", v[c],
          v.size() > 1 ? str_cat(" at channel ", c) : std::string());
    }
  }
  return z;
}

void check_range(QuantRange range, const char* op) {
  LOWBIT_CHECK(range.qmin < range.qmax, op, ": empty code range [", range.qmin, ", ", range.qmax,
               "]; want qmin < qmax");
}

}  // namespace

Tensor fake_quantize(const Tensor& x_in, const Tensor& scale, const Tensor& zero_point,
                     QuantRange range, int64_t axis) {
  const char* op = "fake_quantize";
  check_input(x_in, op);
  check_range(range, op);
  const ChannelLayout l = detail::param_layout(x_in, scale.defined() ? scale.numel() : 0, axis, op);
  detail::check_positive(scale, op, "scale");
  const DType acc = acc_dtype(x_in.dtype());
  AffineParams p{detail::prepare_param(scale, x_in, l, acc, op, "scale"),
                 prepare_zero_point(zero_point, x_in, l, range, op), range};
  return fused_quantize<AffineFakeQuantOp>(op, x_in, l, p, {},
                                           {&AffineParams::scale, &AffineParams::zero_point});
}

Tensor fake_quantize(const Tensor& x, double scale, int64_t zero_point, QuantRange range) {
  LOWBIT_CHECK(scale > 0.0 && std::isfinite(scale),
               "fake_quantize: scale must be positive and finite, got ", scale);
  check_input(x, "fake_quantize");
  return fake_quantize(x, full({1}, scale, TensorOptions(DType::f32, x.device())),
                       full({1}, double(zero_point), TensorOptions(DType::i32, x.device())), range,
                       0);
}

namespace {

// LSQ and LSQ+ share everything but the op and the offset.
template <template <typename> class Op>
Tensor lsq_common(const char* op, const Tensor& x_in, const Tensor& scale, const Tensor& offset,
                  QuantRange range, double grad_scale, int64_t axis) {
  check_input(x_in, op);
  check_range(range, op);
  LOWBIT_CHECK(std::isfinite(grad_scale), op, ": grad_scale must be finite, got ", grad_scale);
  const bool has_offset = Op<float>::kTerms == 2;
  const ChannelLayout l = detail::param_layout(x_in, scale.defined() ? scale.numel() : 0, axis, op);
  detail::check_positive(scale, op, "scale");
  const DType acc = acc_dtype(x_in.dtype());
  LsqParams p;
  p.scale = detail::prepare_param(scale, x_in, l, acc, op, "scale");
  if (has_offset) p.offset = detail::prepare_param(offset, x_in, l, acc, op, "offset");
  p.range = range;
  p.grad_scale = grad_scale;
  std::vector<Tensor> learned{scale};         // term 0: dL/ds
  if (has_offset) learned.push_back(offset);  // term 1 (LSQ+): dL/dbeta
  return fused_quantize<Op>(op, x_in, l, p, learned, {&LsqParams::scale, &LsqParams::offset});
}

}  // namespace

Tensor lsq_quantize(const Tensor& x, const Tensor& scale, QuantRange range, double grad_scale,
                    int64_t axis) {
  return lsq_common<LsqOp>("lsq_quantize", x, scale, Tensor(), range, grad_scale, axis);
}

Tensor lsq_plus_quantize(const Tensor& x, const Tensor& scale, const Tensor& offset,
                         QuantRange range, double grad_scale, int64_t axis) {
  return lsq_common<LsqPlusOp>("lsq_plus_quantize", x, scale, offset, range, grad_scale, axis);
}

std::pair<Tensor, Tensor> calc_qparams(const Tensor& min_val, const Tensor& max_val,
                                       QuantRange range, bool symmetric) {
  LOWBIT_CHECK(min_val.defined() && max_val.defined(), "calc_qparams: min_val is ",
               min_val.defined() ? "defined" : "undefined", " and max_val is ",
               max_val.defined() ? "defined" : "undefined", "; want two tensors of one size");
  LOWBIT_CHECK(min_val.numel() == max_val.numel() && min_val.device() == max_val.device(),
               "calc_qparams: min_val ", min_val.shape(), " on ", min_val.device(), " and max_val ",
               max_val.shape(), " on ", max_val.device(),
               " must have the same number of elements and device");
  check_range(range, "calc_qparams");
  autograd::NoGradGuard guard;
  const Device dev = min_val.device();
  const int64_t c = min_val.numel();
  CalcQParamsArgs a;
  a.min_val = min_val.detach().reshape({c}).to(DType::f32).contiguous();
  a.max_val = max_val.detach().reshape({c}).to(DType::f32).contiguous();
  a.scale = empty({c}, TensorOptions(DType::f32, dev));
  a.zero_point = empty({c}, TensorOptions(DType::i32, dev));
  a.range = range;
  a.symmetric = symmetric;
  channel_map<CalcQParamsOp>(dev, c, a);
  return {a.scale, a.zero_point};
}

}  // namespace lowbit::quant
