// CUDA kernels of softmax_stub and softmax_backward_stub: one block per row of the contiguous
// (M, R) input (grid-stride over rows), float accumulation (double for f64), the row maximum
// subtracted first. The per-element formulas are the CPU's (core/softmax.cpp); only the order of
// the row sums differs (a fixed block tree), so results agree to rounding.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "core/kernels.h"
#include "cuda/check.h"
#include "cuda/launch.cuh"
#include "cuda/runtime.h"

namespace lowbit::cuda {

namespace {

template <typename T>
using softmax_acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

struct MaxCombine {
  template <typename A>
  __device__ A operator()(A a, A b) const {
    return a < b ? b : a;  // std::max's rule, as the CPU loop
  }
};
struct SumCombine {
  template <typename A>
  __device__ A operator()(A a, A b) const {
    return a + b;
  }
};

// y (M, R) = softmax or log_softmax of x along R.
template <typename T>
__global__ void softmax_forward_kernel(const T* x, T* y, int64_t m, int64_t r, bool log) {
  using acc_t = softmax_acc_t<T>;
  __shared__ acc_t smem[kWarpSize];
  for (int64_t row = blockIdx.x; row < m; row += gridDim.x) {
    const T* p = x + row * r;
    T* q = y + row * r;
    acc_t mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < r; j += blockDim.x) mx = MaxCombine()(mx, acc_t(p[j]));
    mx = block_reduce(mx, MaxCombine(), smem);
    acc_t s = 0;
    for (int64_t j = threadIdx.x; j < r; j += blockDim.x) s += math::exp(acc_t(p[j]) - mx);
    s = block_reduce(s, SumCombine(), smem);
    if (log) {
      const acc_t ls = math::log(s);
      for (int64_t j = threadIdx.x; j < r; j += blockDim.x) q[j] = T(acc_t(p[j]) - mx - ls);
    } else {
      const acc_t inv = acc_t(1) / s;
      for (int64_t j = threadIdx.x; j < r; j += blockDim.x) {
        q[j] = T(math::exp(acc_t(p[j]) - mx) * inv);
      }
    }
  }
}

// gi = y * (g - sum(g * y)) (softmax) or g - exp(y) * sum(g) (log_softmax); all (M, R).
template <typename T>
__global__ void softmax_backward_kernel(const T* g, const T* y, T* gi, int64_t m, int64_t r,
                                        bool log) {
  using acc_t = softmax_acc_t<T>;
  __shared__ acc_t smem[kWarpSize];
  for (int64_t row = blockIdx.x; row < m; row += gridDim.x) {
    const int64_t base = row * r;
    acc_t s = 0;
    for (int64_t j = threadIdx.x; j < r; j += blockDim.x) {
      s += log ? acc_t(g[base + j]) : acc_t(g[base + j]) * acc_t(y[base + j]);
    }
    s = block_reduce(s, SumCombine(), smem);
    for (int64_t j = threadIdx.x; j < r; j += blockDim.x) {
      const acc_t gj = acc_t(g[base + j]), yj = acc_t(y[base + j]);
      gi[base + j] = T(log ? gj - math::exp(yj) * s : yj * (gj - s));
    }
  }
}

// (M, R) of a contiguous tensor whose last dim is the softmax dim.
void rows_of(const Tensor& t, int64_t* m, int64_t* r) {
  LOWBIT_CHECK(t.is_contiguous(), "softmax kernel: tensors must be contiguous, got shape ",
               t.shape(), " with strides ", t.strides());
  *r = t.dim() == 0 ? 1 : t.size(-1);
  *m = *r == 0 ? 0 : t.numel() / *r;
}

void softmax_cuda(const Tensor& out, const Tensor& in, bool log) {
  int64_t m = 0, r = 0;
  rows_of(in, &m, &r);
  LOWBIT_CHECK(out.is_contiguous() && out.numel() == in.numel() && out.dtype() == in.dtype(),
               "softmax kernel: output ", out.shape(), " ", out.dtype(),
               out.is_contiguous() ? "" : " (not contiguous)", " must match the input ", in.shape(),
               " ", in.dtype(), " and be contiguous");
  if (m == 0) return;
  const int device = out.device().index;
  DeviceGuard guard(device);
  cudaStream_t s = stream_of(device);
  const int block = reduce_block_for(r);
  LOWBIT_DISPATCH_FLOATING(in.dtype(), "softmax", [&] {
    softmax_forward_kernel<scalar_t><<<grid_for(m * block, block), block, 0, s>>>(
        static_cast<const scalar_t*>(in.raw_data()), static_cast<scalar_t*>(out.raw_data()), m, r,
        log);
    LOWBIT_LAUNCH_CHECK();
  });
}

void softmax_backward_cuda(const Tensor& grad_in, const Tensor& grad_out, const Tensor& out,
                           bool log) {
  int64_t m = 0, r = 0;
  rows_of(out, &m, &r);
  LOWBIT_CHECK(grad_in.is_contiguous() && grad_out.is_contiguous() &&
                   grad_in.numel() == out.numel() && grad_out.numel() == out.numel() &&
                   grad_in.dtype() == out.dtype() && grad_out.dtype() == out.dtype(),
               "softmax backward kernel: gradients ", grad_in.shape(), " ", grad_in.dtype(),
               grad_in.is_contiguous() ? "" : " (not contiguous)", " and ", grad_out.shape(), " ",
               grad_out.dtype(), grad_out.is_contiguous() ? "" : " (not contiguous)",
               " must match the output ", out.shape(), " ", out.dtype(), " and be contiguous");
  if (m == 0) return;
  const int device = out.device().index;
  DeviceGuard guard(device);
  cudaStream_t s = stream_of(device);
  const int block = reduce_block_for(r);
  LOWBIT_DISPATCH_FLOATING(out.dtype(), "softmax backward", [&] {
    softmax_backward_kernel<scalar_t><<<grid_for(m * block, block), block, 0, s>>>(
        static_cast<const scalar_t*>(grad_out.raw_data()),
        static_cast<const scalar_t*>(out.raw_data()), static_cast<scalar_t*>(grad_in.raw_data()), m,
        r, log);
    LOWBIT_LAUNCH_CHECK();
  });
}

}  // namespace

LOWBIT_REGISTER_KERNEL(core::softmax_stub, cuda, softmax_cuda);
LOWBIT_REGISTER_KERNEL(core::softmax_backward_stub, cuda, softmax_backward_cuda);

}  // namespace lowbit::cuda
