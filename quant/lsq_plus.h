// LSQ+, LSQ with a learned offset (Bhalgat et al. 2020; docs/methods.md, "LSQ+"), registered as
// "lsq_plus": x_hat = clamp(round((x - beta) / s), qmin, qmax) * s + beta; the fused kernel returns
// dx, ds and dbeta in one pass, both parameter gradients scaled by LSQ's g.
//
// Options (besides the shared ones):
//   grad_scale    auto | elements | none (as for "lsq")
//   learn_offset  true | false   (default: activations true, weights false; when false the
//                 offset is a buffer: 0 for weights, the initial value for activations)
// Parameters: scale (C), offset (C) (a buffer when not learned). Buffers: initialized ().
// Initialisation (docs/methods.md, "LSQ+"): activations s = (x_max - x_min) / (qmax - qmin),
// beta = x_min - s * qmin from the min-max of the first batch (of every calibration batch when
// calibrated); weights beta = 0, s = max(|mu - 3 sigma|, |mu + 3 sigma|) / 2^(b-1) from the
// mean and (unbiased) standard deviation of the weights, per channel when per-channel.
#pragma once

#include <string>

#include "quant/lsq.h"

namespace lowbit::quant {

class LsqPlusQuantizer : public LsqQuantizerBase {
 public:
  explicit LsqPlusQuantizer(OptionReader& r);
  std::string type_name() const override { return "LsqPlusQuantizer"; }
  Tensor& offset() { return offset_; }
  // s and beta.
  int64_t inference_scalars() const override { return 2 * Quantizer::inference_scalars(); }

 protected:
  Tensor quantize_learned(const Tensor& x) override;
  void init_from(const Tensor& x) override;
  std::string options_repr() const override;

 private:
  Tensor offset_;
  bool learn_offset_ = false;
};

}  // namespace lowbit::quant
