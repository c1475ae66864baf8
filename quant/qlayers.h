// Quantized layers: QConv2d and QLinear (a weight quantizer and an input quantizer as children
// "weight_quantizer" and "input_quantizer"), QConv2d's Conv+BN folding for QAT (docs/methods.md,
// "BN folding for QAT"), and QuantAct, an activation followed by a quantizer for hand-built models.
//
// QConv2d and QLinear derive from Conv2d and Linear and keep their parameter names, so a float
// checkpoint loads into a quantized model (the quantizer keys aside) and parents that hold the
// layer through a layers::Child handle call the quantized forward after quantize_model swaps it.
#pragma once

#include <memory>
#include <string>

#include "layers/basic.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "quant/quantizer.h"

namespace lowbit::quant {

class QConv2d : public layers::Conv2d {
 public:
  // Takes over `src`'s options and tensors (shared, not copied). weight_q: role weight (its
  // per-channel axis is 0, K channels); input_q: role activation, or null for a float input.
  QConv2d(layers::Conv2d& src, QuantizerPtr weight_q, QuantizerPtr input_q);

  // docs/methods.md, "BN folding for QAT", QAT fused ConvBn (PyTorch's _forward_approximate): with
  // sf = gamma / std_r the conv uses FQ(W * sf) and its output is divided by sf (plus the conv
  // bias) before `bn`, which stays where it is in the model and runs as usual (batch statistics in
  // training, running statistics in eval or once frozen). In eval the result is the folded
  // inference graph conv(x, FQ(W_f)) + b_f. `bn` must follow this conv directly and have
  // out_channels features.
  void fold_bn(const std::shared_ptr<layers::BatchNorm2d>& bn);
  layers::BatchNorm2d* folded_bn() const { return bn_.lock().get(); }

  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "QConv2d"; }
  std::string extra_repr() const override;

  Quantizer* weight_quantizer() const { return weight_q_.get(); }
  Quantizer* input_quantizer() const { return input_q_.get(); }
  // The weight the convolution uses: FQ(W * sf) with folding, FQ(W) without (through autograd),
  // times SAT's constant when sat_rescale is on.
  Tensor quantized_weight();
  // SAT's rescaling of the quantized weight (quant/sat.h, docs/methods.md, "SAT"), on in training
  // and eval.
  void set_sat_rescale(bool on) { sat_rescale_ = on; }
  bool sat_rescale() const { return sat_rescale_; }

 private:
  Tensor fold_factor() const;                 // sf (K), differentiable in gamma
  Tensor quantized_weight(const Tensor& sf);  // sf undefined: no folding

  QuantizerPtr weight_q_, input_q_;
  std::weak_ptr<layers::BatchNorm2d> bn_;
  bool sat_rescale_ = false;
};

class QLinear : public layers::Linear {
 public:
  QLinear(layers::Linear& src, QuantizerPtr weight_q, QuantizerPtr input_q);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "QLinear"; }
  std::string extra_repr() const override;
  Quantizer* weight_quantizer() const { return weight_q_.get(); }
  Quantizer* input_quantizer() const { return input_q_.get(); }
  // FQ(W), times SAT's constant when sat_rescale is on (quant/sat.h).
  Tensor quantized_weight();
  void set_sat_rescale(bool on) { sat_rescale_ = on; }
  bool sat_rescale() const { return sat_rescale_; }

 private:
  QuantizerPtr weight_q_, input_q_;
  bool sat_rescale_ = false;
};

// An activation (relu | relu6 | identity) followed by a quantizer (child "quantizer"), for
// models that place the activation quantizer after the activation instead of at the next
// layer's input (PACT replaces the ReLU this way).
class QuantAct : public layers::Module {
 public:
  QuantAct(std::string activation, QuantizerPtr q);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "QuantAct"; }
  std::string extra_repr() const override { return activation_; }
  Quantizer* quantizer() const { return q_.get(); }

 private:
  std::string activation_;
  QuantizerPtr q_;
};

}  // namespace lowbit::quant
