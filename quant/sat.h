// SAT's constant rescaling of quantized weights (Jin et al.; docs/methods.md, "SAT",
// docs/methods.md):
//   w_sat = w_q / sqrt(n_out * Var[w_q]),   so Var[w_sat] = 1 / n_out,
// n_out = K * R * S for a conv (KRSC weights: the numel over the input channels), out_features for
// a linear layer, Var the unbiased variance over the whole tensor, treated as a constant (no
// gradient flows through it: dL/dw_q = dL/dw_sat / sqrt(n_out * Var[w_q])). QConv2d and QLinear
// apply it after their weight quantizer when the quantization plan says so (quant.sat: the
// classifier always, convolutions with sat.rescale_conv), in training and evaluation alike.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace lowbit::quant {

// n_out of a conv (KRSC) or linear ((out, in)) weight: numel / (input channels per group).
int64_t sat_fan_out(const Tensor& weight);
// The factor 1 / sqrt(n_out * Var[w_q]) as a one-element tensor on w_q's device (no gradient).
// A constant w_q (Var 0) gives factor 1 / sqrt(n_out * 1e-30), i.e. no NaN.
Tensor sat_factor(const Tensor& wq, int64_t n_out);
// w_q * sat_factor(w_q, n_out), differentiable in w_q with the factor held constant.
Tensor sat_rescale(const Tensor& wq, int64_t n_out);

}  // namespace lowbit::quant
