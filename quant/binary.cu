// CUDA kernels of the binary quantizer (binary.h), run by fused.cuh's CudaLaunch.
#include "quant/binary.h"
#include "quant/fused.cuh"

namespace lowbit::quant {
LOWBIT_REGISTER_FUSED_OP(BinaryOp, cuda, CudaLaunch);
LOWBIT_REGISTER_FUSED_OP(BinarySumOp, cuda, CudaLaunch);
}  // namespace lowbit::quant
