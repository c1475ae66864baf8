// Fused fake quantization: the uniform affine quantizer (docs/methods.md, "Uniform fake
// quantization"-2.2), its qparams from an observed range (2.3), and the learned-step-size
// quantizers LSQ (3.1) and LSQ+ (3.2), whose backward returns the input gradient and the
// scale/offset gradients from one pass (reduced in the same kernel, see quant/fused.h). The
// per-element math is written once below as LOWBIT_HD functions; fake_quant.cpp launches it on the
// CPU and registers the ops, whose CUDA registration is generated from those lines
// (cmake/LowbitQuantizers.cmake); the two agree bit for bit on the forward (fp32 math with inv_s
// = 1.0f / s; CUDA is built with --fmad=false so nvcc contracts no multiply-add the CPU does not).
//
// Shapes: x is any shape, f32/bf16/f16 (math in f32) or f64 (math in f64, for gradchecks).
// Parameters (scale, zero_point, offset) hold one element for per-tensor quantization, or
// x.size(axis) elements for per-channel quantization along `axis` (any axis, negative from the
// end). Activations are NHWC and weights KRSC, so weights are per-channel along axis 0.
#pragma once

#include <cstdint>

#include "core/hd.h"
#include "core/math.h"
#include "core/tensor.h"
#include "quant/fused.h"

