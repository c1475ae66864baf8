// The uniform affine quantizer with observers ("uniform"): scale and zero-point come from the
// observed range through calc_qparams (docs/methods.md, "Observers") and are not learned; the
// forward is the fused fake_quantize (2.1) with the straight-through mask (2.2). PyTorch's
// FakeQuantize with MinMax / MovingAverageMinMax / percentile / MSE observers.
//
// Options (besides the shared role, bits, signed, narrow_range, per_channel, axis, channels):
//   observer      minmax | ema | percentile | mse | kl   (default: weights minmax, activations ema)
//   symmetric     true | false                      (default: weights true, activations false)
//   ema_constant  (0, 1], default 0.01               (ema)
//   percentile_low, percentile_high  [0, 100], default 0.01, 99.99   (percentile)
//   mse_steps     T >= 1, default 100                (mse)
//   kl_bins       histogram bins of |x|, default 2048 (kl)
//   max_values    values kept exactly before histograms, default 2^24 (percentile, mse, kl)
// Buffers: scale (C) f32, zero_point (C) i32, min_val (C) f32, max_val (C) f32, C = channels.
// minmax and ema observe every training step unless frozen; percentile and mse observe while
// calibrating (or the first training batch when nothing was calibrated). Quantizing in eval mode
// before anything was observed is an error.
#pragma once

#include <memory>
#include <string>
#include <utility>

#include "quant/observer.h"
#include "quant/quantizer.h"

namespace lowbit::quant {

class UniformQuantizer : public Quantizer {
 public:
  explicit UniformQuantizer(OptionReader& r);
  std::string type_name() const override { return "UniformQuantizer"; }

  // The current qparams (recomputed from the statistics when they changed).
  const Tensor& scale();
  const Tensor& zero_point();
  const Tensor& min_val() const { return min_val_; }
  const Tensor& max_val() const { return max_val_; }
  bool symmetric() const { return symmetric_; }
  const Observer& observer() const { return *observer_; }
  // Scales, plus zero-points when asymmetric (docs/methods.md, "Accounting").
  std::optional<IntegerForm> integer_form() override;
  int64_t inference_scalars() const override {
    return Quantizer::inference_scalars() * (symmetric_ ? 1 : 2);
  }

 protected:
  // For quantizers built on this one (pow2): their own traits.
  UniformQuantizer(OptionReader& r, const QuantizerTraits& traits);

  Tensor quantize(const Tensor& x) override;
  void calibrate(const Tensor& x) override;
  // Fixes the range of what was calibrated into min_val/max_val (percentile, mse, kl compute it
  // from their stored values here), so that writing the buffers afterwards (a distributed run
  // broadcasts rank 0's) decides the qparams, not this process's stored values.
  void end_calibration() override;
  std::string options_repr() const override;
  // Turns the observed range (f32 (C) each) into {scale f32 (C), zero_point i32 (C)}. The
  // default is calc_qparams (docs/methods.md, "Observers"); a subclass may adjust the result (pow2
  // rounds the scale to a power of two).
  virtual std::pair<Tensor, Tensor> compute_qparams(const Tensor& min_val, const Tensor& max_val);

 private:
  void observe(const Tensor& x);
  bool has_statistics();
  void update_qparams();

  std::unique_ptr<Observer> observer_;
  bool symmetric_ = false;
  Tensor scale_, zero_point_, min_val_, max_val_;
  bool has_stats_ = false;  // host mirror of "min_val <= max_val somewhere", avoids syncs
  bool stale_ = false;      // statistics changed since scale/zero_point were computed
};

}  // namespace lowbit::quant
