// CUDA kernel of random_stub: out[i] = convert<T>(RandomValue(i)), the same Philox4x32-10 value
// the CPU kernel computes (core/philox.h), so a seed gives the same tensor on both devices.
// This file is compiled with --fmad=false (cuda/CMakeLists.txt): otherwise nvcc contracts
// a + (b - a) * u into an FMA, which rounds differently from the host's two operations.
#include <cuda_runtime.h>

#include <cstdint>

#include "core/kernels.h"
#include "cuda/check.h"
#include "cuda/launch.cuh"
#include "cuda/runtime.h"

namespace lowbit::cuda {

namespace {

template <typename T>
void random_typed_cuda(const Tensor& out, const core::RandomValue& rv, cudaStream_t s) {
  T* o = static_cast<T*>(out.raw_data());
  const core::RandomValue value = rv;
  launch_elementwise(
      out.numel(), [=] __device__(int64_t i) { o[i] = convert<T>(value(uint64_t(i))); }, s);
}

void random_cuda(const Tensor& out, const core::RandomValue& rv) {
  LOWBIT_CHECK(out.is_contiguous(), "random kernel: output must be contiguous");
  const int device = out.device().index;
  DeviceGuard guard(device);
  cudaStream_t s = stream_of(device);
  LOWBIT_DISPATCH_ALL(out.dtype(), "random", [&] { random_typed_cuda<scalar_t>(out, rv, s); });
}

}  // namespace

LOWBIT_REGISTER_KERNEL(core::random_stub, cuda, random_cuda);

}  // namespace lowbit::cuda
