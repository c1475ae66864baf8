// Reductions over any set of dims: the reduced dims are moved last and made contiguous, then
// each output element reduces one row. Sums accumulate in double (int64 for integers); the
// CUDA twin (cuda/reduce_ops.cu) does the same, so both backends are accurate to f32 rounding.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/autograd.h"
#include "core/kernels.h"
#include "core/ops.h"
#include "core/parallel.h"

namespace lowbit {

namespace core {

LOWBIT_DEFINE_STUB(reduce_stub);

namespace {

template <typename T>
bool is_nan(T v) {
  if constexpr (std::is_integral_v<T>) {
    (void)v;
    return false;
  } else {
    return std::isnan(double(v));
  }
}

// max/min of one long float row (an observer's range of a whole activation tensor) in
// parallel chunks: a NaN anywhere gives NaN, as the sequential scan; otherwise the extreme
// value. The chunks' extremes are combined in order with a strict comparison, so among equal
// values the first wins, as in the scan (only a -0.0/+0.0 tie inside a chunk may pick the
// other zero).
float extreme_of_row(const float* p, int64_t r, bool want_max) {
  const int64_t chunk = 16384, nchunks = (r + chunk - 1) / chunk;
  std::vector<float> best(static_cast<size_t>(nchunks));
  std::vector<char> nan(static_cast<size_t>(nchunks), 0);
  for_each_index(
      nchunks,
      [&](int64_t k) {
        const int64_t b = k * chunk, e = std::min(r, b + chunk);
        float v = p[b];
        bool any_nan = false;
        if (want_max) {
          for (int64_t j = b; j < e; ++j) {
            const float u = p[j];
            any_nan |= u != u;
            v = u > v ? u : v;
          }
        } else {
          for (int64_t j = b; j < e; ++j) {
            const float u = p[j];
            any_nan |= u != u;
            v = u < v ? u : v;
          }
        }
        best[size_t(k)] = v;
        nan[size_t(k)] = any_nan;
      },
      1);
  float v = best[0];
  for (int64_t k = 0; k < nchunks; ++k) {
    if (nan[size_t(k)]) return std::numeric_limits<float>::quiet_NaN();
    if (want_max ? best[size_t(k)] > v : best[size_t(k)] < v) v = best[size_t(k)];
  }
  return v;
}

template <typename scalar_t>
void reduce_rows(ReduceOp op, const Tensor& out, const Tensor& in) {
  const int64_t m = out.numel();
  const int64_t r = in.numel() / std::max<int64_t>(m, 1);
  const scalar_t* x = static_cast<const scalar_t*>(in.raw_data());
  if constexpr (std::is_same_v<scalar_t, float>) {
    if ((op == ReduceOp::max || op == ReduceOp::min) && m <= 4 && r >= 2 * kParallelGrain) {
      for (int64_t row = 0; row < m; ++row) {
        static_cast<float*>(out.raw_data())[row] =
            extreme_of_row(x + row * r, r, op == ReduceOp::max);
      }
      return;
    }
  }
  using acc_t = std::conditional_t<std::is_integral_v<scalar_t>, int64_t, double>;
  for_each_index(
      m,
      [&](int64_t row) {
        const scalar_t* p = x + row * r;
        if (op == ReduceOp::sum) {
          acc_t acc = 0;
          for (int64_t j = 0; j < r; ++j) acc += acc_t(opmath_t<scalar_t>(p[j]));
          static_cast<scalar_t*>(out.raw_data())[row] = convert<scalar_t>(acc);
          return;
        }
        const bool want_max = op == ReduceOp::max || op == ReduceOp::argmax;
        int64_t best = 0;
        double best_v = double(opmath_t<scalar_t>(p[0]));
        for (int64_t j = 1; j < r && !std::isnan(best_v); ++j) {
          const double v = double(opmath_t<scalar_t>(p[j]));
          if (std::isnan(v) || (want_max ? v > best_v : v < best_v)) {
            best = j;
            best_v = v;
          }
        }
        if (op == ReduceOp::argmax || op == ReduceOp::argmin) {
          static_cast<int64_t*>(out.raw_data())[row] = best;
        } else {
          static_cast<scalar_t*>(out.raw_data())[row] = p[best];
        }
      },
      std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(r, 1)));
}

void reduce_cpu(ReduceOp op, const Tensor& out, const Tensor& in) {
  LOWBIT_DISPATCH_ALL(in.dtype(), "reduce", [&] { reduce_rows<scalar_t>(op, out, in); });
}

}  // namespace

LOWBIT_REGISTER_KERNEL(reduce_stub, cpu, reduce_cpu);

}  // namespace core

