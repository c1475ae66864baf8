// Power-of-two scales ("pow2"): the uniform quantizer with every scale rounded to
// 2^round(log2 s) (fixed-point hardware shifts instead of multiplying), straight-through
// gradient. A plugin that reuses an existing quantizer (UniformQuantizer: observers, buffers,
// fused fake_quantize) and adds one small per-channel kernel of its own (Pow2ScaleOp, registered
// for the CPU in pow2.cpp; the CUDA registration is generated from that line).
//
// Options: those of "uniform". For asymmetric ranges the zero-point is recomputed with the
// rounded scale, z = clamp(qmin - round(x_min' / s), qmin, qmax) (docs/methods.md, "Observers").
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "core/hd.h"
#include "core/math.h"
#include "quant/fake_quant.h"
#include "quant/fused.h"
#include "quant/uniform.h"

namespace lowbit::quant {

// 2^round(log2 s) for s > 0, exactly: with s = f * 2^e, f in [0.5, 1), log2 s = e + log2 f
// rounds to e when f > 1/sqrt(2) and to e - 1 below (f = 1/sqrt(2) is not a float, so there are
// no ties). frexp/ldexp are exact on both backends, unlike log2/exp2.
template <typename A>
LOWBIT_HD A round_pow2(A s) {
  int e = 0;
  const A f = qmath::frexp(s, &e);
  return qmath::ldexp(A(1), double(f) > 0.70710678118654752440 ? e : e - 1);
}

// Params: calc_qparams' (min_val, max_val, scale and zero_point (C), range, symmetric), with
// scale and zero_point rounded / recomputed in place.
struct Pow2ScaleOp : CalcQParamsOp {
  static constexpr const char* kName = "pow2_scale";
  using CalcQParamsOp::CalcQParamsOp;
  LOWBIT_HD void operator()(int64_t c) const {
    const float s = round_pow2(scale[c]);
    scale[c] = s;
    if (symmetric || !(min_val[c] <= max_val[c])) return;  // nothing observed: keep (1, 0)
    zero_point[c] = affine_zero_point(min_val[c], s, qmin, qmax);
  }
};

class Pow2Quantizer : public UniformQuantizer {
 public:
  explicit Pow2Quantizer(OptionReader& r) : UniformQuantizer(r) {}
  std::string type_name() const override { return "Pow2Quantizer"; }

 protected:
  std::pair<Tensor, Tensor> compute_qparams(const Tensor& min_val, const Tensor& max_val) override;
};

}  // namespace lowbit::quant
