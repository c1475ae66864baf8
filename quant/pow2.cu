// CUDA kernel of the pow2 scale rounding (pow2.h), run by fused.cuh's CudaLaunch.
#include "quant/fused.cuh"
#include "quant/pow2.h"

namespace lowbit::quant {
LOWBIT_REGISTER_CHANNEL_OP(Pow2ScaleOp, cuda, CudaLaunch);
}  // namespace lowbit::quant
