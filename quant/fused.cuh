// The fused elementwise machinery, CUDA half (include only from .cu files): CudaLaunch runs an op
// of quant/fused.h on the current stream of the tensor's device.
//   forward:  one grid-stride pass, y[i] = op.channel(channel(i)).forward(x[i]).
//   backward: without parameter gradients, one grid-stride pass writing dx. With them, one pass
//             over a grid of (channel, slice) blocks: each block walks a slice of one channel's
//             elements, writes dx, sums the op's terms in double per thread, reduces them over
//             the block (cuda::block_reduce, fixed order) and writes one partial per block to
//             scratch; then one small pass adds each channel's partials in block order and
//             applies op.finish. Deterministic for a given device (the slice count depends on
//             the SM count), no atomics.
// A channel's elements are strided by `inner` in memory: coalesced for per-tensor and for
// per-channel along axis 0 (KRSC weights), strided for per-channel along the last axis.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/launch.cuh"
#include "quant/fused.h"

namespace lowbit::quant {

namespace detail {

// Threads per block of every fused kernel, the small per-channel passes included.
constexpr int kFusedBlock = 256;
// Backward with parameter gradients: elements per thread a channel's slice aims for.
constexpr int64_t kSliceElemsPerThread = 4;

template <typename T, typename Op>
__global__ void fused_forward_kernel(int64_t n, const T* __restrict__ x, T* __restrict__ y,
                                     ChannelLayout l, Op op) {
  using A = quant_acc_t<T>;
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    y[i] = T(op.channel(l.channel_of(i)).forward(A(opmath_t<T>(x[i]))));
  }
}

template <typename T, typename Op>
__global__ void fused_backward_map_kernel(int64_t n, const T* __restrict__ x,
                                          const T* __restrict__ dy, T* __restrict__ dx,
                                          ChannelLayout l, Op op) {
  using A = quant_acc_t<T>;
  constexpr int K = Op::kTerms > 0 ? Op::kTerms : 1;
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    A t[K];
    dx[i] = T(op.channel(l.channel_of(i)).backward(A(opmath_t<T>(x[i])), A(opmath_t<T>(dy[i])), t));
  }
}

struct DoubleSum {
  __device__ double operator()(double a, double b) const { return a + b; }
};

// Grid: channels * slices blocks; block b handles channel b / slices, slice b % slices.
// partial: (channels, slices, K) doubles.
template <typename T, typename Op>
__global__ void fused_backward_reduce_kernel(const T* __restrict__ x, const T* __restrict__ dy,
                                             T* __restrict__ dx, ChannelLayout l, int64_t slices,
                                             Op op, double* __restrict__ partial) {
  using A = quant_acc_t<T>;
  constexpr int K = Op::kTerms;
  __shared__ double smem[cuda::kWarpSize];  // cuda::block_reduce: one value per warp
  const int64_t c = int64_t(blockIdx.x) / slices;
  const int64_t slice = int64_t(blockIdx.x) % slices;
  const int64_t m = l.outer * l.inner;  // elements of channel c
  const int64_t stride = slices * blockDim.x;
  const typename Op::Channel bound = op.channel(c);
  double acc[K];
  for (int k = 0; k < K; ++k) acc[k] = 0.0;
  for (int64_t j = slice * blockDim.x + threadIdx.x; j < m; j += stride) {
    int64_t i = j;
    if (l.channels != 1) {
      const int64_t o = j / l.inner;
      i = (o * l.channels + c) * l.inner + (j - o * l.inner);
    }
    A t[K];
    const A g = bound.backward(A(opmath_t<T>(x[i])), A(opmath_t<T>(dy[i])), t);
    if (dx != nullptr) dx[i] = T(g);
    for (int k = 0; k < K; ++k) acc[k] += double(t[k]);
  }
  for (int k = 0; k < K; ++k) {
    const double v = cuda::block_reduce(acc[k], DoubleSum{}, smem);
    if (threadIdx.x == 0) partial[(c * slices + slice) * K + k] = v;
  }
}

template <typename A, typename Op>
__global__ void fused_finish_kernel(const double* __restrict__ partial, int64_t slices,
                                    int64_t channels, Op op, A* __restrict__ out) {
  constexpr int K = Op::kTerms;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // over K * channels
  if (idx >= K * channels) return;
  const int k = int(idx / channels);
  const int64_t c = idx % channels;
  double s = 0.0;
  for (int64_t b = 0; b < slices; ++b) s += partial[(c * slices + b) * K + k];
  out[idx] = op.finish(k, c, s);
}

