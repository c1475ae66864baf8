// Power-of-two scales ("pow2"): the uniform quantizer with every scale rounded to
// 2^round(log2 s) (fixed-point hardware shifts instead of multiplying), straight-through
// gradient. It is the worked example of docs/quantizers.md: a plugin that reuses an existing
// quantizer (UniformQuantizer: observers, buffers, fused fake_quantize) and adds one small
// per-channel kernel of its own (Pow2ScaleOp, CPU in pow2.cpp, CUDA in pow2.cu).
//
// Options: those of "uniform". For asymmetric ranges the zero-point is recomputed with the
// rounded scale, z = clamp(qmin - round(x_min' / s), qmin, qmax) (METHODS 2.3).
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

struct Pow2ScaleArgs {
  Tensor min_val;     // (C) f32, the observed range
  Tensor max_val;     // (C) f32
  Tensor scale;       // (C) f32, rounded in place
  Tensor zero_point;  // (C) i32, recomputed in place unless symmetric
  QuantRange range;
  bool symmetric = false;
};
struct Pow2ScaleOp {
  using Params = Pow2ScaleArgs;
  static constexpr const char* kName = "pow2_scale";
  const float* min_val;
  const float* max_val;
  float* scale;
  int32_t* zero_point;
  float qmin, qmax;
  bool symmetric;
  explicit Pow2ScaleOp(const Params& p)
      : min_val(p.min_val.data<float>()),
        max_val(p.max_val.data<float>()),
        scale(p.scale.data<float>()),
        zero_point(p.zero_point.data<int32_t>()),
        qmin(float(p.range.qmin)),
        qmax(float(p.range.qmax)),
        symmetric(p.symmetric) {}
  LOWBIT_HD void operator()(int64_t c) const {
    const float s = round_pow2(scale[c]);
    scale[c] = s;
    if (symmetric || !(min_val[c] <= max_val[c])) return;  // nothing observed: keep (1, 0)
    const float mn = min_val[c] < 0.0f ? min_val[c] : 0.0f;
    zero_point[c] = int32_t(qmath::clamp(qmin - qmath::round_half_even(mn / s), qmin, qmax));
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
