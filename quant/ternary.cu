// CUDA kernels of the ternary quantizer (ternary.h), run by fused.cuh's CudaLaunch.
#include "quant/fused.cuh"
#include "quant/ternary.h"

namespace lowbit::quant {
LOWBIT_REGISTER_FUSED_OP(TernaryOp, cuda, CudaLaunch);
}  // namespace lowbit::quant
