// The fused elementwise machinery every quantizer kernel runs on. A quantizer's math is one "op":
// a class template over the math type A (float; double for f64 tensors) whose LOWBIT_HD members
// give, for one element, the forward value and, in one call, the input gradient and the
// per-channel parameter-gradient terms (LSQ's d/ds, PACT's d/dalpha, ...). quant/fused_cpu.h runs
// an op over a tensor on the CPU (include it from .cpp files), quant/fused.cuh on CUDA (from .cu
// files; nvcc's host pass is not given OpenMP). Which one runs is chosen by a DispatchStub per op
// (FusedKernels<Op>), filled by LOWBIT_REGISTER_FUSED_OP in the op's .cpp (CPU) and in a .cu
// (CUDA) that the build generates from the .cpp's line (cmake/LowbitQuantizers.cmake), so a plugin
// adds a kernel without touching this file, and a CPU-only build answers a CUDA tensor with
// "built without CUDA". The autograd glue around an op is fused_quantize (quant/fused_autograd.h).
//
// Layout: the input is contiguous and viewed as (outer, channels, inner), the channel being the
// quantization axis; per-tensor is channels == 1. Parameter-gradient terms are reduced per channel
// deterministically: the CPU sums fixed index blocks (their number depends on the sizes only, not
// on the thread count) in double and adds the block partials in order; the GPU writes per-block
// partials to scratch and one small pass adds them in order. No float atomics anywhere.
//
// An op binds a channel's parameters once (channel(c): loads, 1/s, logs), and the per-element
// members work on that small struct, so CPU loops over a run of one channel keep everything in
// registers and vectorise. See quant/fake_quant.h for real ops:
//   template <typename A> struct MyOp {
//     using Params = MyParams;                      // host-side tensors and numbers
//     static constexpr const char* kName = "my_op";
//     static constexpr int kTerms = 1;              // parameter-gradient terms, 0..kMaxTerms
//     const A* alpha;                               // device or host pointers, plain numbers
//     explicit MyOp(const MyParams& p);             // host only: takes the pointers
//     struct Channel {                              // one channel's parameters, bound
//       A a;
//       LOWBIT_HD A forward(A x) const;
//       LOWBIT_HD A backward(A x, A dy, A* terms) const;  // returns dx, fills kTerms terms
//     };
//     LOWBIT_HD Channel channel(int64_t c) const;
//     LOWBIT_HD A finish(int k, int64_t c, double sum) const;  // final gradient of term k
//   };
#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include "core/dispatch.h"
#include "core/dtype.h"
#include "core/hd.h"
#include "core/math.h"
#include "core/tensor.h"

