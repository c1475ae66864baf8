// Launch helpers for .cu files: launch_elementwise runs a __device__ functor f(i) for every
// i in [0, n) with a grid-stride loop (the CUDA twin of core::for_each_index), and the warp/block
// reductions the row kernels use. The grid is capped at a few waves of the device's SMs: a
// grid-stride loop needs no more blocks than can be resident, and fewer blocks keep per-block
// setup cheap. Reductions combine in a fixed order, so results do not depend on timing.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/check.h"
#include "cuda/runtime.h"

namespace lowbit::cuda {

constexpr int kWarpSize = 32;
constexpr int kElementwiseBlock = 256;
constexpr int64_t kThreadsPerSm = 2048;  // resident threads per SM on sm_80 and sm_90
constexpr int64_t kWaves = 2;            // grid cap: this many full waves of resident blocks
constexpr int kMaxReduceBlock = 256;

// The current stream of `device` as a cudaStream_t.
inline cudaStream_t stream_of(int device) {
  return static_cast<cudaStream_t>(current_stream(device).handle());
}

// Blocks of `block` threads for one thread per element of n, with no grid-stride loop (small
// passes over per-channel values, far below 2^31 blocks): ceil(n / block), at least 1.
inline unsigned blocks_to_cover(int64_t n, int block) {
  const int64_t need = (n + block - 1) / block;
  return unsigned(need < 1 ? 1 : need);
}

// Blocks for n elements at `block` threads on the current device: enough to cover n, at most
// kWaves waves of resident blocks.
inline unsigned grid_for(int64_t n, int block) {
  int device = current_device();
  int64_t cap = int64_t(device_info(device).sm_count) * (kThreadsPerSm / block) * kWaves;
  int64_t need = (n + block - 1) / block;
  int64_t blocks = need < cap ? need : cap;
  return unsigned(blocks < 1 ? 1 : blocks);
}

template <typename F>
__global__ void elementwise_kernel(int64_t n, F f) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) f(i);
}

// Calls f(i) for i in [0, n) on stream s of the current device. n == 0 launches nothing.
template <typename F>
void launch_elementwise(int64_t n, F f, cudaStream_t s) {
  if (n <= 0) return;
  elementwise_kernel<<<grid_for(n, kElementwiseBlock), kElementwiseBlock, 0, s>>>(n, f);
  LOWBIT_LAUNCH_CHECK();
}

// Threads per block for a kernel that gives one block to a row of length r: the smallest
// power of two from 32 to kMaxReduceBlock that is at least r / 4 (a few elements per thread).
inline int reduce_block_for(int64_t r) {
  int b = kWarpSize;
  while (b < kMaxReduceBlock && int64_t(b) * 4 < r) b *= 2;
  return b;
}

// Unsigned integer of a given byte width: kernels that only move elements (where, same-dtype
// copies, fill, gather) are instantiated per element size instead of per dtype.
template <int kBytes>
struct BitsOf;
template <>
struct BitsOf<1> {
  using type = uint8_t;
};
template <>
struct BitsOf<2> {
  using type = uint16_t;
};
template <>
struct BitsOf<4> {
  using type = uint32_t;
};
template <>
struct BitsOf<8> {
  using type = uint64_t;
};
template <typename T>
using bits_t = typename BitsOf<int(sizeof(T))>::type;

// Calls fn(Bits{}) with the unsigned type `bytes` wide; `op` names the caller in the error.
template <typename F>
void dispatch_bits(int64_t bytes, const char* op, F&& fn) {
  switch (bytes) {
    case 1:
      return fn(uint8_t{});
    case 2:
      return fn(uint16_t{});
    case 4:
      return fn(uint32_t{});
    case 8:
      return fn(uint64_t{});
    default:
      LOWBIT_FAIL(op, ": unsupported element size ", bytes);
  }
}

// Shuffles for the arithmetic types; reduction states with several fields add their own
// shfl_down overload next to their definition (found by overload resolution in the helpers).
template <typename T>
__device__ __forceinline__ T shfl_down(T v, int offset) {
  return __shfl_down_sync(0xffffffffu, v, offset);
}

// Combines the values of a full warp; lane 0 holds the result. `combine(a, b)` must be
// associative; the order is fixed, so the result is deterministic.
template <typename T, typename Combine>
__device__ __forceinline__ T warp_reduce(T v, Combine combine) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v = combine(v, shfl_down(v, offset));
  return v;
}

// Combines one value per thread of the block (blockDim.x a multiple of 32, at most 1024) and
// returns the result to every thread. `smem` holds at least 32 T in shared memory. Every thread
// of the block must call it; it may be called again right after with the same smem.
template <typename T, typename Combine>
__device__ T block_reduce(T v, Combine combine, T* smem) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  v = warp_reduce(v, combine);
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = smem[0];
    for (int i = 1; i < warps; ++i) w = combine(w, smem[i]);
    __syncwarp();  // every lane of warp 0 has read smem[0] before lane 0 overwrites it
    if (lane == 0) smem[0] = w;
  }
  __syncthreads();
  return smem[0];
}

}  // namespace lowbit::cuda
