#include "quant/qlayers.h"

#include "core/ops.h"

namespace lowbit::quant {

namespace {

void check_role(const QuantizerPtr& q, QuantRole role, const char* layer, const char* slot) {
  if (!q) return;
  LOWBIT_CHECK_INPUT(q->role() == role, layer, ": the ", slot, " quantizer '", q->name(), "' has role ",
                     role_name(q->role()), ", expected ", role_name(role));
}

std::string quant_repr(const Quantizer* w, const Quantizer* a) {
  std::string s = str_cat(", w_bits=", w ? std::to_string(w->bits()) : std::string("32"));
  s += str_cat(", a_bits=", a && a->enabled() ? std::to_string(a->bits()) : std::string("32"));
  return s;
}

}  // namespace

QConv2d::QConv2d(layers::Conv2d& src, QuantizerPtr weight_q, QuantizerPtr input_q)
    : layers::Conv2d([&] {
        layers::Conv2dOptions o = src.options();
        o.bias = false;  // the source's tensors are taken over below, nothing to draw
        return o;
      }()),
      weight_q_(std::move(weight_q)),
      input_q_(std::move(input_q)) {
  LOWBIT_CHECK(weight_q_ != nullptr, "QConv2d: a weight quantizer is required");
  check_role(weight_q_, QuantRole::weight, "QConv2d", "weight");
  check_role(input_q_, QuantRole::activation, "QConv2d", "input");
  opts_ = src.options();
  weight_ = src.weight();
  if (src.bias().defined()) {
    bias_ = src.bias();
    register_parameter("bias", &bias_);
  }
  register_module("weight_quantizer", weight_q_);
  if (input_q_) register_module("input_quantizer", input_q_);
  train(src.is_training());
}

void QConv2d::fold_bn(const std::shared_ptr<layers::BatchNorm2d>& bn) {
  LOWBIT_CHECK(bn != nullptr, "QConv2d::fold_bn: null BatchNorm2d");
  LOWBIT_CHECK(bn->options().num_features == opts_.out_channels && bn->options().affine &&
                   bn->options().track_running_stats,
               "QConv2d::fold_bn: BatchNorm2d(", bn->options().num_features,
               ") must be affine with running statistics and have ", opts_.out_channels, " features");
  bn_ = bn;
}

Tensor QConv2d::fold_factor() const {
  auto bn = bn_.lock();
  LOWBIT_CHECK(bn != nullptr, "QConv2d: the folded BatchNorm2d no longer exists");
  // sf = gamma / sqrt(var_r + eps): differentiable in gamma, running_var is a buffer.
  return bn->weight() * rsqrt(bn->running_var().detach() + bn->options().eps);
}

Tensor QConv2d::quantized_weight() {
  if (bn_.expired()) return weight_q_->forward(weight_);
  Tensor sf = fold_factor();
  return weight_q_->forward(weight_ * sf.reshape({opts_.out_channels, 1, 1, 1}));
}

Tensor QConv2d::forward(const Tensor& x) {
  const Tensor xq = input_q_ ? input_q_->forward(x) : x;
  Tensor y;
  if (bn_.expired()) {
    y = layers::conv2d(xq, weight_q_->forward(weight_), bias_, opts_);
  } else {
    const Tensor sf = fold_factor();
    const Tensor wq = weight_q_->forward(weight_ * sf.reshape({opts_.out_channels, 1, 1, 1}));
    layers::Conv2dOptions o = opts_;
    o.bias = false;
    y = layers::conv2d(xq, wq, Tensor(), o) / sf;  // NHWC: sf broadcasts over the channels
    if (bias_.defined()) y = y + bias_;
  }
  layers::notify_forward(*this, x, y);
  return y;
}

std::string QConv2d::extra_repr() const {
  return layers::Conv2d::extra_repr() + quant_repr(weight_q_.get(), input_q_.get()) +
         (bn_.expired() ? "" : ", bn_folded=True");
}

QLinear::QLinear(layers::Linear& src, QuantizerPtr weight_q, QuantizerPtr input_q)
    : layers::Linear(src.in_features(), src.out_features(), false),
      weight_q_(std::move(weight_q)),
      input_q_(std::move(input_q)) {
  LOWBIT_CHECK(weight_q_ != nullptr, "QLinear: a weight quantizer is required");
  check_role(weight_q_, QuantRole::weight, "QLinear", "weight");
  check_role(input_q_, QuantRole::activation, "QLinear", "input");
  weight_ = src.weight();
  if (src.bias().defined()) {
    bias_ = src.bias();
    register_parameter("bias", &bias_);
  }
  register_module("weight_quantizer", weight_q_);
  if (input_q_) register_module("input_quantizer", input_q_);
  train(src.is_training());
}

Tensor QLinear::forward(const Tensor& x) {
  const Tensor xq = input_q_ ? input_q_->forward(x) : x;
  Tensor y = layers::linear(xq, weight_q_->forward(weight_), bias_);
  layers::notify_forward(*this, x, y);
  return y;
}

std::string QLinear::extra_repr() const {
  return layers::Linear::extra_repr() + quant_repr(weight_q_.get(), input_q_.get());
}

QuantAct::QuantAct(std::string activation, QuantizerPtr q) : activation_(std::move(activation)), q_(std::move(q)) {
  LOWBIT_CHECK_INPUT(activation_ == "relu" || activation_ == "relu6" || activation_ == "identity",
                     "QuantAct: activation '", activation_, "' is not one of relu, relu6, identity");
  LOWBIT_CHECK(q_ != nullptr, "QuantAct: a quantizer is required");
  check_role(q_, QuantRole::activation, "QuantAct", "activation");
  register_module("quantizer", q_);
}

Tensor QuantAct::forward(const Tensor& x) {
  const Tensor a = activation_ == "relu" ? relu(x) : activation_ == "relu6" ? layers::relu6(x) : x;
  return q_->forward(a);
}

}  // namespace lowbit::quant
