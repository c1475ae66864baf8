// DSQ, Differentiable Soft Quantization (Gong et al. 2019; docs/methods.md, "DSQ"), registered as
// "dsq". Learned clip bounds l < u and characteristic alpha in (0, 1); n = 2^b - 1 intervals of
// width Delta = (u - l) / n. The forward is the true quantizer, x_hat = l + Delta * round(y) with
// y = (clamp(x, l, u) - l) / Delta; the backward goes through the soft staircase
//   soft(y) = i + 0.5 + 0.5 * sc * tanh(kk * (y - i - 0.5)),  i = min(floor(y), n - 1),
//   kk = ln(2/alpha - 1), sc = 1 / (1 - alpha),
// (x_hat = l + Delta * soft(y) inside [l, u], with i held constant; l below, u above), giving in
// one fused pass dx and, reduced per channel, dl, du and dalpha:
//   dx = soft'(y) 1[l <= x <= u]
//   dl = 1 - soft/n - soft' + soft' y/n (inside), 1 (x < l), 0 (x > u)
//   du = soft/n - soft' y/n (inside), 0 (x < l), 1 (x > u)
//   dalpha = Delta * dsoft/dalpha (inside), 0 outside.
// Options: bits (default 4), alpha (initial, default 0.2), learn_alpha (default true).
// Parameters: lower (C), upper (C), alpha (C) (a buffer when not learned). Buffers: initialized.
// Initialisation: l, u = min, max of the first batch (activations) or of the weights, over every
// calibration batch when calibrated. clamp_parameters() keeps alpha in [1e-4, 0.5] and u > l.
#pragma once

#include <string>

#include "core/hd.h"
#include "core/math.h"
#include "quant/fake_quant.h"
#include "quant/fused.h"
#include "quant/learned_range.h"
#include "quant/quantizer.h"

namespace lowbit::quant {

struct DsqParams {
  Tensor lower, upper, alpha;  // (C) acc dtype
  int64_t bits = 4;
};

template <typename A>
struct DsqOp {
  using Params = DsqParams;
  static constexpr const char* kName = "dsq_quantize";
  static constexpr int kTerms = 3;  // dl, du, dalpha
  const A* lower;
  const A* upper;
  const A* alpha;
  A n;
  explicit DsqOp(const Params& p)
      : lower(p.lower.data<A>()),
        upper(p.upper.data<A>()),
        alpha(p.alpha.data<A>()),
        n(A((int64_t(1) << p.bits) - 1)) {}
  struct Channel {
    A l, u, delta, n, al, kk, sc;  // delta NaN unless u > l
    LOWBIT_HD A forward(A x) const {
      const A y = (qmath::clamp(x, l, u) - l) / delta;
      return l + delta * qmath::round_half_even(y);
    }
    LOWBIT_HD A backward(A x, A dy, A* terms) const {
      if (x < l || x > u) {
        terms[0] = x < l ? dy : A(0);
        terms[1] = x > u ? dy : A(0);
        terms[2] = A(0);
        return A(0);
      }
      const A y = (x - l) / delta;
      const A fl = qmath::floor(y);
      const A i = fl < n - A(1) ? fl : n - A(1);
      const A t = y - i - A(0.5);
      const A th = math::tanh(kk * t);
      const A soft = i + A(0.5) + A(0.5) * sc * th;
      const A dsoft = A(0.5) * sc * kk * (A(1) - th * th);
      const A dsoft_dalpha = A(0.5) * (th / ((A(1) - al) * (A(1) - al)) -
                                       sc * t * (A(1) - th * th) * A(2) / (al * (A(2) - al)));
      terms[0] = dy * (A(1) - soft / n - dsoft + dsoft * y / n);
      terms[1] = dy * (soft / n - dsoft * y / n);
      terms[2] = dy * delta * dsoft_dalpha;
      return dy * dsoft;
    }
  };
  LOWBIT_HD Channel channel(int64_t c) const {
    const A l = lower[c], u = upper[c], al = alpha[c];
    const A delta = checked_scale((u - l) / n);
    // kk = ln(2/alpha - 1) = k * Delta, sc = 1 / (1 - alpha) = 1 / tanh(kk / 2) (docs/methods.md,
    // "DSQ")
    return {l, u, delta, n, al, math::log(A(2) / al - A(1)), A(1) / (A(1) - al)};
  }
  LOWBIT_HD A finish(int, int64_t, double s) const { return A(s); }
};

// DSQ fake quantization of x with per-tensor ((1)) or per-channel ((C) along axis) lower, upper
// and alpha; differentiable in x, lower, upper and alpha.
Tensor dsq_quantize(const Tensor& x, const Tensor& lower, const Tensor& upper, const Tensor& alpha,
                    int64_t bits, int64_t axis = 0);

class DsqQuantizer : public LearnedRangeQuantizer {
 public:
  explicit DsqQuantizer(OptionReader& r);
  std::string type_name() const override { return "DsqQuantizer"; }
  Tensor& lower() { return lower_; }
  Tensor& upper() { return upper_; }
  Tensor& alpha() { return alpha_; }
  void clamp_parameters() override;

 protected:
  Tensor quantize_learned(const Tensor& x) override;
  void init_from(const Tensor& x) override;
  std::string options_repr() const override;

 private:
  Tensor lower_, upper_, alpha_;
  bool learn_alpha_ = true;
};

}  // namespace lowbit::quant
