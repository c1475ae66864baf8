// Elementwise ops: unary (with scalar parameters), binary with broadcasting and dtype promotion,
// comparisons, where, copy/cast and fill; their CPU kernels and their backward formulas. The
// math is the functors of core/math.h; the CUDA twins are in cuda/elementwise_ops.cu.
#include <algorithm>
#include <cmath>

#include "core/autograd.h"
#include "core/kernels.h"
#include "core/ops.h"
#include "core/parallel.h"

namespace lowbit {

namespace core {

LOWBIT_DEFINE_STUB(unary_stub);
LOWBIT_DEFINE_STUB(binary_stub);
LOWBIT_DEFINE_STUB(where_stub);
LOWBIT_DEFINE_STUB(copy_stub);
LOWBIT_DEFINE_STUB(fill_stub);

namespace {

// Runs f(offsets) over n elements; the contiguous case is a plain indexed loop the compiler can
// vectorise, the strided case walks the OffsetCalc.
template <int N, typename F>
void strided_loop(const OffsetCalc<N>& calc, int64_t n, const F& f) {
  if (calc.contiguous) {
    for_each_chunk(n, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        int64_t off[N];
        for (int a = 0; a < N; ++a) off[a] = calc.base[a] + i;
        f(off);
      }
    });
    return;
  }
  // Strided: walk rows of the innermost dim, so the div/mod of OffsetCalc::get runs once per
  // row, not per element (a per-channel scale broadcast over NHWC rows, a strided copy).
  const int64_t inner = calc.ndim > 0 ? calc.sizes[calc.ndim - 1] : 1;
  if (inner >= 4) {
    int64_t step[N];
    for (int a = 0; a < N; ++a) step[a] = calc.strides[a][calc.ndim - 1];
    for_each_chunk(
        n / inner,
        [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) {
            int64_t row[N], off[N];
            calc.get(r * inner, row);
            for (int64_t j = 0; j < inner; ++j) {
              for (int a = 0; a < N; ++a) off[a] = row[a] + j * step[a];
              f(off);
            }
          }
        },
        std::max<int64_t>(1, kParallelGrain / inner));
    return;
  }
  for_each_index(n, [&](int64_t i) {
    int64_t off[N];
    calc.get(i, off);
    f(off);
  });
}

template <typename Op, typename scalar_t>
void unary_loop(const Tensor& out, const Tensor& in, const UnaryParams& p) {
  using acc_t = opmath_t<scalar_t>;
  const Tensor* ts[2] = {&out, &in};
  const auto calc = offset_calc_for<2>(ts);
  scalar_t* o = static_cast<scalar_t*>(out.raw_data());
  const scalar_t* x = static_cast<const scalar_t*>(in.raw_data());
  const Op op;
  strided_loop(calc, out.numel(),
               [&](const int64_t* off) { o[off[0]] = scalar_t(op(acc_t(x[off[1]]), p)); });
}

template <typename Op>
void unary_all_cpu(const Tensor& out, const Tensor& in, const UnaryParams& p) {
  LOWBIT_DISPATCH_ALL(out.dtype(), "unary op", [&] { unary_loop<Op, scalar_t>(out, in, p); });
}
template <typename Op>
void unary_float_cpu(const Tensor& out, const Tensor& in, const UnaryParams& p) {
  LOWBIT_DISPATCH_FLOATING(out.dtype(), "unary op", [&] { unary_loop<Op, scalar_t>(out, in, p); });
}

using UnaryKernel = void (*)(const Tensor&, const Tensor&, const UnaryParams&);
#define LOWBIT_ALL_ENTRY(name, F) &unary_all_cpu<F>,
#define LOWBIT_FLOAT_ENTRY(name, F) &unary_float_cpu<F>,
constexpr UnaryKernel kUnaryCpu[] = {LOWBIT_UNARY_OPS_ALL(LOWBIT_ALL_ENTRY)
                                         LOWBIT_UNARY_OPS_FLOAT(LOWBIT_FLOAT_ENTRY)};