namespace lowbit::quant {

constexpr int kMaxTerms = 3;  // DSQ: d/dl, d/du, d/dalpha

// Math type of a storage type: double for f64 tensors, float otherwise (docs/methods.md,
// "Notation": fp32).
template <typename T>
using quant_acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;
inline DType acc_dtype(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

// A contiguous tensor as (outer, channels, inner) around the quantization axis.
struct ChannelLayout {
  int64_t outer = 1;
  int64_t channels = 1;
  int64_t inner = 1;
  LOWBIT_HD int64_t numel() const { return outer * channels * inner; }
  LOWBIT_HD int64_t channel_of(int64_t i) const {
    return channels == 1 ? 0 : (i / inner) % channels;
  }
};

// Per-tensor (channels == 1: the whole tensor) or per-channel along `axis` (negative counts from
// the end), in which case shape[axis] must equal `channels`. `op` names the caller in errors.
ChannelLayout channel_layout(const Shape& shape, int64_t axis, int64_t channels, const char* op);
// The axis (negative counts from the end) as a dimension index of `shape`, checked; `op` names the
// caller in errors.
int64_t checked_axis(const Shape& shape, int64_t axis, const char* op);
// {outer, channels, inner}: reshape a contiguous x to it and reduce over dims {0, 2} for
// per-channel statistics (keepdim gives (1, C, 1), which broadcasts back against it).
Shape layout_shape(const ChannelLayout& l);

// Scalar helpers the CUDA math library and libm both provide under these names.
namespace qmath {
LOWBIT_HD float floor(float x) { return ::floorf(x); }
LOWBIT_HD double floor(double x) { return ::floor(x); }
LOWBIT_HD float frexp(float x, int* e) { return ::frexpf(x, e); }
LOWBIT_HD double frexp(double x, int* e) { return ::frexp(x, e); }
LOWBIT_HD float ldexp(float x, int e) { return ::ldexpf(x, e); }
LOWBIT_HD double ldexp(double x, int e) { return ::ldexp(x, e); }
template <typename A>
LOWBIT_HD A clamp(A v, A lo, A hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}
// sign(v) = +1 for v >= 0, -1 otherwise (docs/methods.md, "Notation": sign(0) = +1).
template <typename A>
LOWBIT_HD A sign(A v) {
  return v >= A(0) ? A(1) : A(-1);
}
// round(x), half to even (docs/methods.md, "Notation"), bit-identical to rintf/rint under the
// default rounding mode. On the device that is one instruction. On x86-64 without SSE4.1 rintf is a
// libm call, which keeps the CPU loops from vectorising; adding and subtracting 2^23 (2^52 for
// double) to |x| rounds it to an integer, ties to even, for |x| < 2^23, and larger values are
// integers already.
template <typename A>
LOWBIT_HD A round_half_even(A x) {
#if defined(__CUDA_ARCH__)
  return math::nearbyint(x);
#else
  constexpr A kBig = std::is_same_v<A, float> ? A(8388608.0) : A(4503599627370496.0);
  const A a = math::fabs(x);
  const A r = std::copysign((a + kBig) - kBig, x);
  return a < kBig ? r : x;  // else integral, inf or NaN; a select, so loops vectorise
#endif
}
template <typename A>
LOWBIT_HD A quiet_nan() {
  return std::numeric_limits<A>::quiet_NaN();  // constexpr: usable in device code
}
}  // namespace qmath

// --- dispatch -------------------------------------------------------------------------------

// The entry points a stub holds, written once for both backends: dtype dispatch, then the
// launcher. Param tensors are already in the math dtype (acc_dtype of x's dtype).
template <typename Launch, template <typename> class Op>
void fused_forward_entry(const Tensor& x, const Tensor& y, const ChannelLayout& l,
                         const typename Op<float>::Params& p) {
  LOWBIT_DISPATCH_FLOATING(x.dtype(), Op<float>::kName, [&] {
    using A = quant_acc_t<scalar_t>;
    Launch::template forward<scalar_t>(x, y, l, Op<A>(p));
  });
}
template <typename Launch, template <typename> class Op>
void fused_backward_entry(const Tensor& x, const Tensor& dy, const Tensor& dx, const Tensor& grads,
                          const ChannelLayout& l, const typename Op<float>::Params& p) {
  LOWBIT_DISPATCH_FLOATING(x.dtype(), Op<float>::kName, [&] {
    using A = quant_acc_t<scalar_t>;
    Launch::template backward<scalar_t>(x, dy, dx, grads, l, Op<A>(p));
  });
}
template <typename Launch, typename Op>
void channel_entry(Device device, int64_t n, const typename Op::Params& p) {
  Launch::channels(device, n, Op(p));
}

// One forward and one backward stub per elementwise op, and one per per-channel op (a plain
// class with Params, kName and LOWBIT_HD operator()(i)). Function-local statics of inline
// functions: one object per op across every translation unit, constant-initialised, so
// registration order cannot matter.
template <template <typename> class Op>
struct FusedKernels {
  static_assert(Op<float>::kTerms >= 0 && Op<float>::kTerms <= kMaxTerms,
                "an op reduces 0 to kMaxTerms parameter-gradient terms");
  using Params = typename Op<float>::Params;
  using ForwardFn = void (*)(const Tensor& x, const Tensor& y, const ChannelLayout& l,
                             const Params& p);
  using BackwardFn = void (*)(const Tensor& x, const Tensor& dy, const Tensor& dx,
                              const Tensor& grads, const ChannelLayout& l, const Params& p);
  static core::DispatchStub<ForwardFn>& forward() {
    static core::DispatchStub<ForwardFn> stub{Op<float>::kName};
    return stub;
  }
  static core::DispatchStub<BackwardFn>& backward() {
    static core::DispatchStub<BackwardFn> stub{Op<float>::kName};
    return stub;
  }
};
template <typename Op>
struct ChannelKernels {
  using Fn = void (*)(Device device, int64_t n, const typename Op::Params& p);
  static core::DispatchStub<Fn>& run() {
    static core::DispatchStub<Fn> stub{Op::kName};
    return stub;
  }
};

// Runs op Op forward: y = Op(x) of x's dtype and shape. x contiguous, params in acc dtype.
template <template <typename> class Op>
Tensor fused_forward(const Tensor& x, const ChannelLayout& l, const typename Op<float>::Params& p) {
  Tensor y = empty(x.shape(), TensorOptions(x.dtype(), x.device()));
  if (x.numel() > 0) FusedKernels<Op>::forward()(x.device(), x, y, l, p);
  return y;
}
// Runs op Op backward. Returns dx (undefined unless want_dx) and, when want_grads, the
// parameter gradients (kTerms, C) in acc dtype (undefined otherwise).
template <template <typename> class Op>
std::pair<Tensor, Tensor> fused_backward(const Tensor& x, const Tensor& dy, const ChannelLayout& l,
                                         const typename Op<float>::Params& p, bool want_dx,
                                         bool want_grads) {
  Tensor dx, grads;
  if (want_dx) dx = empty(x.shape(), TensorOptions(x.dtype(), x.device()));
  if (want_grads && Op<float>::kTerms > 0) {
    grads = empty({Op<float>::kTerms, l.channels}, TensorOptions(acc_dtype(x.dtype()), x.device()));
  }
  if (x.numel() == 0) {
    if (grads.defined()) grads.zero_();
    return {dx, grads};
  }
  if (want_dx || grads.defined()) {
    FusedKernels<Op>::backward()(x.device(), x, dy, dx, grads, l, p);
  }
  return {dx, grads};
}
template <typename Op>
void channel_map(Device device, int64_t n, const typename Op::Params& p) {
  if (n > 0) ChannelKernels<Op>::run()(device, device, n, p);
}

}  // namespace lowbit::quant

// Registers the CPU (in the op's .cpp) or CUDA (in its .cu, after including quant/fused.cuh)
// kernels of an elementwise op template: LOWBIT_REGISTER_FUSED_OP(PactOp, cpu, CpuLaunch) after
// including quant/fused_cpu.h.
#define LOWBIT_REGISTER_FUSED_OP(Op, device_type, Launch)                                \
  static ::lowbit::core::StubRegistrar LOWBIT_REGISTER_CAT(lowbit_fused_fwd_, __LINE__)( \
      ::lowbit::quant::FusedKernels<Op>::forward(), ::lowbit::DeviceType::device_type,   \
      &::lowbit::quant::fused_forward_entry<::lowbit::quant::Launch, Op>);               \
  static ::lowbit::core::StubRegistrar LOWBIT_REGISTER_CAT(lowbit_fused_bwd_, __LINE__)( \
      ::lowbit::quant::FusedKernels<Op>::backward(), ::lowbit::DeviceType::device_type,  \
      &::lowbit::quant::fused_backward_entry<::lowbit::quant::Launch, Op>)
#define LOWBIT_REGISTER_CHANNEL_OP(Op, device_type, Launch)                               \
  static ::lowbit::core::StubRegistrar LOWBIT_REGISTER_CAT(lowbit_channel_op_, __LINE__)( \
      ::lowbit::quant::ChannelKernels<Op>::run(), ::lowbit::DeviceType::device_type,      \
      &::lowbit::quant::channel_entry<::lowbit::quant::Launch, Op>)