namespace lowbit::quant {

// Integer code range for `bits` bits (docs/methods.md, "Notation"): signed -2^(b-1)..2^(b-1)-1,
// unsigned 0..2^b-1, signed narrow -(2^(b-1)-1)..2^(b-1)-1. InputError for bits outside 1..16, for
// signed 1-bit (codes {-1, 0}: docs/methods.md, "Few bits", use the binary quantizer) and
// narrow_range on an unsigned or 1-bit range.
struct QuantRange {
  int64_t qmin = 0;
  int64_t qmax = 0;
};
QuantRange quant_range(int64_t bits, bool is_signed, bool narrow_range = false);

// --- element math, shared by both backends ------------------------------------------------

// The code before the clamp, u = round(x * inv_s) + z, round half to even (docs/methods.md,
// "Uniform fake quantization").
template <typename A>
LOWBIT_HD A fake_quant_code(A x, A inv_s, A z) {
  return qmath::round_half_even(x * inv_s) + z;
}
// x_hat = (clamp(u, qmin, qmax) - z) * s, with inv_s = 1 / s computed once per channel.
template <typename A>
LOWBIT_HD A fake_quant_apply(A x, A s, A inv_s, A z, A qmin, A qmax) {
  const A q = qmath::clamp(fake_quant_code(x, inv_s, z), qmin, qmax);
  return (q - z) * s;
}
// A channel's scale as the kernels use it: NaN unless positive, so a bad scale gives NaN outputs
// and zero gradients (host-side checks reject such scales where they live on the host).
template <typename A>
LOWBIT_HD A checked_scale(A s) {
  return s > A(0) ? s : qmath::quiet_nan<A>();
}
// One element, for host-side users (the MSE observer): fake_quant_apply with a checked scale.
template <typename A>
LOWBIT_HD A fake_quant_value(A x, A s, A z, A qmin, A qmax) {
  const A sc = checked_scale(s);
  return fake_quant_apply(x, sc, A(1) / sc, z, qmin, qmax);
}

// Scale and zero-point from an observed range, PyTorch's _calculate_qparams (docs/methods.md,
// "Observers"), in fp32. An empty range (x_min > x_max: nothing observed yet, min +inf / max -inf)
// gives PyTorch's default (1, 0).
struct QParams {
  float scale = 1.0f;
  int32_t zero_point = 0;
};
constexpr float kQParamsEps = 1.1920929e-07f;  // fp32 machine epsilon
// The asymmetric zero-point for scale s of a range starting at x_min (docs/methods.md,
// "Observers"), in fp32: z = clamp(qmin - round(min(x_min, 0) / s), qmin, qmax).
LOWBIT_HD int32_t affine_zero_point(float x_min, float s, int64_t qmin, int64_t qmax) {
  const float mn = x_min < 0.0f ? x_min : 0.0f;  // the range always contains 0
  return int32_t(
      qmath::clamp(float(qmin) - qmath::round_half_even(mn / s), float(qmin), float(qmax)));
}
LOWBIT_HD QParams calc_qparams(float x_min, float x_max, int64_t qmin, int64_t qmax,
                               bool symmetric) {
  QParams out;
  if (!(x_min <= x_max)) return out;
  const float mn = x_min < 0.0f ? x_min : 0.0f;  // the range always contains 0
  const float mx = x_max > 0.0f ? x_max : 0.0f;
  if (symmetric) {
    const float a = -mn > mx ? -mn : mx;
    const float s = a / (float(qmax - qmin) / 2.0f);
    out.scale = s > kQParamsEps ? s : kQParamsEps;
    out.zero_point = qmin < 0 ? 0 : int32_t((qmin + qmax + 1) / 2);
    return out;
  }
  const float s0 = (mx - mn) / float(qmax - qmin);
  const float s = s0 > kQParamsEps ? s0 : kQParamsEps;
  out.scale = s;
  out.zero_point = affine_zero_point(x_min, s, qmin, qmax);
  return out;
}

// LSQ / LSQ+ (docs/methods.md, "LSQ" and "LSQ+") on u = (v - beta) * inv_s (LSQ: beta = 0, so u = v
// * inv_s).
template <typename A>
LOWBIT_HD A lsq_bar(A u, A qmin, A qmax) {  // v_bar = clamp(round(u), qmin, qmax)
  return qmath::clamp(qmath::round_half_even(u), qmin, qmax);
}
template <typename A>
LOWBIT_HD bool lsq_inside(A u, A qmin, A qmax) {  // strict, on the unrounded u
  return qmin < u && u < qmax;
}
template <typename A>
LOWBIT_HD A lsq_scale_grad(A u, A qmin, A qmax) {  // dv_hat/ds
  return u <= qmin ? qmin : (u >= qmax ? qmax : qmath::round_half_even(u) - u);
}

// --- ops of the fused machinery -------------------------------------------------------------

// Params hold the parameters in the math dtype (acc_dtype of x) on x's device, contiguous (C).
struct AffineParams {
  Tensor scale;       // (C) acc dtype
  Tensor zero_point;  // (C) i32
  QuantRange range;
};
template <typename A>
struct AffineFakeQuantOp {
  using Params = AffineParams;
  static constexpr const char* kName = "fake_quantize";
  static constexpr int kTerms = 0;
  const A* scale;
  const int32_t* zero_point;
  A qmin, qmax;
  explicit AffineFakeQuantOp(const Params& p)
      : scale(p.scale.data<A>()),
        zero_point(p.zero_point.data<int32_t>()),
        qmin(A(p.range.qmin)),
        qmax(A(p.range.qmax)) {}
  struct Channel {
    A s, inv_s, z, qmin, qmax;
    LOWBIT_HD A forward(A x) const { return fake_quant_apply(x, s, inv_s, z, qmin, qmax); }
    // The straight-through mask 1[qmin <= u <= qmax] on the rounded, pre-clamp code (2.2).
    LOWBIT_HD A backward(A x, A dy, A*) const {
      const A u = fake_quant_code(x, inv_s, z);
      return qmin <= u && u <= qmax ? dy : A(0);
    }
  };
  LOWBIT_HD Channel channel(int64_t c) const {
    const A s = checked_scale(scale[c]);
    return {s, A(1) / s, A(zero_point[c]), qmin, qmax};
  }
  LOWBIT_HD A finish(int, int64_t, double s) const { return A(s); }
};

struct LsqParams {
  Tensor scale;   // (C) acc dtype
  Tensor offset;  // (C) acc dtype; LSQ+ only
  QuantRange range;
  double grad_scale = 1.0;  // g of docs/methods.md, "LSQ", applied to every parameter gradient
};
// LSQ: terms {dL/ds}.
template <typename A>
struct LsqOp {
  using Params = LsqParams;
  static constexpr const char* kName = "lsq_quantize";
  static constexpr int kTerms = 1;
  const A* scale;
  A qmin, qmax;
  double g;
  explicit LsqOp(const Params& p)
      : scale(p.scale.data<A>()), qmin(A(p.range.qmin)), qmax(A(p.range.qmax)), g(p.grad_scale) {}
  struct Channel {
    A s, inv_s, qmin, qmax;
    LOWBIT_HD A forward(A x) const { return lsq_bar(x * inv_s, qmin, qmax) * s; }
    LOWBIT_HD A backward(A x, A dy, A* terms) const {
      const A u = x * inv_s;
      terms[0] = dy * lsq_scale_grad(u, qmin, qmax);
      return lsq_inside(u, qmin, qmax) ? dy : A(0);
    }
  };
  LOWBIT_HD Channel channel(int64_t c) const {
    const A s = checked_scale(scale[c]);
    return {s, A(1) / s, qmin, qmax};
  }
  LOWBIT_HD A finish(int, int64_t, double s) const { return A(s * g); }
};
// LSQ+: terms {dL/ds, dL/dbeta}.
template <typename A>
struct LsqPlusOp {
  using Params = LsqParams;
  static constexpr const char* kName = "lsq_plus_quantize";
  static constexpr int kTerms = 2;
  const A* scale;
  const A* offset;
  A qmin, qmax;
  double g;
  explicit LsqPlusOp(const Params& p)
      : scale(p.scale.data<A>()),
        offset(p.offset.data<A>()),
        qmin(A(p.range.qmin)),
        qmax(A(p.range.qmax)),
        g(p.grad_scale) {}
  struct Channel {
    A s, inv_s, beta, qmin, qmax;
    LOWBIT_HD A forward(A x) const { return lsq_bar((x - beta) * inv_s, qmin, qmax) * s + beta; }
    LOWBIT_HD A backward(A x, A dy, A* terms) const {
      const A u = (x - beta) * inv_s;
      const bool inside = lsq_inside(u, qmin, qmax);
      terms[0] = dy * lsq_scale_grad(u, qmin, qmax);
      terms[1] = inside ? A(0) : dy;
      return inside ? dy : A(0);
    }
  };
  LOWBIT_HD Channel channel(int64_t c) const {
    const A s = checked_scale(scale[c]);
    return {s, A(1) / s, offset[c], qmin, qmax};
  }
  LOWBIT_HD A finish(int, int64_t, double s) const { return A(s * g); }
};

// Per-channel qparams: (min_val, max_val) f32 (C) -> scale f32 (C), zero_point i32 (C).
struct CalcQParamsArgs {
  Tensor min_val, max_val, scale, zero_point;
  QuantRange range;
  bool symmetric = false;
};
struct CalcQParamsOp {
  using Params = CalcQParamsArgs;
  static constexpr const char* kName = "calc_qparams";
  const float* min_val;
  const float* max_val;
  float* scale;
  int32_t* zero_point;
  int64_t qmin, qmax;
  bool symmetric;
  explicit CalcQParamsOp(const Params& p)
      : min_val(p.min_val.data<float>()),
        max_val(p.max_val.data<float>()),
        scale(p.scale.data<float>()),
        zero_point(p.zero_point.data<int32_t>()),
        qmin(p.range.qmin),
        qmax(p.range.qmax),
        symmetric(p.symmetric) {}
  LOWBIT_HD void operator()(int64_t c) const {
    const QParams q = calc_qparams(min_val[c], max_val[c], qmin, qmax, symmetric);
    scale[c] = q.scale;
    zero_point[c] = q.zero_point;
  }
};

// --- differentiable ops -----------------------------------------------------------------------

// Uniform affine fake quantization (docs/methods.md, "Uniform fake quantization"), differentiable
// in x with the straight-through mask of 2.2 (scale and zero_point get no gradient). scale:
// floating, (1) or (C = x.size(axis)), positive; zero_point: integer or integral floats, same
// shape, within [qmin, qmax]. Returns x's dtype and shape. A non-positive scale is an error naming
// it where the scale is on the host; on CUDA it turns the affected outputs into NaN (checking would
// cost a device-to-host copy).
Tensor fake_quantize(const Tensor& x, const Tensor& scale, const Tensor& zero_point,
                     QuantRange range, int64_t axis = 0);
// Per-tensor form with host numbers.
Tensor fake_quantize(const Tensor& x, double scale, int64_t zero_point, QuantRange range);

// LSQ (docs/methods.md, "LSQ"): symmetric, z = 0, range [-Qn, Qp] = [qmin, qmax]. Differentiable in
// x and scale; dL/dscale = grad_scale * sum(dL/dx_hat * dx_hat/ds) over each scale's elements.
Tensor lsq_quantize(const Tensor& x, const Tensor& scale, QuantRange range, double grad_scale,
                    int64_t axis = 0);
// LSQ+ (docs/methods.md, "LSQ+"): x_hat = clamp(round((x - offset)/scale)) * scale + offset;
// differentiable in x, scale and offset, both parameter gradients multiplied by grad_scale.
Tensor lsq_plus_quantize(const Tensor& x, const Tensor& scale, const Tensor& offset,
                         QuantRange range, double grad_scale, int64_t axis = 0);
// The LSQ gradient scale g = 1 / sqrt(count * qp) (docs/methods.md, "LSQ"): count = elements
// sharing one scale (weights) or features per sample (activations), qp = qmax (at least 1).
double lsq_grad_scale(int64_t count, int64_t qp);

// Qparams from observed ranges (docs/methods.md, "Observers") on min_val's device: min_val, max_val
// f32 (C); returns {scale f32 (C), zero_point i32 (C)} as new tensors.
std::pair<Tensor, Tensor> calc_qparams(const Tensor& min_val, const Tensor& max_val,
                                       QuantRange range, bool symmetric);

namespace detail {
// Checks a parameter tensor against x and its layout, and returns it detached, flattened to
// (C), contiguous, in `dtype` on x's device. `what` names it in errors ("scale").
Tensor prepare_param(const Tensor& p, const Tensor& x, const ChannelLayout& l, DType dtype,
                     const char* op, const char* what);
// Errors naming the value and channel unless every element of a host tensor is positive and
// finite (CUDA tensors are not inspected: that would cost a device-to-host copy).
void check_positive(const Tensor& p, const char* op, const char* what);
// The layout of x for parameters with `numel` elements: per-tensor for 1, else along axis.
ChannelLayout param_layout(const Tensor& x, int64_t numel, int64_t axis, const char* op);
}  // namespace detail

}  // namespace lowbit::quant
