// CUDA kernels of DSQ (dsq.h), run by fused.cuh's CudaLaunch.
#include "quant/dsq.h"
#include "quant/fused.cuh"

namespace lowbit::quant {
LOWBIT_REGISTER_FUSED_OP(DsqOp, cuda, CudaLaunch);
}  // namespace lowbit::quant
