// CUDA kernels of reduce_stub: in (M, R) contiguous -> out (M). Rows of up to kThreadRowMax
// elements get one thread each and reduce sequentially, in the CPU's order (core/reduce.cpp);
// longer rows get one block each and a fixed-shape block reduction. Sums accumulate in double
// (int64 for integers) as on the CPU; max/min/argmax/argmin compare in double with the CPU's
// rules (NaN wins, the first index wins ties), expressed as an associative combine so the tree
// order picks the same element. No atomics: results are deterministic.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "core/kernels.h"
#include "cuda/check.h"
#include "cuda/launch.cuh"
#include "cuda/runtime.h"

namespace lowbit::cuda {

namespace {

constexpr int64_t kThreadRowMax = 32;

template <typename T>
using sum_acc_t = std::conditional_t<std::is_integral_v<T>, int64_t, double>;

struct SumCombine {
  template <typename A>
  __device__ A operator()(A a, A b) const {
    return a + b;
  }
};

// Best element seen so far; i < 0 means none (threads past the end of a short row).
struct ExtremeState {
  double v;
  int64_t i;
};

__device__ __forceinline__ ExtremeState shfl_down(ExtremeState s, int offset) {
  return {__shfl_down_sync(0xffffffffu, s.v, offset), __shfl_down_sync(0xffffffffu, s.i, offset)};
}

// NaN beats numbers, then the larger (kMax) or smaller value, then the smaller index: a total
// order, hence associative, and the winner is the CPU loop's.
template <bool kMax>
struct ExtremeCombine {
  __device__ ExtremeState operator()(ExtremeState a, ExtremeState b) const {
    if (a.i < 0) return b;
    if (b.i < 0) return a;
    const bool a_nan = a.v != a.v, b_nan = b.v != b.v;
    if (a_nan != b_nan) return a_nan ? a : b;
    if (!a_nan) {
      if (kMax ? a.v > b.v : a.v < b.v) return a;
      if (kMax ? b.v > a.v : b.v < a.v) return b;
    }
    return a.i <= b.i ? a : b;
  }
};

// ------------------------------------------------------------------------------------- sum

template <typename T>
__global__ void reduce_sum_kernel(const T* in, T* out, int64_t m, int64_t r) {
  using acc_t = sum_acc_t<T>;
  __shared__ acc_t smem[kWarpSize];
  for (int64_t row = blockIdx.x; row < m; row += gridDim.x) {
    const T* p = in + row * r;
    acc_t acc = 0;
    for (int64_t j = threadIdx.x; j < r; j += blockDim.x) acc += acc_t(opmath_t<T>(p[j]));
    acc = block_reduce(acc, SumCombine(), smem);
    if (threadIdx.x == 0) out[row] = convert<T>(acc);
  }
}

template <typename T>
void reduce_sum_cuda(const T* in, T* out, int64_t m, int64_t r, cudaStream_t s) {
  using acc_t = sum_acc_t<T>;
  if (r <= kThreadRowMax) {
    launch_elementwise(
        m,
        [=] __device__(int64_t row) {
          const T* p = in + row * r;
          acc_t acc = 0;
          for (int64_t j = 0; j < r; ++j) acc += acc_t(opmath_t<T>(p[j]));
          out[row] = convert<T>(acc);
        },
        s);
    return;
  }
  const int block = reduce_block_for(r);
  reduce_sum_kernel<T><<<grid_for(m * block, block), block, 0, s>>>(in, out, m, r);
  LOWBIT_LAUNCH_CHECK();
}

// --------------------------------------------------------------- max, min, argmax, argmin

// Writes the winning element to out_value, or its index to out_index (one of them is null).
template <typename T, bool kMax>
__global__ void reduce_extreme_kernel(const T* in, T* out_value, int64_t* out_index, int64_t m,
                                      int64_t r) {
  __shared__ ExtremeState smem[kWarpSize];
  const ExtremeCombine<kMax> combine;
  for (int64_t row = blockIdx.x; row < m; row += gridDim.x) {
    const T* p = in + row * r;
    ExtremeState best{0.0, -1};
    for (int64_t j = threadIdx.x; j < r; j += blockDim.x) {
      best = combine(best, ExtremeState{double(opmath_t<T>(p[j])), j});
    }
    best = block_reduce(best, combine, smem);
    if (threadIdx.x == 0) {
      if (out_index) {
        out_index[row] = best.i;
      } else {
        out_value[row] = p[best.i];
      }
    }
  }
}

template <typename T, bool kMax>
void reduce_extreme_cuda(const T* in, T* out_value, int64_t* out_index, int64_t m, int64_t r,
                         cudaStream_t s) {
  if (r <= kThreadRowMax) {
    // The CPU loop, verbatim: strict comparison keeps the first index, a NaN ends the search.
    launch_elementwise(
        m,
        [=] __device__(int64_t row) {
          const T* p = in + row * r;
          int64_t best = 0;
          double best_v = double(opmath_t<T>(p[0]));
          for (int64_t j = 1; j < r && !(best_v != best_v); ++j) {
            const double v = double(opmath_t<T>(p[j]));
            if (v != v || (kMax ? v > best_v : v < best_v)) {
              best = j;
              best_v = v;
            }
          }
          if (out_index) {
            out_index[row] = best;
          } else {
            out_value[row] = p[best];
          }
        },
        s);
    return;
  }
  const int block = reduce_block_for(r);
  reduce_extreme_kernel<T, kMax>
      <<<grid_for(m * block, block), block, 0, s>>>(in, out_value, out_index, m, r);
  LOWBIT_LAUNCH_CHECK();
}

void reduce_cuda(core::ReduceOp op, const Tensor& out, const Tensor& in) {
  LOWBIT_CHECK(in.is_contiguous() && out.is_contiguous(),
               "reduce kernel: tensors must be contiguous");
  const int64_t m = out.numel();
  if (m == 0) return;
  const int64_t r = in.numel() / m;
  LOWBIT_CHECK(r >= 1 && r * m == in.numel(), "reduce kernel: input of ", in.numel(),
               " elements is not (", m, ", R) with R >= 1");
  const bool want_index = op == core::ReduceOp::argmax || op == core::ReduceOp::argmin;
  LOWBIT_CHECK(out.dtype() == (want_index ? DType::i64 : in.dtype()),
               "reduce kernel: output dtype ", out.dtype(), " does not fit input dtype ",
               in.dtype());
  const int device = out.device().index;
  DeviceGuard guard(device);
  cudaStream_t s = stream_of(device);
  LOWBIT_DISPATCH_ALL(in.dtype(), "reduce", [&] {
    const scalar_t* x = static_cast<const scalar_t*>(in.raw_data());
    scalar_t* out_value = want_index ? nullptr : static_cast<scalar_t*>(out.raw_data());
    int64_t* out_index = want_index ? static_cast<int64_t*>(out.raw_data()) : nullptr;
    switch (op) {
      case core::ReduceOp::sum:
        reduce_sum_cuda<scalar_t>(x, out_value, m, r, s);
        break;
      case core::ReduceOp::max:
      case core::ReduceOp::argmax:
        reduce_extreme_cuda<scalar_t, true>(x, out_value, out_index, m, r, s);
        break;
      case core::ReduceOp::min:
      case core::ReduceOp::argmin:
        reduce_extreme_cuda<scalar_t, false>(x, out_value, out_index, m, r, s);
        break;
      default:
        LOWBIT_FAIL("reduce kernel: unknown op ", int(op));
    }
  });
}

}  // namespace

LOWBIT_REGISTER_KERNEL(core::reduce_stub, cuda, reduce_cuda);

}  // namespace lowbit::cuda