#undef LOWBIT_ALL_ENTRY
#undef LOWBIT_FLOAT_ENTRY

void unary_cpu(UnaryOp op, const Tensor& out, const Tensor& in, const UnaryParams& p) {
  kUnaryCpu[int(op)](out, in, p);
}

template <typename Op, typename in_t, typename out_t>
void binary_loop(const Tensor& out, const Tensor& a, const Tensor& b) {
  using acc_t = opmath_t<in_t>;
  const Tensor* ts[3] = {&out, &a, &b};
  const auto calc = offset_calc_for<3>(ts);
  out_t* o = static_cast<out_t*>(out.raw_data());
  const in_t* x = static_cast<const in_t*>(a.raw_data());
  const in_t* y = static_cast<const in_t*>(b.raw_data());
  const Op op;
  strided_loop(calc, out.numel(), [&](const int64_t* off) {
    o[off[0]] = out_t(op(acc_t(x[off[1]]), acc_t(y[off[2]])));
  });
}

template <typename Op>
void binary_arith_cpu(const Tensor& out, const Tensor& a, const Tensor& b) {
  LOWBIT_DISPATCH_ALL(a.dtype(), "binary op",
                      [&] { binary_loop<Op, scalar_t, scalar_t>(out, a, b); });
}
template <typename Op>
void binary_compare_cpu(const Tensor& out, const Tensor& a, const Tensor& b) {
  LOWBIT_DISPATCH_ALL(a.dtype(), "comparison",
                      [&] { binary_loop<Op, scalar_t, uint8_t>(out, a, b); });
}

using BinaryKernel = void (*)(const Tensor&, const Tensor&, const Tensor&);
#define LOWBIT_ARITH_ENTRY(name, F) &binary_arith_cpu<F>,
#define LOWBIT_COMPARE_ENTRY(name, F) &binary_compare_cpu<F>,
constexpr BinaryKernel kBinaryCpu[] = {LOWBIT_BINARY_OPS(LOWBIT_ARITH_ENTRY)
                                           LOWBIT_COMPARE_OPS(LOWBIT_COMPARE_ENTRY)};
#undef LOWBIT_ARITH_ENTRY
#undef LOWBIT_COMPARE_ENTRY

void binary_cpu(BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b) {
  kBinaryCpu[int(op)](out, a, b);
}

void where_cpu(const Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b) {
  LOWBIT_DISPATCH_ALL(out.dtype(), "where", [&] {
    const Tensor* ts[4] = {&out, &cond, &a, &b};
    const auto calc = offset_calc_for<4>(ts);
    scalar_t* o = static_cast<scalar_t*>(out.raw_data());
    const uint8_t* c = static_cast<const uint8_t*>(cond.raw_data());
    const scalar_t* x = static_cast<const scalar_t*>(a.raw_data());
    const scalar_t* y = static_cast<const scalar_t*>(b.raw_data());
    strided_loop(calc, out.numel(),
                 [&](const int64_t* off) { o[off[0]] = c[off[1]] ? x[off[2]] : y[off[3]]; });
  });
}

template <typename dst_t>
void copy_to(const Tensor& dst, const Tensor& src) {
  LOWBIT_DISPATCH_ALL(src.dtype(), "copy", [&] {
    const Tensor* ts[2] = {&dst, &src};
    const auto calc = offset_calc_for<2>(ts);
    dst_t* o = static_cast<dst_t*>(dst.raw_data());
    const scalar_t* x = static_cast<const scalar_t*>(src.raw_data());
    strided_loop(calc, dst.numel(),
                 [&](const int64_t* off) { o[off[0]] = convert<dst_t>(x[off[1]]); });
  });
}

void copy_cpu(const Tensor& dst, const Tensor& src) {
  LOWBIT_DISPATCH_ALL(dst.dtype(), "copy", [&] { copy_to<scalar_t>(dst, src); });
}

