// CUDA kernels of DoReFa (dorefa.h), run by fused.cuh's CudaLaunch.
#include "quant/dorefa.h"
#include "quant/fused.cuh"

namespace lowbit::quant {
LOWBIT_REGISTER_FUSED_OP(DorefaOp, cuda, CudaLaunch);
}  // namespace lowbit::quant
