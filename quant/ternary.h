// Ternary weights (TWN, Li et al. 2016; docs/methods.md, "Binary and ternary"), registered as
// "ternary":
//   Delta_t = threshold * mean|w| (threshold 0.7), a = mean(|w| over |w| > Delta_t),
//   w_t = a * sign(w) * 1[|w| > Delta_t],  dL/dw = dL/dw_t (identity straight-through).
// Per output channel when per_channel is on (default off: TWN's per-layer statistics). Delta_t
// and a come from reductions before the fused forward pass. Weights only, no learned
// parameters. Options: bits (2 only), per_channel, axis, threshold (default 0.7).
#pragma once

#include <string>

#include "core/hd.h"
#include "quant/fused.h"
#include "quant/quantizer.h"

namespace lowbit::quant {

struct TernaryParams {
  Tensor delta;  // (C) acc dtype: the threshold Delta_t
  Tensor alpha;  // (C) acc dtype: the scale a
};

template <typename A>
struct TernaryOp {
  using Params = TernaryParams;
  static constexpr const char* kName = "ternarize";
  static constexpr int kTerms = 0;
  const A* delta;
  const A* alpha;
  explicit TernaryOp(const Params& p) : delta(p.delta.data<A>()), alpha(p.alpha.data<A>()) {}
  struct Channel {
    A delta, alpha;
    LOWBIT_HD A forward(A x) const {
      const A ax = x < A(0) ? -x : x;
      return ax > delta ? alpha * qmath::sign(x) : A(0);
    }
    LOWBIT_HD A backward(A, A dy, A*) const { return dy; }
  };
  LOWBIT_HD Channel channel(int64_t c) const { return {delta[c], alpha[c]}; }
  LOWBIT_HD A finish(int, int64_t, double s) const { return A(s); }
};

// Ternarizes x (any shape, floating), per channel along axis or per tensor; differentiable in x
// (identity straight-through).
Tensor ternarize(const Tensor& x, double threshold = 0.7, bool per_channel = false,
                 int64_t axis = 0);

class TernaryQuantizer : public Quantizer {
 public:
  explicit TernaryQuantizer(OptionReader& r);
  std::string type_name() const override { return "TernaryQuantizer"; }

 protected:
  Tensor quantize(const Tensor& x) override;
  std::string options_repr() const override;

 private:
  double threshold_ = 0.7;
};

}  // namespace lowbit::quant