void fill_cpu(const Tensor& dst, double value) {
  LOWBIT_DISPATCH_ALL(dst.dtype(), "fill", [&] {
    const scalar_t v = convert<scalar_t>(value);
    const Tensor* ts[1] = {&dst};
    const auto calc = offset_calc_for<1>(ts);
    scalar_t* o = static_cast<scalar_t*>(dst.raw_data());
    strided_loop(calc, dst.numel(), [&](const int64_t* off) { o[off[0]] = v; });
  });
}

}  // namespace

LOWBIT_REGISTER_KERNEL(unary_stub, cpu, unary_cpu);
LOWBIT_REGISTER_KERNEL(binary_stub, cpu, binary_cpu);
LOWBIT_REGISTER_KERNEL(where_stub, cpu, where_cpu);
LOWBIT_REGISTER_KERNEL(copy_stub, cpu, copy_cpu);
LOWBIT_REGISTER_KERNEL(fill_stub, cpu, fill_cpu);

}  // namespace core

// ---------------------------------------------------------------------------- ops

using core::BinaryOp;
using core::UnaryOp;
using core::UnaryParams;

namespace {

const char* unary_name(UnaryOp op) {
  static const char* kNames[] = {
#define LOWBIT_NAME_ENTRY(name, F) #name,
      LOWBIT_UNARY_OPS_ALL(LOWBIT_NAME_ENTRY) LOWBIT_UNARY_OPS_FLOAT(LOWBIT_NAME_ENTRY)
#undef LOWBIT_NAME_ENTRY
  };
  return kNames[int(op)];
}

const char* binary_name(BinaryOp op) {
  static const char* kNames[] = {
#define LOWBIT_NAME_ENTRY(name, F) #name,
      LOWBIT_BINARY_OPS(LOWBIT_NAME_ENTRY) LOWBIT_COMPARE_OPS(LOWBIT_NAME_ENTRY)
#undef LOWBIT_NAME_ENTRY
  };
  return kNames[int(op)];
}

void check_defined(const Tensor& t, const char* op) {
  LOWBIT_CHECK(t.defined(), op, ": undefined tensor argument");
}

// Runs a unary kernel, no autograd.
Tensor unary_raw(UnaryOp op, const Tensor& x_in, UnaryParams p = {}) {
  check_defined(x_in, unary_name(op));
  Tensor x = x_in;
  // An integer tensor with a non-integral scalar (x * 0.5, pow(x, 0.5), clamp(x, 0, 2.5))
  // computes in f32, as PyTorch promotes an int tensor with a float scalar: the kernels convert
  // the scalar to the tensor's type, which would silently turn x / 2 into x * 0.
  const bool scalar_op = op == UnaryOp::add_scalar || op == UnaryOp::mul_scalar ||
                         op == UnaryOp::pow_scalar || op == UnaryOp::clamp;
  const bool integral_scalars = std::trunc(p.a) == p.a && std::trunc(p.b) == p.b;
  if ((core::is_float_only(op) || (scalar_op && !integral_scalars)) && !is_floating(x.dtype())) {
    x = x.detach().to(DType::f32);
  }
  Tensor out = empty(x.shape(), TensorOptions(x.dtype(), x.device()));
  if (out.numel() > 0) core::unary_stub(x.device(), op, out, x, p);
  return out;
}

void check_same_device(const Tensor& a, const Tensor& b, const char* op) {
  LOWBIT_CHECK(a.device() == b.device(), op, ": tensors on different devices, ", a.device(),
               " and ", b.device());
}

Tensor binary_raw(BinaryOp op, const Tensor& a_in, const Tensor& b_in) {
  const char* name = binary_name(op);
  check_defined(a_in, name);
  check_defined(b_in, name);
  check_same_device(a_in, b_in, name);
  const Shape shape = broadcast_shapes(a_in.shape(), b_in.shape());
  DType t = promote_types(a_in.dtype(), b_in.dtype());
  if (op == BinaryOp::div && !is_floating(t)) t = DType::f32;  // true division, as PyTorch
  Tensor a = a_in.detach().to(t).expand(shape);
  Tensor b = b_in.detach().to(t).expand(shape);
  Tensor out = empty(shape, TensorOptions(core::is_compare(op) ? DType::u8 : t, a.device()));
  if (out.numel() > 0) core::binary_stub(a.device(), op, out, a, b);
  return out;
}

// The gradient for an input of shape/dtype `like` from a broadcast gradient.
Tensor reduce_grad(const Tensor& g, const Tensor& like) {
  return sum_to(g, like.shape()).to(like.dtype());
}

using autograd::SavedTensor;

Tensor unary_op(UnaryOp op, const Tensor& x, UnaryParams p,
                std::function<Tensor(const Tensor& g, const Tensor& x, const Tensor& y)> grad,
                bool save_x, bool save_y) {
  Tensor y = unary_raw(op, x, p);
  if (grad && autograd::any_requires_grad({x})) {
    const char* name = unary_name(op);
    SavedTensor sx = save_x ? SavedTensor(x, name) : SavedTensor();
    SavedTensor sy = save_y ? SavedTensor(y, name) : SavedTensor();
    autograd::record(name, {x}, y, [grad, sx, sy, x_dtype = x.dtype()](const Tensor& g) {
      return std::vector<Tensor>{grad(g, sx.unpack(), sy.unpack()).to(x_dtype)};
    });
  }
  return y;
}

}  // namespace

