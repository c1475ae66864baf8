// BatchNorm2d CUDA kernels. Column sums: a (32 channels x 8 rows) block tile walks its slice of
// rows, accumulating in double, reduces the 8 row-lanes in shared memory and writes one partial
// per (row block, channel); a second small kernel adds the partials in order. No atomics, so
// the sums are deterministic. The per-element math is detail::BnStatsTerm / BnBackwardTerm /
// bn_affine / bn_grad_input from batchnorm.h, shared with the CPU.
#include "core/ops.h"
#include "cuda/launch.cuh"
#include "layers/batchnorm.h"

namespace lowbit::layers::detail {

namespace {

constexpr int kTileC = 32;
constexpr int kTileR = 8;
constexpr int64_t kMaxRowBlocks = 256;
constexpr int kFinishBlock = 256;  // threads per block of the pass that adds the partials

template <typename T, typename A = bn_acc_t<T>>
__global__ void bn_column_partials_kernel(const T* __restrict__ x, const T* __restrict__ dy,
                                          const T* __restrict__ y, const A* __restrict__ mean,
                                          const A* __restrict__ invstd, int64_t m, int64_t c,
                                          bool backward, bool relu, double* __restrict__ partial) {
  __shared__ double smem[2][kTileR][kTileC];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t ch = int64_t(blockIdx.x) * kTileC + tx;
  double acc0 = 0.0, acc1 = 0.0;
  if (ch < c) {
    const BnStatsTerm stats;
    const BnBackwardTerm bwd{relu};
    const A mu = mean[ch];  // backward: the mean; forward: the shift of BnStatsTerm
    const A is = backward ? invstd[ch] : A(0);
    for (int64_t r = int64_t(blockIdx.y) * kTileR + ty; r < m; r += int64_t(gridDim.y) * kTileR) {
      const int64_t i = r * c + ch;
      double out[2];
      if (backward) {
        bwd(A(opmath_t<T>(x[i])), A(opmath_t<T>(dy[i])), y ? A(opmath_t<T>(y[i])) : A(1), mu, is,
            out);
      } else {
        stats(A(opmath_t<T>(x[i])), A(0), A(0), mu, A(0), out);
      }
      acc0 += out[0];
      acc1 += out[1];
    }
  }
  smem[0][ty][tx] = acc0;
  smem[1][ty][tx] = acc1;
  __syncthreads();
  if (ty == 0 && ch < c) {
    double s0 = 0.0, s1 = 0.0;
    for (int k = 0; k < kTileR; ++k) {
      s0 += smem[0][k][tx];
      s1 += smem[1][k][tx];
    }
    partial[(int64_t(blockIdx.y) * 2 + 0) * c + ch] = s0;
    partial[(int64_t(blockIdx.y) * 2 + 1) * c + ch] = s1;
  }
}

__global__ void bn_column_finish_kernel(const double* __restrict__ partial, int64_t blocks,
                                        int64_t c, double* __restrict__ sums) {
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // over 2*c
  if (k >= 2 * c) return;
  const int64_t which = k / c, ch = k % c;
  double s = 0.0;
  for (int64_t b = 0; b < blocks; ++b) s += partial[(b * 2 + which) * c + ch];
  sums[k] = s;
}

template <typename T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.raw_data()) : nullptr;
}

