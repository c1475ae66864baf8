// CUDA kernels of gather, scatter_add, index_select and one_hot (core/kernels.h); operands are
// contiguous (outer, size along dim, inner) as on the CPU (core/index_ops.cpp).
// Out-of-range indices (core/ops.h): the CPU kernels validate and throw. Checking here would need
// a device-to-host copy and a sync on every call, so the CUDA kernels never touch memory outside
// the tensors instead: gather and index_select write 0 for a bad index (the shared element map
// of core/index_math.h), scatter_add and one_hot skip it. Validate on the CPU (or with a debug
// check) when indices come from untrusted data.
// scatter_add gives each (outer, inner) column to one thread, which adds its j's in order as the
// CPU does: no atomics, deterministic, bit-identical to the CPU, every dtype. It is slow only
// when there are few columns and many j (a 1-D scatter), which training does not do in bulk.
// gather/index_select/one_hot move bits and are instantiated per element size, not per dtype.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "core/index_math.h"
#include "core/kernels.h"
#include "cuda/check.h"
#include "cuda/launch.cuh"
#include "cuda/runtime.h"

namespace lowbit::cuda {

namespace {

void check_contiguous(const Tensor& t, const char* op, const char* what) {
  LOWBIT_CHECK(t.is_contiguous(), op, " kernel: ", what, " must be contiguous");
}

// out[o, index[o, j, i], i] += src[o, j, i], one thread per (o, i), j in order.
template <typename T, typename Index>
void scatter_add_typed_cuda(const Tensor& out, const Tensor& index, const Tensor& src,
                            const core::IndexArgs& a, cudaStream_t s) {
  using acc_t = opmath_t<T>;
  const Index* idx = static_cast<const Index*>(index.raw_data());
  const T* x = static_cast<const T*>(src.raw_data());
  T* y = static_cast<T*>(out.raw_data());
  const int64_t inner = a.inner, out_size = a.out_size, in_size = a.in_size;
  launch_elementwise(
      a.outer * a.inner,
      [=] __device__(int64_t col) {
        const int64_t o = col / inner, i = col % inner;
        for (int64_t j = 0; j < out_size; ++j) {
          const int64_t p = (o * out_size + j) * inner + i;
          const int64_t t = int64_t(idx[p]);
          if (t < 0 || t >= in_size) continue;
          T& dst = y[(o * in_size + t) * inner + i];
          dst = T(acc_t(dst) + acc_t(x[p]));
        }
      },
      s);
}

// out[n, index[n]] = one (out already zero); indices outside [0, num_classes) are skipped.
template <typename Bits, typename Index>
void one_hot_typed_cuda(const Tensor& out, const Tensor& index, int64_t num_classes, Bits one,
                        cudaStream_t s) {
  const Index* idx = static_cast<const Index*>(index.raw_data());
  Bits* y = static_cast<Bits*>(out.raw_data());
  launch_elementwise(
      index.numel(),
      [=] __device__(int64_t n) {
        const int64_t c = int64_t(idx[n]);
        if (c >= 0 && c < num_classes) y[n * num_classes + c] = one;
      },
      s);
}

// gather and index_select: the element map of core/index_math.h over bits of the element size.
template <bool kSelect>
void index_gather_cuda(const Tensor& out, const Tensor& in, const Tensor& index,
                       const core::IndexArgs& a) {
  const char* op = core::index_gather_name<kSelect>();
  check_contiguous(out, op, "out");
  check_contiguous(in, op, "in");
  check_contiguous(index, op, "index");
  LOWBIT_CHECK(out.dtype() == in.dtype(), op, " kernel: out ", out.dtype(), " vs in ", in.dtype());
  const int device = out.device().index;
  DeviceGuard guard(device);
  cudaStream_t s = stream_of(device);
  dispatch_bits(in.element_size(), op, [&](auto bits) {
    using Bits = decltype(bits);
    LOWBIT_DISPATCH_INDEX(index.dtype(), op, [&] {
      launch_elementwise(out.numel(),
                         core::IndexGather<Bits, index_t, kSelect>{
                             static_cast<const Bits*>(in.raw_data()),
                             static_cast<const index_t*>(index.raw_data()),
                             static_cast<Bits*>(out.raw_data()), a.inner, a.out_size, a.in_size},
                         s);
    });
  });
}

void scatter_add_cuda(const Tensor& out, const Tensor& index, const Tensor& src,
                      const core::IndexArgs& a) {
  check_contiguous(out, "scatter_add", "out");
  check_contiguous(index, "scatter_add", "index");
  check_contiguous(src, "scatter_add", "src");
  LOWBIT_CHECK(out.dtype() == src.dtype(), "scatter_add kernel: out ", out.dtype(), " vs src ",
               src.dtype());
  const int device = out.device().index;
  DeviceGuard guard(device);
  cudaStream_t s = stream_of(device);
  LOWBIT_DISPATCH_ALL(out.dtype(), "scatter_add", [&] {
    LOWBIT_DISPATCH_INDEX(index.dtype(), "scatter_add", [&] {
      scatter_add_typed_cuda<scalar_t, index_t>(out, index, src, a, s);
    });
  });
}

void one_hot_cuda(const Tensor& out, const Tensor& index, int64_t num_classes) {
  check_contiguous(out, "one_hot", "out");
  check_contiguous(index, "one_hot", "index");
  const int device = out.device().index;
  DeviceGuard guard(device);
  cudaStream_t s = stream_of(device);
  LOWBIT_DISPATCH_ALL(out.dtype(), "one_hot", [&] {
    using Bits = bits_t<scalar_t>;
    const scalar_t one_value = convert<scalar_t>(1.0);  // converted on the host, as the CPU does
    Bits one;
    std::memcpy(&one, &one_value, sizeof(one));
    LOWBIT_DISPATCH_INDEX(index.dtype(), "one_hot", [&] {
      one_hot_typed_cuda<Bits, index_t>(out, index, num_classes, one, s);
    });
  });
}

}  // namespace

LOWBIT_REGISTER_KERNEL(core::gather_stub, cuda, index_gather_cuda<false>);
LOWBIT_REGISTER_KERNEL(core::scatter_add_stub, cuda, scatter_add_cuda);
LOWBIT_REGISTER_KERNEL(core::index_select_stub, cuda, index_gather_cuda<true>);
LOWBIT_REGISTER_KERNEL(core::one_hot_stub, cuda, one_hot_cuda);

}  // namespace lowbit::cuda
