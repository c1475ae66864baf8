// Scalar math shared by the CPU and CUDA kernels: overloads that call the C library on the host
// and CUDA's math library on the device, plus the elementwise functors of core/ops.h. Each op
// is written once here; the backends only differ in how they launch it.
#pragma once

#include <math.h>

#include <cstdint>
#include <type_traits>

#include "core/hd.h"

namespace lowbit::math {

LOWBIT_HD float exp(float x) { return ::expf(x); }
LOWBIT_HD double exp(double x) { return ::exp(x); }
LOWBIT_HD float log(float x) { return ::logf(x); }
LOWBIT_HD double log(double x) { return ::log(x); }
LOWBIT_HD float sqrt(float x) { return ::sqrtf(x); }
LOWBIT_HD double sqrt(double x) { return ::sqrt(x); }
LOWBIT_HD float tanh(float x) { return ::tanhf(x); }
LOWBIT_HD double tanh(double x) { return ::tanh(x); }
LOWBIT_HD float pow(float x, float y) { return ::powf(x, y); }
LOWBIT_HD double pow(double x, double y) { return ::pow(x, y); }
LOWBIT_HD float fabs(float x) { return ::fabsf(x); }
LOWBIT_HD double fabs(double x) { return ::fabs(x); }
LOWBIT_HD float nearbyint(float x) { return ::rintf(x); }  // half to even (default rounding)
LOWBIT_HD double nearbyint(double x) { return ::rint(x); }
// x < 0 without a pointless-comparison warning for unsigned types.
template <typename T>
LOWBIT_HD bool is_negative(T x) {
  if constexpr (std::is_unsigned_v<T>) {
    (void)x;
    return false;
  } else {
    return x < T(0);
  }
}

template <typename T>
LOWBIT_HD T pow(T x, T y) {  // integers: repeated squaring, negative exponents give 0 (or 1)
  if (is_negative(y)) return (x == T(1)) ? T(1) : (x == T(-1) ? ((y & 1) ? T(-1) : T(1)) : T(0));
  T r = 1;
  while (y) {
    if (y & 1) r *= x;
    x *= x;
    y >>= 1;
  }
  return r;
}

}  // namespace lowbit::math