Shape broadcast_shapes(const Shape& a, const Shape& b) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    LOWBIT_CHECK(da == db || da == 1 || db == 1, "shapes ", a, " and ", b,
                 " cannot be broadcast together (dim ", i, ": ", da, " vs ", db, ")");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

Tensor sum_to(const Tensor& grad, const Shape& shape) {
  if (grad.shape() == shape) return grad;
  const int64_t lead = grad.dim() - int64_t(shape.size());
  LOWBIT_CHECK(lead >= 0, "sum_to: cannot reduce ", grad.shape(), " to ", shape);
  std::vector<int64_t> dims;
  for (int64_t i = 0; i < grad.dim(); ++i) {
    if (i < lead || (shape[size_t(i - lead)] == 1 && grad.shape()[size_t(i)] != 1))
      dims.push_back(i);
  }
  Tensor s = dims.empty() ? grad : sum(grad, dims, true);
  return s.reshape(shape);
}

// --- unary ops with their gradients ---
Tensor neg(const Tensor& x) {
  return unary_op(
      UnaryOp::neg, x, {}, [](const Tensor& g, const Tensor&, const Tensor&) { return neg(g); },
      false, false);
}
Tensor abs(const Tensor& x) {
  return unary_op(
      UnaryOp::abs, x, {},
      [](const Tensor& g, const Tensor& xs, const Tensor&) { return g * sign(xs); }, true, false);
}
Tensor sign(const Tensor& x) {
  return unary_op(
      UnaryOp::sign, x, {},
      [](const Tensor& g, const Tensor&, const Tensor&) { return zeros_like(g); }, false, false);
}
Tensor exp(const Tensor& x) {
  return unary_op(
      UnaryOp::exp, x, {}, [](const Tensor& g, const Tensor&, const Tensor& y) { return g * y; },
      false, true);
}
Tensor log(const Tensor& x) {
  return unary_op(
      UnaryOp::log, x, {}, [](const Tensor& g, const Tensor& xs, const Tensor&) { return g / xs; },
      true, false);
}
Tensor sqrt(const Tensor& x) {
  return unary_op(
      UnaryOp::sqrt, x, {},
      [](const Tensor& g, const Tensor&, const Tensor& y) { return g * 0.5 / y; }, false, true);
}
Tensor rsqrt(const Tensor& x) {
  return unary_op(
      UnaryOp::rsqrt, x, {},
      [](const Tensor& g, const Tensor&, const Tensor& y) { return g * (-0.5) * y * y * y; }, false,
      true);
}
Tensor square(const Tensor& x) {
  return unary_op(
      UnaryOp::square, x, {},
      [](const Tensor& g, const Tensor& xs, const Tensor&) { return g * xs * 2.0; }, true, false);
}
Tensor reciprocal(const Tensor& x) {
  return unary_op(
      UnaryOp::reciprocal, x, {},
      [](const Tensor& g, const Tensor&, const Tensor& y) { return -(g * y * y); }, false, true);
}
Tensor relu(const Tensor& x) {
  // One fused pass: the gradient where the output is positive.
  return unary_op(
      UnaryOp::relu, x, {},
      [](const Tensor& g, const Tensor&, const Tensor& y) {
        return binary_raw(BinaryOp::relu_grad, g, y);
      },
      false, true);
}
Tensor sigmoid(const Tensor& x) {
  return unary_op(
      UnaryOp::sigmoid, x, {},
      [](const Tensor& g, const Tensor&, const Tensor& y) { return g * y * (1.0 - y); }, false,
      true);
}
Tensor tanh(const Tensor& x) {
  return unary_op(
      UnaryOp::tanh, x, {},
      [](const Tensor& g, const Tensor&, const Tensor& y) { return g * (1.0 - y * y); }, false,
      true);
}
Tensor pow(const Tensor& x, double e) {
  return unary_op(
      UnaryOp::pow_scalar, x, {e, 0.0},
      [e](const Tensor& g, const Tensor& xs, const Tensor&) {
        // x^0 is constant: a zero gradient, not 0 * x^-1 (NaN at x = 0), as PyTorch.
        if (e == 0.0) return zeros_like(g);
        return g * pow(xs, e - 1.0) * e;
      },
      true, false);
}
Tensor clamp(const Tensor& x, double lo, double hi) {
  LOWBIT_CHECK(!(lo > hi), "clamp: lower bound ", lo, " above upper bound ", hi);
  return unary_op(
      UnaryOp::clamp, x, {lo, hi},
      [lo, hi](const Tensor& g, const Tensor& xs, const Tensor&) {
        // Gradient passes where lo <= x <= hi, as PyTorch's clamp.
        const TensorOptions o(xs.dtype(), xs.device());
        Tensor inside = mul(ge(xs, full({}, lo, o)), le(xs, full({}, hi, o)));
        return where(inside, g, zeros_like(g));
      },
      true, false);
}
Tensor add(const Tensor& x, double s) {
  return unary_op(
      UnaryOp::add_scalar, x, {s, 0.0},
      [](const Tensor& g, const Tensor&, const Tensor&) { return g; }, false, false);
}
Tensor mul(const Tensor& x, double s) {
  return unary_op(
      UnaryOp::mul_scalar, x, {s, 0.0},
      [s](const Tensor& g, const Tensor&, const Tensor&) { return mul(g, s); }, false, false);
}