void bn_column_sums_cuda(const Tensor& x, const Tensor& dy, const Tensor& y, const Tensor& mean,
                         const Tensor& invstd, bool backward, bool relu, const Tensor& sums) {
  const int dev = x.device().index;
  cuda::DeviceGuard guard(dev);
  cudaStream_t s = cuda::stream_of(dev);
  const int64_t c = x.size(-1), m = x.numel() / c;
  const int64_t row_blocks =
      std::max<int64_t>(1, std::min<int64_t>(kMaxRowBlocks, (m + kTileR - 1) / kTileR));
  Tensor partial = empty({row_blocks, 2, c}, TensorOptions(DType::f64, x.device()));
  LOWBIT_DISPATCH_FLOATING(x.dtype(), "batch_norm (cuda)", [&] {
    using acc_t = bn_acc_t<scalar_t>;
    dim3 grid(unsigned((c + kTileC - 1) / kTileC), unsigned(row_blocks));
    dim3 block(kTileC, kTileR);
    bn_column_partials_kernel<scalar_t><<<grid, block, 0, s>>>(
        ptr_or_null<scalar_t>(x), ptr_or_null<scalar_t>(dy), ptr_or_null<scalar_t>(y),
        ptr_or_null<acc_t>(mean), ptr_or_null<acc_t>(invstd), m, c, backward, relu,
        static_cast<double*>(partial.raw_data()));
    LOWBIT_LAUNCH_CHECK();
  });
  bn_column_finish_kernel<<<cuda::blocks_to_cover(2 * c, kFinishBlock), kFinishBlock, 0, s>>>(
      static_cast<const double*>(partial.raw_data()), row_blocks, c,
      static_cast<double*>(sums.raw_data()));
  LOWBIT_LAUNCH_CHECK();
}

void bn_affine_cuda(const Tensor& x, const Tensor& a, const Tensor& b, bool relu, const Tensor& y) {
  const int dev = x.device().index;
  cuda::DeviceGuard guard(dev);
  const int64_t c = x.size(-1);
  LOWBIT_DISPATCH_FLOATING(x.dtype(), "batch_norm (cuda)", [&] {
    using acc_t = bn_acc_t<scalar_t>;
    const scalar_t* px = static_cast<const scalar_t*>(x.raw_data());
    scalar_t* py = static_cast<scalar_t*>(y.raw_data());
    const acc_t* pa = static_cast<const acc_t*>(a.raw_data());
    const acc_t* pb = static_cast<const acc_t*>(b.raw_data());
    cuda::launch_elementwise(
        x.numel(),
        [=] __device__(int64_t i) {
          const int64_t ch = i % c;
          py[i] = scalar_t(bn_affine(acc_t(opmath_t<scalar_t>(px[i])), pa[ch], pb[ch], relu));
        },
        cuda::stream_of(dev));
  });
}

void bn_grad_input_cuda(const Tensor& x, const Tensor& dy, const Tensor& y, const Tensor& a,
                        const Tensor& b, const Tensor& d, const Tensor& mean, bool relu,
                        const Tensor& dx) {
  const int dev = x.device().index;
  cuda::DeviceGuard guard(dev);
  const int64_t c = x.size(-1);
  LOWBIT_DISPATCH_FLOATING(x.dtype(), "batch_norm backward (cuda)", [&] {
    using acc_t = bn_acc_t<scalar_t>;
    const scalar_t* px = static_cast<const scalar_t*>(x.raw_data());
    const scalar_t* pdy = static_cast<const scalar_t*>(dy.raw_data());
    const scalar_t* py = ptr_or_null<scalar_t>(y);
    scalar_t* pdx = static_cast<scalar_t*>(dx.raw_data());
    const acc_t* pa = static_cast<const acc_t*>(a.raw_data());
    const acc_t* pb = static_cast<const acc_t*>(b.raw_data());
    const acc_t* pd = static_cast<const acc_t*>(d.raw_data());
    const acc_t* pm = static_cast<const acc_t*>(mean.raw_data());
    cuda::launch_elementwise(
        x.numel(),
        [=] __device__(int64_t i) {
          const int64_t ch = i % c;
          const acc_t yv = py ? acc_t(opmath_t<scalar_t>(py[i])) : acc_t(1);
          pdx[i] = scalar_t(bn_grad_input(acc_t(opmath_t<scalar_t>(px[i])),
                                          acc_t(opmath_t<scalar_t>(pdy[i])), yv, pa[ch], pb[ch],
                                          pd[ch], pm[ch], relu));
        },
        cuda::stream_of(dev));
  });
}

}  // namespace

LOWBIT_REGISTER_KERNEL(bn_column_sums_stub, cuda, bn_column_sums_cuda);
LOWBIT_REGISTER_KERNEL(bn_affine_stub, cuda, bn_affine_cuda);
LOWBIT_REGISTER_KERNEL(bn_grad_input_stub, cuda, bn_grad_input_cuda);

}  // namespace lowbit::layers::detail
