// gather, scatter_add, index_select and one_hot. Operands are made contiguous and viewed as
// (outer, size along dim, inner). The CPU kernels validate every index and throw naming it
// (core/ops.h); gather and index_select share their element map with CUDA (core/index_math.h);
// scatter_add runs serially per (outer, inner) column, so its sums are deterministic.
#include <algorithm>

#include "core/autograd.h"
#include "core/index_math.h"
#include "core/kernels.h"
#include "core/ops.h"
#include "core/parallel.h"

namespace lowbit {

namespace core {

LOWBIT_DEFINE_STUB(gather_stub);
LOWBIT_DEFINE_STUB(scatter_add_stub);
LOWBIT_DEFINE_STUB(index_select_stub);
LOWBIT_DEFINE_STUB(one_hot_stub);

namespace {

template <typename idx_t>
int64_t checked_index(const idx_t* index, int64_t pos, int64_t limit, const char* op) {
  const int64_t v = int64_t(index[pos]);
  LOWBIT_CHECK(v >= 0 && v < limit, op, ": index ", v, " at position ", pos,
               " is out of range [0, ", limit, ")");
  return v;
}

// gather and index_select: the element map of core/index_math.h.
template <bool kSelect>
void index_gather_cpu(const Tensor& out, const Tensor& in, const Tensor& index,
                      const IndexArgs& a) {
  const char* op = index_gather_name<kSelect>();
  LOWBIT_DISPATCH_ALL(in.dtype(), op, [&] {
    LOWBIT_DISPATCH_INDEX(index.dtype(), op, [&] {
      const index_t* idx = static_cast<const index_t*>(index.raw_data());
      // Validated serially first: an exception must not escape the OpenMP region below.
      for (int64_t p = 0; p < index.numel(); ++p) checked_index(idx, p, a.in_size, op);
      for_each_index(out.numel(),
                     IndexGather<scalar_t, index_t, kSelect>{
                         static_cast<const scalar_t*>(in.raw_data()), idx,
                         static_cast<scalar_t*>(out.raw_data()), a.inner, a.out_size, a.in_size});
    });
  });
}

void scatter_add_cpu(const Tensor& out, const Tensor& index, const Tensor& src,
                     const IndexArgs& a) {
  LOWBIT_DISPATCH_ALL(out.dtype(), "scatter_add", [&] {
    LOWBIT_DISPATCH_INDEX(index.dtype(), "scatter_add", [&] {
      const index_t* idx = static_cast<const index_t*>(index.raw_data());
      // Validated serially first: an exception must not escape the OpenMP region below.
      for (int64_t p = 0; p < src.numel(); ++p) checked_index(idx, p, a.in_size, "scatter_add");
      const scalar_t* s = static_cast<const scalar_t*>(src.raw_data());
      scalar_t* y = static_cast<scalar_t*>(out.raw_data());
      // One task per (outer, inner) column: writes of different tasks never collide.
      for_each_index(
          a.outer * a.inner,
          [&](int64_t col) {
            const int64_t o = col / a.inner, i = col % a.inner;
            for (int64_t j = 0; j < a.out_size; ++j) {
              const int64_t p = (o * a.out_size + j) * a.inner + i;
              const int64_t t = int64_t(idx[p]);
              scalar_t& dst = y[(o * a.in_size + t) * a.inner + i];
              dst = scalar_t(opmath_t<scalar_t>(dst) + opmath_t<scalar_t>(s[p]));
            }
          },
          1024);
    });
  });
}

void one_hot_cpu(const Tensor& out, const Tensor& index, int64_t num_classes) {
  LOWBIT_DISPATCH_ALL(out.dtype(), "one_hot", [&] {
    LOWBIT_DISPATCH_INDEX(index.dtype(), "one_hot", [&] {
      const index_t* idx = static_cast<const index_t*>(index.raw_data());
      scalar_t* y = static_cast<scalar_t*>(out.raw_data());
      for (int64_t n = 0; n < index.numel(); ++n) {
        const int64_t c = checked_index(idx, n, num_classes, "one_hot");
        y[n * num_classes + c] = convert<scalar_t>(1.0);
      }
    });
  });
}

}  // namespace

LOWBIT_REGISTER_KERNEL(gather_stub, cpu, index_gather_cpu<false>);
LOWBIT_REGISTER_KERNEL(scatter_add_stub, cpu, scatter_add_cpu);
LOWBIT_REGISTER_KERNEL(index_select_stub, cpu, index_gather_cpu<true>);
LOWBIT_REGISTER_KERNEL(one_hot_stub, cpu, one_hot_cpu);

}  // namespace core

namespace {

int64_t wrap(int64_t dim, int64_t n, const char* op) {
  LOWBIT_CHECK(n > 0 && dim >= -n && dim < n, op, ": dim ", dim, " out of range for ", n, " dims");
  return dim < 0 ? dim + n : dim;
}

void check_index(const Tensor& index, const Tensor& x, const char* op) {
  LOWBIT_CHECK(index.defined() && (index.dtype() == DType::i32 || index.dtype() == DType::i64), op,
               ": index must be i32 or i64, got ",
               index.defined() ? dtype_name(index.dtype()) : "undefined");
  LOWBIT_CHECK(index.device() == x.device(), op, ": index on ", index.device(), " but input on ",
               x.device());
}

// (outer, inner) of `shape` around `dim`.
core::IndexArgs index_args(const Shape& shape, int64_t dim, int64_t in_size, int64_t out_size) {
  core::IndexArgs a;
  for (int64_t i = 0; i < dim; ++i) a.outer *= shape[size_t(i)];
  for (size_t i = size_t(dim) + 1; i < shape.size(); ++i) a.inner *= shape[i];
  a.in_size = in_size;
  a.out_size = out_size;
  return a;
}

void check_same_except(const Shape& a, const Shape& b, int64_t dim, const char* op) {
  bool ok = a.size() == b.size();
  for (size_t i = 0; ok && i < a.size(); ++i) ok = int64_t(i) == dim || a[i] == b[i];
  LOWBIT_CHECK(ok, op, ": shapes ", a, " and ", b, " must match except along dim ", dim);
}

}  // namespace

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  LOWBIT_CHECK(x.defined(), "gather: undefined input");
  check_index(index, x, "gather");
  dim = wrap(dim, x.dim(), "gather");
  check_same_except(x.shape(), index.shape(), dim, "gather");
  Tensor xc = x.detach().contiguous(), ic = index.contiguous();
  Tensor out = empty(index.shape(), TensorOptions(x.dtype(), x.device()));
  if (out.numel() > 0) {
    core::gather_stub(x.device(), out, xc, ic,
                      index_args(x.shape(), dim, x.size(dim), index.size(dim)));
  }
  if (autograd::any_requires_grad({x})) {
    Shape xs = x.shape();
    autograd::SavedTensor si(index, "gather");
    autograd::record("gather", {x}, out, [xs, si, dim](const Tensor& g) {
      return std::vector<Tensor>{
          scatter_add(zeros(xs, TensorOptions(g.dtype(), g.device())), dim, si.unpack(), g)};
    });
  }
  return out;
}

