// LSQ, Learned Step Size Quantization (Esser et al. 2020; docs/methods.md, "LSQ"), registered as
// "lsq": x_hat = clamp(round(x / s), -Qn, Qp) * s with a learned step s, and the gradient dL/ds = g
// * sum(dL/dx_hat * dx_hat/ds), g = 1 / sqrt(N * Qp), from the fused kernel of quant/fake_quant.h.
//
// Options (besides the shared ones; weights default to signed, activations to unsigned):
//   grad_scale  auto | elements | none   auto (default): N = elements per scale for weights,
//               features per sample (H*W*C) for activations (docs/methods.md, "LSQ"'s lowbit
//               default); elements: N = all elements sharing the scale in the batch; none: g = 1.
//   init        lsq | minmax | ema | percentile | mse   lsq (default): the paper's
//               s0 = 2 * mean(|x|) / sqrt(Qp) (docs/methods.md, "LSQ"); an observer name: s0 =
//               max(|x_min|, |x_max|) / ((Qp + Qn) / 2) (signed) or x_max / Qp (unsigned),
//               PyTorch's qparams of the range that observer gives (its own options apply, e.g.
//               mse_steps). The paper's s0 suits 2-4 bits; at 8 bits it clips at ~22x mean|x| and
//               leaves most levels unused, which a short fine-tune does not recover
//               (docs/quantization.md, "LSQ initialisation").
// Parameters: scale (C) f32. Buffers: initialized () i64.
// Initialisation (docs/methods.md, "LSQ"): s0 = 2 * mean(|x|) / sqrt(Qp) from the first tensor it
// sees (the initial weights; the first training batch of activations), or from every calibration
// batch when calibrated; s is kept >= 1e-8 by clamp_parameters() (call after optimizer steps).
#pragma once

#include <memory>
#include <string>

#include "quant/learned_range.h"
#include "quant/observer.h"
#include "quant/quantizer.h"

namespace lowbit::quant {

constexpr double kMinLearnedScale =
    1e-8;  // docs/methods.md, "LSQ": clamp s >= 1e-8 after each step

// What LSQ and LSQ+ share besides the learned-range upkeep (quant/learned_range.h): the learned
// scale (C), clamped by clamp_parameters(); the grad_scale option and the g it gives. Both default
// to 4 bits. Subclasses register scale_ and initialized_ themselves, keeping their state-dict
// order.
class LsqQuantizerBase : public LearnedRangeQuantizer {
 public:
  Tensor& scale() { return scale_; }
  // g of docs/methods.md, "LSQ" for input x.
  double grad_scale(const Tensor& x) const;
  void clamp_parameters() override;

 protected:
  explicit LsqQuantizerBase(OptionReader& r);

  Tensor scale_;
  std::string grad_scale_mode_;
};

class LsqQuantizer : public LsqQuantizerBase {
 public:
  explicit LsqQuantizer(OptionReader& r);
  std::string type_name() const override { return "LsqQuantizer"; }
  std::optional<IntegerForm> integer_form() override;

 protected:
  Tensor quantize_learned(const Tensor& x) override;
  void init_from(const Tensor& x) override;  // adds x to the calibration statistics
  void finish_init() override;               // init != lsq: the scale from the observed range
  std::string options_repr() const override;

 private:
  void set_scale(const Tensor& s0);
  bool signed_range() const;  // s0 (C) -> scale, marks it initialised

  Tensor abs_sum_;                      // f64 (C): sum of |x| over the calibration batches
  int64_t count_ = 0;                   // elements per channel in abs_sum_
  std::string init_;                    // "lsq" or an observer name
  std::unique_ptr<Observer> observer_;  // init != lsq: the range statistics
  Tensor min_val_,
      max_val_;  // init != lsq: the observer's range, f32 (C); defined once it saw data
};

}  // namespace lowbit::quant
