// CUDA kernels of cross_entropy and topk_correct. The math is loss.h's row functions; only the
// launch differs from the CPU loops in loss.cpp.
// Forward: one block per row (grid-stride over rows); each thread folds its strided logits
// into a RowLse, the block merges them in a fixed tree (deterministic), thread 0 writes the row
// loss and lse. A target outside [0, C) gives a NaN row loss instead of a read out of bounds
// (validating would need a host sync; see loss.h). Backward and top-k are elementwise.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/check.h"
#include "cuda/launch.cuh"
#include "cuda/runtime.h"
#include "train/loss.h"

namespace lowbit::train::detail {

// Found by argument-dependent lookup from cuda::warp_reduce.
template <typename A>
__device__ __forceinline__ RowLse<A> shfl_down(RowLse<A> v, int offset) {
  return RowLse<A>{cuda::shfl_down(v.m, offset), cuda::shfl_down(v.s, offset),
                   cuda::shfl_down(v.sx, offset)};
}

namespace {

struct RowLseCombine {
  template <typename A>
  __device__ RowLse<A> operator()(RowLse<A> a, RowLse<A> b) const {
    return row_lse_combine(a, b);
  }
};

template <typename T, typename I>
__global__ void cross_entropy_forward_kernel(const T* x, const I* target, opmath_t<T>* row_loss,
                                             opmath_t<T>* row_lse, int64_t n, int64_t c,
                                             opmath_t<T> eps) {
  using A = opmath_t<T>;
  __shared__ RowLse<A> smem[cuda::kWarpSize];
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const T* r = x + row * c;
    RowLse<A> s = row_lse_init<A>();
    for (int64_t j = threadIdx.x; j < c; j += blockDim.x) s = row_lse_push(s, A(r[j]));
    s = cuda::block_reduce(s, RowLseCombine(), smem);
    if (threadIdx.x == 0) {
      const A lse = row_lse_value(s);
      const int64_t t = int64_t(target[row]);
      row_lse[row] = lse;
      row_loss[row] =
          (t >= 0 && t < c) ? cross_entropy_row_loss(lse, A(r[t]), s.sx, eps, c) : A(NAN);
    }
  }
}

void cross_entropy_forward_cuda(const Tensor& logits, const Tensor& target, double eps,
                                const Tensor& row_loss, const Tensor& row_lse) {
  const int64_t n = logits.size(0), c = logits.size(1);
  const int device = logits.device().index;
  cuda::DeviceGuard guard(device);
  cudaStream_t s = cuda::stream_of(device);
  const int block = cuda::reduce_block_for(c);
  LOWBIT_DISPATCH_FLOATING(logits.dtype(), "cross_entropy", [&] {
    LOWBIT_DISPATCH_INDEX(target.dtype(), "cross_entropy", [&] {
      using A = opmath_t<scalar_t>;
      cross_entropy_forward_kernel<scalar_t, index_t>
          <<<cuda::grid_for(n * block, block), block, 0, s>>>(
              static_cast<const scalar_t*>(logits.raw_data()),
              static_cast<const index_t*>(target.raw_data()), static_cast<A*>(row_loss.raw_data()),
              static_cast<A*>(row_lse.raw_data()), n, c, A(eps));
      LOWBIT_LAUNCH_CHECK();
    });
  });
}

void cross_entropy_backward_cuda(const Tensor& logits, const Tensor& target, const Tensor& row_lse,
                                 const Tensor& grad_out, double eps, const Tensor& grad_logits) {
  const int64_t n = logits.size(0), c = logits.size(1);
  const int device = logits.device().index;
  cuda::DeviceGuard guard(device);
  cudaStream_t s = cuda::stream_of(device);
  LOWBIT_DISPATCH_FLOATING(logits.dtype(), "cross_entropy backward", [&] {
    LOWBIT_DISPATCH_INDEX(target.dtype(), "cross_entropy backward", [&] {
      using A = opmath_t<scalar_t>;
      CrossEntropyBackward<scalar_t, index_t> f{static_cast<const scalar_t*>(logits.raw_data()),
                                                static_cast<const A*>(row_lse.raw_data()),
                                                static_cast<const index_t*>(target.raw_data()),
                                                static_cast<const scalar_t*>(grad_out.raw_data()),
                                                static_cast<scalar_t*>(grad_logits.raw_data()),
                                                c,
                                                A(eps),
                                                A(1.0 / double(n))};
      cuda::launch_elementwise(n * c, f, s);
    });
  });
}

void topk_hit_cuda(const Tensor& logits, const Tensor& target, int64_t k, const Tensor& hit) {
  const int64_t n = logits.size(0), c = logits.size(1);
  const int device = logits.device().index;
  cuda::DeviceGuard guard(device);
  cudaStream_t s = cuda::stream_of(device);
  LOWBIT_DISPATCH_FLOATING(logits.dtype(), "topk_correct", [&] {
    LOWBIT_DISPATCH_INDEX(target.dtype(), "topk_correct", [&] {
      TopkHit<scalar_t, index_t> f{static_cast<const scalar_t*>(logits.raw_data()),
                                   static_cast<const index_t*>(target.raw_data()),
                                   static_cast<int64_t*>(hit.raw_data()), c, k};
      cuda::launch_elementwise(n, f, s);
    });
  });
}

}  // namespace

LOWBIT_REGISTER_KERNEL(cross_entropy_forward_stub, cuda, cross_entropy_forward_cuda);
LOWBIT_REGISTER_KERNEL(cross_entropy_backward_stub, cuda, cross_entropy_backward_cuda);
LOWBIT_REGISTER_KERNEL(topk_hit_stub, cuda, topk_hit_cuda);

}  // namespace lowbit::train::detail
