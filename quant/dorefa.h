// DoReFa-Net quantizers (Zhou et al. 2016; docs/methods.md, "DoReFa"), registered as "dorefa". With
// quantize_b(r) = round(r * (2^b - 1)) / (2^b - 1) and a straight-through round:
//   weights, b > 1: t = tanh(w), m = max|t| over the layer (a constant), r = t / (2m) + 0.5,
//                   w_q = 2 * quantize_b(r) - 1, dL/dw = dL/dw_q * (1 - t^2) / m;
//                   dorefa_grid = modified uses the SAT/AdaBits grid
//                   min(floor(2^b r), 2^b - 1) / 2^b instead of quantize_b;
//   weights, b = 1: w_q = mean|w| * sign(w) (layer mean, a constant), dL/dw = dL/dw_q;
//   activations:    a_q = quantize_b(clamp(x, 0, 1)), dL/dx = dL/da_q * 1[0 <= x <= 1].
// m and mean|w| come from a reduction over the layer before the fused elementwise pass. No
// learned parameters. Options: role, bits (default 4), dorefa_grid (original | modified,
// weights only).
#pragma once

#include <string>

#include "core/hd.h"
#include "core/math.h"
#include "quant/fused.h"
#include "quant/quantizer.h"

namespace lowbit::quant {

struct DorefaParams {
  Tensor stat;  // (1) acc dtype: m = max|tanh w| (b > 1) or mean|w| (b = 1); unused for activations
  int64_t bits = 4;
  bool weight = true;
  bool modified = false;
};

template <typename A>
struct DorefaOp {
  using Params = DorefaParams;
  static constexpr const char* kName = "dorefa_quantize";
  static constexpr int kTerms = 0;
  const A* stat;
  A n, levels;
  bool weight, one_bit, modified;
  explicit DorefaOp(const Params& p)
      : stat(p.weight ? p.stat.data<A>() : nullptr),
        n(A((int64_t(1) << p.bits) - 1)),
        levels(A(int64_t(1) << p.bits)),
        weight(p.weight),
        one_bit(p.weight && p.bits == 1),
        modified(p.modified) {}
  struct Channel {
    A m, n, levels;  // m: max|tanh w| (b > 1) or mean|w| (b = 1)
    bool weight, one_bit, modified;
    LOWBIT_HD A quantize_b(A r) const { return qmath::round_half_even(r * n) / n; }
    LOWBIT_HD A forward(A x) const {
      if (!weight) return quantize_b(qmath::clamp(x, A(0), A(1)));
      if (one_bit) return m * qmath::sign(x);
      const A t = math::tanh(x);
      const A r = m > A(0) ? t / (A(2) * m) + A(0.5) : A(0.5);
      const A q = modified ? qmath::clamp(qmath::floor(r * levels), A(0), levels - A(1)) / levels
                           : quantize_b(r);
      return A(2) * q - A(1);
    }
    LOWBIT_HD A backward(A x, A dy, A*) const {
      if (!weight) return A(0) <= x && x <= A(1) ? dy : A(0);
      if (one_bit) return dy;
      const A t = math::tanh(x);
      return m > A(0) ? dy * (A(1) - t * t) / m : dy;
    }
  };
  LOWBIT_HD Channel channel(int64_t) const {
    return {weight ? stat[0] : A(0), n, levels, weight, one_bit, modified};
  }
  LOWBIT_HD A finish(int, int64_t, double s) const { return A(s); }
};

// DoReFa fake quantization of x (any shape, floating), differentiable in x.
Tensor dorefa_quantize(const Tensor& x, int64_t bits, bool weight, bool modified_grid = false);

class DorefaQuantizer : public Quantizer {
 public:
  explicit DorefaQuantizer(OptionReader& r);
  std::string type_name() const override { return "DorefaQuantizer"; }

 protected:
  Tensor quantize(const Tensor& x) override;
  std::string options_repr() const override;

 private:
  bool modified_ = false;
};

}  // namespace lowbit::quant