// --- binary ops ---
namespace {
using BinaryGrad = std::function<std::vector<Tensor>(const Tensor& g, const Tensor& a,
                                                     const Tensor& b, const Tensor& y)>;
Tensor binary_op(BinaryOp op, const Tensor& a, const Tensor& b, const BinaryGrad& grad,
                 bool save_inputs, bool save_y) {
  Tensor y = binary_raw(op, a, b);
  if (grad && autograd::any_requires_grad({a, b})) {
    const char* name = binary_name(op);
    SavedTensor sa = save_inputs ? SavedTensor(a, name) : SavedTensor();
    SavedTensor sb = save_inputs ? SavedTensor(b, name) : SavedTensor();
    SavedTensor sy = save_y ? SavedTensor(y, name) : SavedTensor();
    Tensor a_meta = a.detach(), b_meta = b.detach();  // shapes and dtypes only
    autograd::record(name, {a, b}, y, [=](const Tensor& g) {
      std::vector<Tensor> gr = grad(g, sa.unpack(), sb.unpack(), sy.unpack());
      return std::vector<Tensor>{gr[0].defined() ? reduce_grad(gr[0], a_meta) : Tensor(),
                                 gr[1].defined() ? reduce_grad(gr[1], b_meta) : Tensor()};
    });
  }
  return y;
}
}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  return binary_op(
      BinaryOp::add, a, b,
      [](const Tensor& g, const Tensor&, const Tensor&, const Tensor&) {
        return std::vector<Tensor>{g, g};
      },
      false, false);
}
Tensor add_relu(const Tensor& a, const Tensor& b) {
  return binary_op(
      BinaryOp::add_relu, a, b,
      [](const Tensor& g, const Tensor&, const Tensor&, const Tensor& y) {
        const Tensor gy = binary_raw(BinaryOp::relu_grad, g, y);
        return std::vector<Tensor>{gy, gy};
      },
      false, true);
}
Tensor sub(const Tensor& a, const Tensor& b) {
  return binary_op(
      BinaryOp::sub, a, b,
      [](const Tensor& g, const Tensor&, const Tensor&, const Tensor&) {
        return std::vector<Tensor>{g, neg(g)};
      },
      false, false);
}
Tensor mul(const Tensor& a, const Tensor& b) {
  return binary_op(
      BinaryOp::mul, a, b,
      [](const Tensor& g, const Tensor& x, const Tensor& y, const Tensor&) {
        return std::vector<Tensor>{g * y, g * x};
      },
      true, false);
}
Tensor div(const Tensor& a, const Tensor& b) {
  return binary_op(
      BinaryOp::div, a, b,
      [](const Tensor& g, const Tensor& x, const Tensor& y, const Tensor&) {
        return std::vector<Tensor>{g / y, neg(g * x / (y * y))};
      },
      true, false);
}
Tensor pow(const Tensor& a, const Tensor& b) {
  return binary_op(
      BinaryOp::pow, a, b,
      [](const Tensor& g, const Tensor& x, const Tensor& e, const Tensor& y) {
        // As PyTorch: where e == 0 the base gradient is 0 (not 0 * x^-1, NaN at x = 0), and where
        // x == 0 with e >= 0 the exponent gradient is 0 (not 0 * log(0), NaN).
        const Tensor zero = zeros({}, TensorOptions(g.dtype(), g.device()));
        Tensor gx = where(eq(e, zero), zero, g * e * pow(x, e - 1.0));
        Tensor g_exp = where(mul(eq(x, zero), ge(e, zero)), zero, g * y * log(x));
        return std::vector<Tensor>{gx, g_exp};
      },
      true, true);
}
namespace {
// Ties split the gradient evenly, as PyTorch's maximum/minimum.
std::vector<Tensor> extreme_grad(const Tensor& g, const Tensor& x, const Tensor& y, bool max) {
  const Tensor half = g * 0.5;
  const Tensor zero = zeros_like(g);
  Tensor gx = where(eq(x, y), half, where(max ? gt(x, y) : lt(x, y), g, zero));
  Tensor gy = where(eq(x, y), half, where(max ? lt(x, y) : gt(x, y), g, zero));
  return {gx, gy};
}
}  // namespace
Tensor maximum(const Tensor& a, const Tensor& b) {
  return binary_op(
      BinaryOp::maximum, a, b,
      [](const Tensor& g, const Tensor& x, const Tensor& y, const Tensor&) {
        return extreme_grad(g, x, y, true);
      },
      true, false);
}
Tensor minimum(const Tensor& a, const Tensor& b) {
  return binary_op(
      BinaryOp::minimum, a, b,
      [](const Tensor& g, const Tensor& x, const Tensor& y, const Tensor&) {
        return extreme_grad(g, x, y, false);
      },
      true, false);
}
Tensor eq(const Tensor& a, const Tensor& b) { return binary_raw(BinaryOp::eq, a, b); }
Tensor ne(const Tensor& a, const Tensor& b) { return binary_raw(BinaryOp::ne, a, b); }
Tensor lt(const Tensor& a, const Tensor& b) { return binary_raw(BinaryOp::lt, a, b); }
Tensor le(const Tensor& a, const Tensor& b) { return binary_raw(BinaryOp::le, a, b); }
Tensor gt(const Tensor& a, const Tensor& b) { return binary_raw(BinaryOp::gt, a, b); }
Tensor ge(const Tensor& a, const Tensor& b) { return binary_raw(BinaryOp::ge, a, b); }

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_defined(cond, "where");
  check_defined(a, "where");
  check_defined(b, "where");
  check_same_device(cond, a, "where");
  check_same_device(a, b, "where");
  LOWBIT_CHECK(cond.dtype() == DType::u8,
               "where: condition must be u8 (as comparisons return), got ", cond.dtype());
  const Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape()), b.shape());
  const DType t = promote_types(a.dtype(), b.dtype());
  Tensor c = cond.detach().expand(shape);
  Tensor x = a.detach().to(t).expand(shape);
  Tensor y = b.detach().to(t).expand(shape);
  Tensor out = empty(shape, TensorOptions(t, a.device()));
  if (out.numel() > 0) core::where_stub(a.device(), out, c, x, y);
  if (autograd::any_requires_grad({a, b})) {
    SavedTensor sc(cond, "where");
    Tensor a_meta = a.detach(), b_meta = b.detach();
    autograd::record("where", {a, b}, out, [sc, a_meta, b_meta](const Tensor& g) {
      Tensor c2 = sc.unpack();
      Tensor zero = zeros({}, TensorOptions(g.dtype(), g.device()));
      return std::vector<Tensor>{reduce_grad(where(c2, g, zero), a_meta),
                                 reduce_grad(where(c2, zero, g), b_meta)};
    });
  }
  return out;
}

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator+(const Tensor& a, double s) { return add(a, s); }
Tensor operator-(const Tensor& a, double s) { return add(a, -s); }
Tensor operator*(const Tensor& a, double s) { return mul(a, s); }
Tensor operator/(const Tensor& a, double s) { return mul(a, 1.0 / s); }
Tensor operator+(double s, const Tensor& a) { return add(a, s); }
Tensor operator-(double s, const Tensor& a) { return add(neg(a), s); }
Tensor operator*(double s, const Tensor& a) { return mul(a, s); }