namespace lowbit::core {

// Scalar parameters of the unary ops (clamp bounds, exponent, scalar operand).
struct UnaryParams {
  double a = 0.0;
  double b = 0.0;
};

// T below is the op-math type: float for f32/bf16/f16, double, or an integer type.
#define LOWBIT_UNARY_FUNCTOR(Name, expr)                      \
  struct Name {                                               \
    template <typename T>                                     \
    LOWBIT_HD T operator()(T x, const UnaryParams& p) const { \
      (void)p;                                                \
      return expr;                                            \
    }                                                         \
  };

LOWBIT_UNARY_FUNCTOR(NegOp, T(-x))
LOWBIT_UNARY_FUNCTOR(AbsOp, math::is_negative(x) ? T(-x) : x)
LOWBIT_UNARY_FUNCTOR(SignOp, T(int(T(0) < x) - int(math::is_negative(x))))
LOWBIT_UNARY_FUNCTOR(SquareOp, T(x* x))
LOWBIT_UNARY_FUNCTOR(ReluOp, math::is_negative(x) ? T(0) : x)  // NaN propagates, as PyTorch
LOWBIT_UNARY_FUNCTOR(ClampOp, x < T(p.a) ? T(p.a) : (x > T(p.b) ? T(p.b) : x))
LOWBIT_UNARY_FUNCTOR(AddScalarOp, T(x + T(p.a)))
LOWBIT_UNARY_FUNCTOR(MulScalarOp, T(x* T(p.a)))
LOWBIT_UNARY_FUNCTOR(PowScalarOp, math::pow(x, T(p.a)))
LOWBIT_UNARY_FUNCTOR(ExpOp, math::exp(x))
LOWBIT_UNARY_FUNCTOR(LogOp, math::log(x))
LOWBIT_UNARY_FUNCTOR(SqrtOp, math::sqrt(x))
LOWBIT_UNARY_FUNCTOR(RsqrtOp, T(1) / math::sqrt(x))
LOWBIT_UNARY_FUNCTOR(ReciprocalOp, T(1) / x)
LOWBIT_UNARY_FUNCTOR(SigmoidOp, T(1) / (T(1) + math::exp(-x)))
LOWBIT_UNARY_FUNCTOR(TanhOp, math::tanh(x))
#undef LOWBIT_UNARY_FUNCTOR

// X(enum name, functor): ops defined for every dtype, then ops for floating dtypes only.
#define LOWBIT_UNARY_OPS_ALL(X) \
  X(neg, NegOp)                 \
  X(abs, AbsOp)                 \
  X(sign, SignOp)               \
  X(square, SquareOp)           \
  X(relu, ReluOp)               \
  X(clamp, ClampOp)             \
  X(add_scalar, AddScalarOp)    \
  X(mul_scalar, MulScalarOp)    \
  X(pow_scalar, PowScalarOp)
#define LOWBIT_UNARY_OPS_FLOAT(X) \
  X(exp, ExpOp)                   \
  X(log, LogOp)                   \
  X(sqrt, SqrtOp)                 \
  X(rsqrt, RsqrtOp)               \
  X(reciprocal, ReciprocalOp)     \
  X(sigmoid, SigmoidOp)           \
  X(tanh, TanhOp)

#define LOWBIT_ENUM_ENTRY(name, functor) name,
enum class UnaryOp : int {
  LOWBIT_UNARY_OPS_ALL(LOWBIT_ENUM_ENTRY) LOWBIT_UNARY_OPS_FLOAT(LOWBIT_ENUM_ENTRY) kCount
};

#define LOWBIT_BINARY_FUNCTOR(Name, expr)    \
  struct Name {                              \
    template <typename T>                    \
    LOWBIT_HD T operator()(T a, T b) const { \
      return expr;                           \
    }                                        \
  };
LOWBIT_BINARY_FUNCTOR(AddOp, T(a + b))
LOWBIT_BINARY_FUNCTOR(SubOp, T(a - b))
LOWBIT_BINARY_FUNCTOR(MulOp, T(a* b))
LOWBIT_BINARY_FUNCTOR(DivOp, T(a / b))
LOWBIT_BINARY_FUNCTOR(PowOp, math::pow(a, b))
// NaN propagates as in PyTorch's maximum/minimum.
LOWBIT_BINARY_FUNCTOR(MaximumOp, (a != a) ? a : ((b != b) ? b : (a > b ? a : b)))
// The ReLU backward in one pass: the gradient a where the ReLU output b is positive.
LOWBIT_BINARY_FUNCTOR(ReluGradOp, b > T(0) ? a : T(0))
// relu(a + b) in one pass (a residual block's output), ReluOp on AddOp's sum. Rounding to the
// storage type is monotonic, so it equals relu(add(a, b)) (for 16-bit floats up to the sign of a
// zero when a tiny negative sum underflows); NaN propagates.
LOWBIT_BINARY_FUNCTOR(AddReluOp, ReluOp{}(T(a + b), UnaryParams{}))
LOWBIT_BINARY_FUNCTOR(MinimumOp, (a != a) ? a : ((b != b) ? b : (a < b ? a : b)))
#undef LOWBIT_BINARY_FUNCTOR

// Comparisons return 0 or 1 (stored as u8).
#define LOWBIT_COMPARE_FUNCTOR(Name, expr)         \
  struct Name {                                    \
    template <typename T>                          \
    LOWBIT_HD uint8_t operator()(T a, T b) const { \
      return (expr) ? 1 : 0;                       \
    }                                              \
  };
LOWBIT_COMPARE_FUNCTOR(EqOp, a == b)
LOWBIT_COMPARE_FUNCTOR(NeOp, a != b)
LOWBIT_COMPARE_FUNCTOR(LtOp, a < b)
LOWBIT_COMPARE_FUNCTOR(LeOp, a <= b)
LOWBIT_COMPARE_FUNCTOR(GtOp, a > b)
LOWBIT_COMPARE_FUNCTOR(GeOp, a >= b)
#undef LOWBIT_COMPARE_FUNCTOR

#define LOWBIT_BINARY_OPS(X) \
  X(add, AddOp)              \
  X(sub, SubOp)              \
  X(mul, MulOp)              \
  X(div, DivOp)              \
  X(pow, PowOp)              \
  X(maximum, MaximumOp)      \
  X(minimum, MinimumOp)      \
  X(relu_grad, ReluGradOp)   \
  X(add_relu, AddReluOp)
#define LOWBIT_COMPARE_OPS(X) \
  X(eq, EqOp)                 \
  X(ne, NeOp)                 \
  X(lt, LtOp)                 \
  X(le, LeOp)                 \
  X(gt, GtOp)                 \
  X(ge, GeOp)

enum class BinaryOp : int {
  LOWBIT_BINARY_OPS(LOWBIT_ENUM_ENTRY) LOWBIT_COMPARE_OPS(LOWBIT_ENUM_ENTRY) kCount
};
#undef LOWBIT_ENUM_ENTRY

inline bool is_compare(BinaryOp op) { return int(op) >= int(BinaryOp::eq); }
inline bool is_float_only(UnaryOp op) { return int(op) >= int(UnaryOp::exp); }

}  // namespace lowbit::core