Tensor scatter_add(const Tensor& self, int64_t dim, const Tensor& index, const Tensor& src) {
  LOWBIT_CHECK(self.defined() && src.defined(), "scatter_add: undefined input");
  check_index(index, self, "scatter_add");
  dim = wrap(dim, self.dim(), "scatter_add");
  LOWBIT_CHECK(index.shape() == src.shape(), "scatter_add: index shape ", index.shape(),
               " differs from src shape ", src.shape());
  check_same_except(self.shape(), src.shape(), dim, "scatter_add");
  LOWBIT_CHECK(src.device() == self.device(), "scatter_add: src on ", src.device(), ", self on ",
               self.device());
  Tensor out = self.detach().clone();
  Tensor sc = src.detach().to(self.dtype()).contiguous(), ic = index.contiguous();
  if (sc.numel() > 0) {
    core::scatter_add_stub(self.device(), out, ic, sc,
                           index_args(self.shape(), dim, self.size(dim), src.size(dim)));
  }
  if (autograd::any_requires_grad({self, src})) {
    autograd::SavedTensor si(index, "scatter_add");
    DType st = src.dtype();
    autograd::record("scatter_add", {self, src}, out, [si, dim, st](const Tensor& g) {
      return std::vector<Tensor>{g, gather(g, dim, si.unpack()).to(st)};
    });
  }
  return out;
}

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  LOWBIT_CHECK(x.defined(), "index_select: undefined input");
  check_index(index, x, "index_select");
  LOWBIT_CHECK(index.dim() == 1, "index_select: index must be 1-D, got shape ", index.shape());
  dim = wrap(dim, x.dim(), "index_select");
  Shape out_shape = x.shape();
  out_shape[size_t(dim)] = index.numel();
  Tensor out = empty(out_shape, TensorOptions(x.dtype(), x.device()));
  if (out.numel() > 0) {
    core::index_select_stub(x.device(), out, x.detach().contiguous(), index.contiguous(),
                            index_args(x.shape(), dim, x.size(dim), index.numel()));
  }
  if (autograd::any_requires_grad({x})) {
    Shape xs = x.shape();
    autograd::SavedTensor si(index, "index_select");
    autograd::record("index_select", {x}, out, [xs, si, dim](const Tensor& g) {
      Shape view_shape(xs.size(), 1);
      view_shape[size_t(dim)] = -1;
      Tensor full_index = si.unpack().reshape(view_shape).expand(g.shape()).contiguous();
      return std::vector<Tensor>{
          scatter_add(zeros(xs, TensorOptions(g.dtype(), g.device())), dim, full_index, g)};
    });
  }
  return out;
}

Tensor one_hot(const Tensor& index, int64_t num_classes, DType dtype) {
  LOWBIT_CHECK(num_classes > 0, "one_hot: num_classes must be positive, got ", num_classes);
  check_index(index, index, "one_hot");
  Shape shape = index.shape();
  shape.push_back(num_classes);
  Tensor out = zeros(shape, TensorOptions(dtype, index.device()));
  if (index.numel() > 0) core::one_hot_stub(index.device(), out, index.contiguous(), num_classes);
  return out;
}

}  // namespace lowbit