Tensor& add_(Tensor& self, const Tensor& other, double alpha) {
  LOWBIT_CHECK(!(autograd::grad_enabled() && self.requires_grad()),
               "add_: in-place modification of a tensor that requires grad; use NoGradGuard");
  check_same_device(self, other, "add_");
  Tensor o = other.detach();
  if (alpha != 1.0) o = mul(o, alpha);
  o = o.to(self.dtype()).expand(self.shape());
  if (self.numel() > 0) core::binary_stub(self.device(), BinaryOp::add, self, self, o);
  self.storage()->bump_version();
  return self;
}

Tensor& mul_(Tensor& self, double s) {
  LOWBIT_CHECK(!(autograd::grad_enabled() && self.requires_grad()),
               "mul_: in-place modification of a tensor that requires grad; use NoGradGuard");
  if (self.numel() > 0)
    core::unary_stub(self.device(), UnaryOp::mul_scalar, self, self, UnaryParams{s, 0.0});
  self.storage()->bump_version();
  return self;
}

Tensor cast(const Tensor& x, DType dtype) { return x.to(dtype); }

bool allclose(const Tensor& a, const Tensor& b, double rtol, double atol) {
  if (a.shape() != b.shape()) return false;
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i]) != std::isnan(y[i])) return false;
    if (std::isnan(x[i])) continue;
    if (!(std::fabs(x[i] - y[i]) <= atol + rtol * std::fabs(y[i]))) return false;
  }
  return true;
}

}  // namespace lowbit