template <typename Op>
__global__ void channel_op_kernel(int64_t n, Op op) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) op(i);
}

}  // namespace detail

struct CudaLaunch {
  template <typename T, typename Op>
  static void forward(const Tensor& x, const Tensor& y, const ChannelLayout& l, const Op& op) {
    const int dev = x.device().index;
    cuda::DeviceGuard guard(dev);
    const int64_t n = l.numel();
    detail::fused_forward_kernel<T, Op>
        <<<cuda::grid_for(n, detail::kFusedBlock), detail::kFusedBlock, 0, cuda::stream_of(dev)>>>(
            n, static_cast<const T*>(x.raw_data()), static_cast<T*>(y.raw_data()), l, op);
    LOWBIT_LAUNCH_CHECK();
  }

  template <typename T, typename Op>
  static void backward(const Tensor& x, const Tensor& dy, const Tensor& dx, const Tensor& grads,
                       const ChannelLayout& l, const Op& op) {
    using A = quant_acc_t<T>;
    const int dev = x.device().index;
    cuda::DeviceGuard guard(dev);
    cudaStream_t s = cuda::stream_of(dev);
    const int64_t n = l.numel();
    const T* px = static_cast<const T*>(x.raw_data());
    const T* pg = static_cast<const T*>(dy.raw_data());
    T* pdx = dx.defined() ? static_cast<T*>(dx.raw_data()) : nullptr;
    if constexpr (Op::kTerms == 0) {
      (void)grads;
      map(n, px, pg, pdx, l, op, s);
    } else {
      if (!grads.defined()) return map(n, px, pg, pdx, l, op, s);
      constexpr int K = Op::kTerms;
      const int block = detail::kFusedBlock;
      const int64_t m = l.outer * l.inner;
      // Slices per channel: a few elements per thread, and in all about kWaves waves of
      // resident blocks (at least one slice per channel).
      const int64_t cap =
          int64_t(cuda::device_info(dev).sm_count) * (cuda::kThreadsPerSm / block) * cuda::kWaves;
      const int64_t per_slice = int64_t(block) * detail::kSliceElemsPerThread;
      const int64_t want = (m + per_slice - 1) / per_slice;
      const int64_t slices =
          std::max<int64_t>(1, std::min<int64_t>(want, std::max<int64_t>(1, cap / l.channels)));
      Tensor partial = empty({l.channels * slices * K}, TensorOptions(DType::f64, x.device()));
      double* pp = static_cast<double*>(partial.raw_data());
      detail::fused_backward_reduce_kernel<T, Op>
          <<<unsigned(l.channels * slices), block, 0, s>>>(px, pg, pdx, l, slices, op, pp);
      LOWBIT_LAUNCH_CHECK();
      const int64_t total = K * l.channels;
      detail::fused_finish_kernel<A, Op><<<cuda::blocks_to_cover(total, block), block, 0, s>>>(
          pp, slices, l.channels, op, static_cast<A*>(grads.raw_data()));
      LOWBIT_LAUNCH_CHECK();
    }
  }

  template <typename Op>
  static void channels(Device device, int64_t n, const Op& op) {
    const int dev = device.index;
    cuda::DeviceGuard guard(dev);
    detail::channel_op_kernel<Op><<<cuda::blocks_to_cover(n, detail::kFusedBlock),
                                    detail::kFusedBlock, 0, cuda::stream_of(dev)>>>(n, op);
    LOWBIT_LAUNCH_CHECK();
  }

 private:
  template <typename T, typename Op>
  static void map(int64_t n, const T* px, const T* pg, T* pdx, const ChannelLayout& l, const Op& op,
                  cudaStream_t s) {
    if (pdx == nullptr) return;
    detail::fused_backward_map_kernel<T, Op>
        <<<cuda::grid_for(n, detail::kFusedBlock), detail::kFusedBlock, 0, s>>>(n, px, pg, pdx, l,
                                                                                op);
    LOWBIT_LAUNCH_CHECK();
  }
};

}  // namespace lowbit::quant
