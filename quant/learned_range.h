// LearnedRangeQuantizer: what quantizers with a learned range (LSQ, LSQ+, DSQ, ...) share: the
// initialisation of the learned parameters from data (every calibration batch, else the first
// tensor quantized), the "initialized" flag that a state dict carries (a buffer, with a host
// mirror that saves a device sync per step), the running range over the calibration batches,
// frozen parameters that get no gradient, and the in-place clamps of clamp_parameters().
//
// A subclass gives the math and its init rule:
//   init_from(x)       one batch (calibration, or the first tensor when uncalibrated): set the
//                      learned parameters from x (and what earlier batches gathered) and call
//                      mark_initialized(), now or in finish_init();
//   finish_init()      calibration ended, or the first tensor was taken (optional);
//   quantize_learned   the fake quantization with the current parameters (learned(p) of each).
// and registers its parameters and the buffer "initialized" (initialized_) in the order it wants
// in the state dict.
#pragma once

#include <utility>

#include "core/tensor.h"
#include "quant/quantizer.h"

namespace lowbit::quant {

class LearnedRangeQuantizer : public Quantizer {
 public:
  // Whether the learned parameters were set from data (or loaded with the flag set).
  bool initialized();

 protected:
  LearnedRangeQuantizer(OptionReader& r, const QuantizerTraits& traits);

  virtual void init_from(const Tensor& x) = 0;
  virtual void finish_init() {}
  virtual Tensor quantize_learned(const Tensor& x) = 0;

  void mark_initialized();  // initialized_ = 1, host mirror included
  // p, or p detached (no gradient) while frozen or when it is not learned.
  Tensor learned(const Tensor& p, bool learnable = true) const {
    return frozen() || !learnable ? p.detach() : p;
  }
  // The per-channel (min, max) of x and of every batch since the initialisation began (the
  // calibration batches), f32 (C) on x's device.
  std::pair<Tensor, Tensor> running_min_max(const Tensor& x);
  // p = clamp(p, lo, hi) in place, outside autograd (clamp_parameters()).
  static void clamp_in_place(Tensor& p, double lo, double hi);

  Tensor initialized_;  // () i64

 private:
  Tensor quantize(const Tensor& x) final;
  void calibrate(const Tensor& x) final;
  void end_calibration() final;

  bool init_host_ = false;  // host mirror of initialized_
  Tensor run_min_, run_max_;
};

}  // namespace lowbit::quant
