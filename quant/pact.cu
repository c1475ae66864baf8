// CUDA kernels of PACT (pact.h), run by fused.cuh's CudaLaunch.
#include "quant/fused.cuh"
#include "quant/pact.h"

namespace lowbit::quant {
LOWBIT_REGISTER_FUSED_OP(PactOp, cuda, CudaLaunch);
}  // namespace lowbit::quant
