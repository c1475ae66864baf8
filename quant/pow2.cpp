// Pow2Quantizer: uniform qparams, then the scale rounded to a power of two. Registered as
// "pow2"; the CUDA kernel of Pow2ScaleOp is generated from its CPU registration below.
#include "quant/pow2.h"

#include "core/autograd.h"
#include "quant/fused_cpu.h"

namespace lowbit::quant {

LOWBIT_REGISTER_CHANNEL_OP(Pow2ScaleOp, cpu, CpuLaunch);

std::pair<Tensor, Tensor> Pow2Quantizer::compute_qparams(const Tensor& min_val,
                                                         const Tensor& max_val) {
  auto [scale, zero_point] = UniformQuantizer::compute_qparams(min_val, max_val);
  CalcQParamsArgs a{min_val.reshape({min_val.numel()}).contiguous(),
                    max_val.reshape({max_val.numel()}).contiguous(),
                    scale,
                    zero_point,
                    spec().range,
                    symmetric()};
  channel_map<Pow2ScaleOp>(scale.device(), scale.numel(), a);
  return {scale, zero_point};
}

LOWBIT_REGISTER_QUANTIZER("pow2", Pow2Quantizer,
                          "pow2: the uniform quantizer with scales rounded to 2^round(log2 s)");

}  // namespace lowbit::quant