namespace {

using core::ReduceOp;

struct ReducePlan {
  std::vector<int64_t> dims;  // sorted, unique, wrapped
  Shape keep_shape;           // output shape with keepdim
  Shape out_shape;            // output shape as requested
  int64_t rows = 1, cols = 1;
};

ReducePlan plan_reduce(const Tensor& x, const std::vector<int64_t>& dims_in, bool keepdim,
                       const char* op) {
  ReducePlan p;
  const int64_t n = x.dim();
  std::vector<bool> reduced(size_t(n), dims_in.empty());
  for (int64_t d : dims_in) {
    LOWBIT_CHECK(d >= -std::max<int64_t>(n, 1) && d < std::max<int64_t>(n, 1), op, ": dim ", d,
                 " out of range for shape ", x.shape());
    if (n == 0) continue;
    const int64_t w = d < 0 ? d + n : d;
    LOWBIT_CHECK(!reduced[size_t(w)] || dims_in.empty(), op, ": dim ", d, " repeated");
    reduced[size_t(w)] = true;
  }
  for (int64_t i = 0; i < n; ++i) {
    if (reduced[size_t(i)]) {
      p.dims.push_back(i);
      p.cols *= x.shape()[size_t(i)];
      p.keep_shape.push_back(1);
      if (keepdim) p.out_shape.push_back(1);
    } else {
      p.rows *= x.shape()[size_t(i)];
      p.keep_shape.push_back(x.shape()[size_t(i)]);
      p.out_shape.push_back(x.shape()[size_t(i)]);
    }
  }
  return p;
}

// x permuted so the reduced dims come last, contiguous, as (rows, cols).
Tensor as_rows(const Tensor& x, const ReducePlan& p) {
  std::vector<int64_t> perm;
  for (int64_t i = 0; i < x.dim(); ++i) {
    if (!std::binary_search(p.dims.begin(), p.dims.end(), i)) perm.push_back(i);
  }
  perm.insert(perm.end(), p.dims.begin(), p.dims.end());
  Tensor t = x.detach();
  if (x.dim() > 0) t = t.permute(perm);
  return t.contiguous().reshape({p.rows, p.cols});
}

Tensor reduce_raw(ReduceOp op, const Tensor& x, const ReducePlan& p, DType out_dtype,
                  const char* name) {
  LOWBIT_CHECK(x.defined(), name, ": undefined tensor");
  if (op != ReduceOp::sum) {
    LOWBIT_CHECK(p.cols > 0, name, ": cannot reduce over an empty dim of shape ", x.shape());
  }
  Tensor out = empty(p.out_shape, TensorOptions(out_dtype, x.device()));
  if (p.rows == 0) return out;
  if (p.cols == 0) return out.fill_(0.0);
  Tensor rows = as_rows(x, p);
  core::reduce_stub(x.device(), op, out.reshape({p.rows}), rows);
  return out;
}

}  // namespace

Tensor sum(const Tensor& x_in, const std::vector<int64_t>& dims, bool keepdim) {
  LOWBIT_CHECK(x_in.defined(), "sum: undefined tensor");
  Tensor x = is_floating(x_in.dtype()) ? x_in : x_in.detach().to(DType::i64);
  ReducePlan p = plan_reduce(x, dims, keepdim, "sum");
  Tensor out = reduce_raw(ReduceOp::sum, x, p, x.dtype(), "sum");
  if (autograd::any_requires_grad({x_in})) {
    Shape keep = p.keep_shape, in_shape = x_in.shape();
    autograd::record("sum", {x_in}, out, [keep, in_shape](const Tensor& g) {
      return std::vector<Tensor>{g.reshape(keep).expand(in_shape)};
    });
  }
  return out;
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  LOWBIT_CHECK(x.defined() && is_floating(x.dtype()), "mean: wants a floating tensor, got ",
               x.defined() ? dtype_name(x.dtype()) : "undefined");
  ReducePlan p = plan_reduce(x, dims, keepdim, "mean");
  return sum(x, dims, keepdim) * (1.0 / double(p.cols));
}

Tensor var(const Tensor& x, const std::vector<int64_t>& dims, bool unbiased, bool keepdim) {
  LOWBIT_CHECK(x.defined() && is_floating(x.dtype()), "var: wants a floating tensor, got ",
               x.defined() ? dtype_name(x.dtype()) : "undefined");
  ReducePlan p = plan_reduce(x, dims, keepdim, "var");
  const double denom = double(p.cols) - (unbiased ? 1.0 : 0.0);
  LOWBIT_CHECK(denom > 0, "var: ", p.cols, " element(s) per reduction are too few",
               unbiased ? " for the unbiased estimate" : "");
  Tensor diff = x - mean(x, dims, true);
  return sum(diff * diff, dims, keepdim) * (1.0 / denom);
}

namespace {
Tensor extreme(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim, bool max) {
  const char* name = max ? "amax" : "amin";
  ReducePlan p = plan_reduce(x, dims, keepdim, name);
  Tensor out = reduce_raw(max ? ReduceOp::max : ReduceOp::min, x, p, x.dtype(), name);
  if (autograd::any_requires_grad({x})) {
    autograd::SavedTensor sx(x, name), sy(out, name);
    Shape keep = p.keep_shape;
    std::vector<int64_t> rdims = p.dims;
    autograd::record(name, {x}, out, [sx, sy, keep, rdims](const Tensor& g) {
      // Ties share the gradient evenly, as PyTorch's amax/amin.
      Tensor xs = sx.unpack();
      Tensor hit = eq(xs, sy.unpack().reshape(keep)).to(g.dtype());
      Tensor count = sum(hit, rdims, true);
      return std::vector<Tensor>{hit * (g.reshape(keep) / count)};
    });
  }
  return out;
}
Tensor arg_extreme(const Tensor& x, int64_t dim, bool keepdim, bool max) {
  const char* name = max ? "argmax" : "argmin";
  ReducePlan p = plan_reduce(x, {dim}, keepdim, name);
  return reduce_raw(max ? ReduceOp::argmax : ReduceOp::argmin, x, p, DType::i64, name);
}
}  // namespace

Tensor amax(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return extreme(x, dims, keepdim, true);
}
Tensor amin(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return extreme(x, dims, keepdim, false);
}
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  return arg_extreme(x, dim, keepdim, true);
}
Tensor argmin(const Tensor& x, int64_t dim, bool keepdim) {
  return arg_extreme(x, dim, keepdim, false);
}

}  // namespace lowbit
