// PACT, parameterized clipping activation (Choi et al. 2018; docs/methods.md, "PACT"), registered
// as "pact", and its calibrated gradient CG-PACT (Jin et al., SAT; docs/methods.md, "CG-PACT",
// docs/methods.md), registered as "cg_pact" (also reachable as pact with gradient: calibrated).
// Activations only, per-tensor, unsigned: with a = |alpha| and n = 2^b - 1,
//   y = clamp(x, 0, a),  y_q = round(y * n / a) * a / n,  dy_q/dx = 1[0 <= x < a],
//   dy_q/dalpha = 1[x >= a]                                 (gradient = pact)
//               = 0 (x < 0), (y_q - x) / a (inside), 1 (x >= a)   (gradient = calibrated)
// times sign(alpha) (the forward uses |alpha|), plus 2 * alpha_decay * alpha from the L2
// regulariser alpha_decay * alpha^2 (docs/methods.md, "PACT"), added by the backward itself so the
// trainer needs no extra loss term: set alpha_decay to the run's weight decay and keep alpha out of
// the optimizer's weight decay. One fused pass gives dx and dalpha (quant/fused.h).
//
// Options: bits (default 4), alpha (initial clip, default 10 for pact, 8 for cg_pact as the SAT
// code does for convolutions; its linear layers use 10, a quant rule sets that), alpha_decay
// (default 0), gradient (pact: pact | calibrated, default pact; cg_pact is always calibrated and
// does not read it). Parameters: alpha (1). Both run the one fused op PactOp.
#pragma once

#include <string>

#include "core/hd.h"
#include "core/math.h"
#include "quant/fake_quant.h"
#include "quant/fused.h"
#include "quant/quantizer.h"

namespace lowbit::quant {

struct PactParams {
  Tensor alpha;  // (1) acc dtype
  int64_t bits = 4;
  bool calibrated = false;
  double alpha_decay = 0.0;
};

template <typename A>
struct PactOp {
  using Params = PactParams;
  static constexpr const char* kName = "pact_quantize";
  static constexpr int kTerms = 1;
  const A* alpha;
  A n;
  bool calibrated;
  double decay;
  explicit PactOp(const Params& p)
      : alpha(p.alpha.data<A>()),
        n(A((int64_t(1) << p.bits) - 1)),
        calibrated(p.calibrated),
        decay(p.alpha_decay) {}
  struct Channel {
    A a, n;  // a = |alpha|, NaN unless positive
    bool calibrated;
    LOWBIT_HD A forward(A x) const {
      const A y = qmath::clamp(x, A(0), a);
      return qmath::round_half_even(y * n / a) * a / n;
    }
    LOWBIT_HD A backward(A x, A dy, A* terms) const {
      const bool inside = A(0) <= x && x < a;
      if (x >= a)
        terms[0] = dy;
      else if (calibrated && inside)
        terms[0] = dy * (forward(x) - x) / a;
      else
        terms[0] = A(0);
      return inside ? dy : A(0);
    }
  };
  LOWBIT_HD Channel channel(int64_t) const {
    return {checked_scale(math::fabs(alpha[0])), n, calibrated};
  }
  LOWBIT_HD A finish(int, int64_t, double s) const {
    const double al = double(alpha[0]);
    return A(s * (al >= 0.0 ? 1.0 : -1.0) + 2.0 * decay * al);
  }
};

// PACT fake quantization of x (any shape, floating) with clip alpha ((1), floating),
// differentiable in x and alpha.
Tensor pact_quantize(const Tensor& x, const Tensor& alpha, int64_t bits, bool calibrated = false,
                     double alpha_decay = 0.0);

class PactQuantizer : public Quantizer {
 public:
  explicit PactQuantizer(OptionReader& r);
  // cg_pact: the calibrated gradient always, initial clip `alpha0` unless the options give one.
  PactQuantizer(OptionReader& r, double alpha0);
  std::string type_name() const override { return "PactQuantizer"; }
  Tensor& alpha() { return alpha_; }
  bool calibrated() const { return calibrated_; }
  // Codes in [0, n] with scale s = |alpha| / n (f32) and zero point 0: the forward's codes
  // round(clamp(x, 0, a) n / a) are clamp(round(x / s), 0, n) but where x n / a and x / s round
  // differently next to a tie, and (q a) / n and q s differ by at most one f32 rounding
  // (docs/export.md, ONNX).
  std::optional<IntegerForm> integer_form() override;

 protected:
  Tensor quantize(const Tensor& x) override;
  std::string options_repr() const override;

 private:
  void init(OptionReader& r, double alpha0);

  Tensor alpha_;
  bool calibrated_ = false;
  double alpha_decay_ = 0.0;
};

// "cg_pact": PACT with the calibrated clip gradient (docs/methods.md, "CG-PACT"), alpha0 = 8.
class CgPactQuantizer : public PactQuantizer {
 public:
  explicit CgPactQuantizer(OptionReader& r) : PactQuantizer(r, 8.0) {}
  std::string type_name() const override { return "CgPactQuantizer"; }
};

}  // namespace lowbit::quant
