// CUDA kernels of fake_quant.h: the affine, LSQ and LSQ+ ops and the per-channel qparams, run by
// the CudaLaunch templates of fused.cuh. Built with --fmad=false (quant/CMakeLists.txt) so the
// forward matches the CPU bit for bit.
#include "quant/fake_quant.h"
#include "quant/fused.cuh"

namespace lowbit::quant {

LOWBIT_REGISTER_FUSED_OP(AffineFakeQuantOp, cuda, CudaLaunch);
LOWBIT_REGISTER_FUSED_OP(LsqOp, cuda, CudaLaunch);
LOWBIT_REGISTER_FUSED_OP(LsqPlusOp, cuda, CudaLaunch);
LOWBIT_REGISTER_CHANNEL_OP(CalcQParamsOp, cuda, CudaLaunch);

}  // namespace lowbit::quant
