// softmax and log_softmax along any dim: the dim is moved last, each row is normalised with its
// maximum subtracted (float math, double for f64). Backward uses the saved output.
#include <algorithm>
#include <cmath>

#include "core/autograd.h"
#include "core/kernels.h"
#include "core/ops.h"
#include "core/parallel.h"

namespace lowbit {

namespace core {

LOWBIT_DEFINE_STUB(softmax_stub);
LOWBIT_DEFINE_STUB(softmax_backward_stub);

namespace {

template <typename scalar_t>
void softmax_rows(const Tensor& out, const Tensor& in, bool log) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t r = in.size(-1), m = in.numel() / std::max<int64_t>(r, 1);
  const scalar_t* x = static_cast<const scalar_t*>(in.raw_data());
  scalar_t* y = static_cast<scalar_t*>(out.raw_data());
  for_each_index(
      m,
      [&](int64_t row) {
        const scalar_t* p = x + row * r;
        scalar_t* q = y + row * r;
        acc_t mx = -INFINITY;
        for (int64_t j = 0; j < r; ++j) mx = std::max<acc_t>(mx, acc_t(p[j]));
        acc_t s = 0;
        for (int64_t j = 0; j < r; ++j) s += math::exp(acc_t(p[j]) - mx);
        if (log) {
          const acc_t ls = math::log(s);
          for (int64_t j = 0; j < r; ++j) q[j] = scalar_t(acc_t(p[j]) - mx - ls);
        } else {
          const acc_t inv = acc_t(1) / s;
          for (int64_t j = 0; j < r; ++j) q[j] = scalar_t(math::exp(acc_t(p[j]) - mx) * inv);
        }
      },
      std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(r, 1)));
}

template <typename scalar_t>
void softmax_backward_rows(const Tensor& grad_in, const Tensor& grad_out, const Tensor& out,
                           bool log) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t r = out.size(-1), m = out.numel() / std::max<int64_t>(r, 1);
  const scalar_t* g = static_cast<const scalar_t*>(grad_out.raw_data());
  const scalar_t* y = static_cast<const scalar_t*>(out.raw_data());
  scalar_t* gi = static_cast<scalar_t*>(grad_in.raw_data());
  for_each_index(
      m,
      [&](int64_t row) {
        const int64_t base = row * r;
        acc_t s = 0;
        for (int64_t j = 0; j < r; ++j) {
          s += log ? acc_t(g[base + j]) : acc_t(g[base + j]) * acc_t(y[base + j]);
        }
        for (int64_t j = 0; j < r; ++j) {
          const acc_t gj = acc_t(g[base + j]), yj = acc_t(y[base + j]);
          gi[base + j] = scalar_t(log ? gj - math::exp(yj) * s : yj * (gj - s));
        }
      },
      std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(r, 1)));
}

void softmax_cpu(const Tensor& out, const Tensor& in, bool log) {
  LOWBIT_DISPATCH_FLOATING(in.dtype(), "softmax", [&] { softmax_rows<scalar_t>(out, in, log); });
}
void softmax_backward_cpu(const Tensor& gi, const Tensor& go, const Tensor& out, bool log) {
  LOWBIT_DISPATCH_FLOATING(out.dtype(), "softmax backward",
                           [&] { softmax_backward_rows<scalar_t>(gi, go, out, log); });
}

}  // namespace

LOWBIT_REGISTER_KERNEL(softmax_stub, cpu, softmax_cpu);
LOWBIT_REGISTER_KERNEL(softmax_backward_stub, cpu, softmax_backward_cpu);

}  // namespace core

namespace {

// Moves `dim` last and makes it contiguous; returns the permutation used (empty: none).
Tensor dim_last(const Tensor& x, int64_t dim, std::vector<int64_t>* perm) {
  perm->clear();
  if (dim == x.dim() - 1) return x.detach().contiguous();
  for (int64_t i = 0; i < x.dim(); ++i) {
    if (i != dim) perm->push_back(i);
  }
  perm->push_back(dim);
  return x.detach().permute(*perm).contiguous();
}

Tensor undo_perm(const Tensor& y, const std::vector<int64_t>& perm) {
  if (perm.empty()) return y;
  std::vector<int64_t> inv(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) inv[size_t(perm[i])] = int64_t(i);
  return y.permute(inv);
}

Tensor softmax_impl(const Tensor& x, int64_t dim, bool log) {
  const char* name = log ? "log_softmax" : "softmax";
  LOWBIT_CHECK(x.defined() && is_floating(x.dtype()), name, ": wants a floating tensor, got ",
               x.defined() ? dtype_name(x.dtype()) : "undefined");
  if (x.dim() == 0) return softmax_impl(x.reshape({1}), 0, log).reshape({});
  const int64_t n = x.dim();
  LOWBIT_CHECK(dim >= -n && dim < n, name, ": dim ", dim, " out of range for shape ", x.shape());
  if (dim < 0) dim += n;
  std::vector<int64_t> perm;
  Tensor xl = dim_last(x, dim, &perm);
  Tensor yl = empty(xl.shape(), TensorOptions(x.dtype(), x.device()));
  if (yl.numel() > 0) core::softmax_stub(x.device(), yl, xl, log);
  Tensor y = undo_perm(yl, perm);
  if (autograd::any_requires_grad({x})) {
    autograd::SavedTensor sy(yl, name);
    autograd::record(name, {x}, y, [sy, perm, dim, log](const Tensor& g) {
      Tensor yl2 = sy.unpack();
      std::vector<int64_t> p2;
      Tensor gl = dim_last(g, dim, &p2);
      Tensor gi = empty(gl.shape(), TensorOptions(gl.dtype(), gl.device()));
      if (gi.numel() > 0) core::softmax_backward_stub(gl.device(), gi, gl, yl2, log);
      return std::vector<Tensor>{undo_perm(gi, perm)};
    });
  }
  return y;
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, false); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, true); }

}  // namespace lowbit
