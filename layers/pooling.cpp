// Pooling: geometry, CPU launches of the shared kernels (registered on the stubs of pooling.h),
// autograd and dispatch.
#include "layers/pooling.h"

#include <sstream>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/parallel.h"
#include "layers/pooling_kernels.h"

namespace lowbit::layers {

int64_t pooled_size(int64_t in, int64_t k, int64_t s, int64_t p, bool ceil_mode) {
  const int64_t span = in + 2 * p - k;
  int64_t out = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
  // PyTorch: in ceil mode the last window must start inside the input or the left padding.
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

PoolGeom pool_geom(const Tensor& x, const Pool2dOptions& o, const char* op) {
  LOWBIT_CHECK(x.defined() && x.dim() == 4, op, " wants NHWC input (4-D), got ",
               x.defined() ? shape_str(x.shape()) : "undefined");
  LOWBIT_CHECK(o.kernel_h > 0 && o.kernel_w > 0 && o.stride_h > 0 && o.stride_w > 0, op,
               ": kernel and stride must be positive");
  LOWBIT_CHECK(
      o.pad_h >= 0 && o.pad_w >= 0 && 2 * o.pad_h <= o.kernel_h && 2 * o.pad_w <= o.kernel_w, op,
      ": padding must be at most half the kernel, got ", o.pad_h, "x", o.pad_w, " for kernel ",
      o.kernel_h, "x", o.kernel_w);
  PoolGeom g{};
  g.n = x.size(0);
  g.h = x.size(1);
  g.w = x.size(2);
  g.c = x.size(3);
  g.kh = o.kernel_h;
  g.kw = o.kernel_w;
  g.sh = o.stride_h;
  g.sw = o.stride_w;
  g.ph = o.pad_h;
  g.pw = o.pad_w;
  g.include_pad = o.count_include_pad;
  g.p = pooled_size(g.h, g.kh, g.sh, g.ph, o.ceil_mode);
  g.q = pooled_size(g.w, g.kw, g.sw, g.pw, o.ceil_mode);
  LOWBIT_CHECK(g.p > 0 && g.q > 0, op, ": input ", x.shape(), " is too small for a ", g.kh, "x",
               g.kw, " window");
  return g;
}

namespace detail {

LOWBIT_DEFINE_STUB(max_pool_forward_stub);
LOWBIT_DEFINE_STUB(max_pool_backward_stub);
LOWBIT_DEFINE_STUB(avg_pool_forward_stub);
LOWBIT_DEFINE_STUB(avg_pool_backward_stub);

namespace {

void max_pool_forward_cpu(const PoolGeom& g, const Tensor& x, const Tensor& y,
                          const Tensor& argmax) {
  LOWBIT_DISPATCH_FLOATING(x.dtype(), "max_pool2d", [&] {
    MaxPoolForward<scalar_t> k{g, static_cast<const scalar_t*>(x.raw_data()),
                               static_cast<scalar_t*>(y.raw_data()),
                               static_cast<int64_t*>(argmax.raw_data())};
    core::for_each_index(y.numel(), k);
  });
}
void max_pool_backward_cpu(const PoolGeom& g, const Tensor& dy, const Tensor& argmax,
                           const Tensor& dx) {
  LOWBIT_DISPATCH_FLOATING(dy.dtype(), "max_pool2d backward", [&] {
    MaxPoolBackward<scalar_t> k{g, static_cast<const scalar_t*>(dy.raw_data()),
                                static_cast<const int64_t*>(argmax.raw_data()),
                                static_cast<scalar_t*>(dx.raw_data())};
    core::for_each_index(dx.numel(), k);
  });
}
void avg_pool_forward_cpu(const PoolGeom& g, const Tensor& x, const Tensor& y) {
  LOWBIT_DISPATCH_FLOATING(x.dtype(), "avg_pool2d", [&] {
    AvgPoolForward<scalar_t> k{g, static_cast<const scalar_t*>(x.raw_data()),
                               static_cast<scalar_t*>(y.raw_data())};
    core::for_each_index(y.numel(), k);
  });
}
void avg_pool_backward_cpu(const PoolGeom& g, const Tensor& dy, const Tensor& dx) {
  LOWBIT_DISPATCH_FLOATING(dy.dtype(), "avg_pool2d backward", [&] {
    AvgPoolBackward<scalar_t> k{g, static_cast<const scalar_t*>(dy.raw_data()),
                                static_cast<scalar_t*>(dx.raw_data())};
    core::for_each_index(dx.numel(), k);
  });
}

}  // namespace

LOWBIT_REGISTER_KERNEL(max_pool_forward_stub, cpu, max_pool_forward_cpu);
LOWBIT_REGISTER_KERNEL(max_pool_backward_stub, cpu, max_pool_backward_cpu);
LOWBIT_REGISTER_KERNEL(avg_pool_forward_stub, cpu, avg_pool_forward_cpu);
LOWBIT_REGISTER_KERNEL(avg_pool_backward_stub, cpu, avg_pool_backward_cpu);

}  // namespace detail

Tensor max_pool2d(const Tensor& x_in, const Pool2dOptions& o) {
  const PoolGeom g = pool_geom(x_in, o, "max_pool2d");
  Tensor x = x_in.detach().contiguous();
  const TensorOptions opt(x.dtype(), x.device());
  Tensor y = empty({g.n, g.p, g.q, g.c}, opt);
  Tensor argmax = empty(y.shape(), TensorOptions(DType::i64, x.device()));
  detail::max_pool_forward_stub(x.device(), g, x, y, argmax);
  autograd::record("max_pool2d", {x_in}, y, [g, argmax, opt](const Tensor& dy) {
    Tensor dx = empty({g.n, g.h, g.w, g.c}, opt);
    Tensor d = dy.contiguous();
    detail::max_pool_backward_stub(d.device(), g, d, argmax, dx);
    return std::vector<Tensor>{dx};
  });
  return y;
}

Tensor avg_pool2d(const Tensor& x_in, const Pool2dOptions& o) {
  const PoolGeom g = pool_geom(x_in, o, "avg_pool2d");
  Tensor x = x_in.detach().contiguous();
  const TensorOptions opt(x.dtype(), x.device());
  Tensor y = empty({g.n, g.p, g.q, g.c}, opt);
  detail::avg_pool_forward_stub(x.device(), g, x, y);
  autograd::record("avg_pool2d", {x_in}, y, [g, opt](const Tensor& dy) {
    Tensor dx = empty({g.n, g.h, g.w, g.c}, opt);
    Tensor d = dy.contiguous();
    detail::avg_pool_backward_stub(d.device(), g, d, dx);
    return std::vector<Tensor>{dx};
  });
  return y;
}

Tensor global_avg_pool2d(const Tensor& x) {
  LOWBIT_CHECK(x.defined() && x.dim() == 4, "global_avg_pool2d wants NHWC input (4-D), got ",
               x.defined() ? shape_str(x.shape()) : "undefined");
  return mean(x, {1, 2});
}

namespace {
std::string pool_repr(const Pool2dOptions& o) {
  std::ostringstream os;
  os << "kernel_size=(" << o.kernel_h << ", " << o.kernel_w << "), stride=(" << o.stride_h << ", "
     << o.stride_w << "), padding=(" << o.pad_h << ", " << o.pad_w << ")";
  if (o.ceil_mode) os << ", ceil_mode=True";
  return os.str();
}
}  // namespace

std::string MaxPool2d::extra_repr() const { return pool_repr(opts_); }
std::string AvgPool2d::extra_repr() const {
  return pool_repr(opts_) + (opts_.count_include_pad ? "" : ", count_include_pad=False");
}

}  // namespace lowbit::layers
