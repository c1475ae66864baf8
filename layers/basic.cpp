#include "layers/basic.h"

#include <sstream>

#include "core/autocast.h"
#include "core/autograd.h"
#include "core/kernels.h"
#include "core/ops.h"
#include "core/random.h"
#include "layers/conv2d.h"  // keep_along

namespace lowbit::layers {

Tensor relu6(const Tensor& x) {
  Tensor y;
  {
    autograd::NoGradGuard guard;
    y = clamp(x, 0.0, 6.0);
  }
  autograd::SavedTensor sx(x, "relu6");
  autograd::record("relu6", {x}, y, [sx](const Tensor& g) {
    Tensor xs = sx.unpack();
    const TensorOptions o(xs.dtype(), xs.device());
    Tensor inside = mul(gt(xs, zeros({}, o)), lt(xs, full({}, 6.0, o)));
    return std::vector<Tensor>{where(inside, g, zeros_like(g))};
  });
  return y;
}

Tensor hardswish(const Tensor& x) { return x * clamp(x + 3.0, 0.0, 6.0) * (1.0 / 6.0); }

Tensor linear(const Tensor& x_arg, const Tensor& w_arg, const Tensor& b_arg) {
  // A lower-precision op under autocast (core/autocast.h), as conv2d.
  const Tensor x = autocast_input(x_arg), weight = autocast_input(w_arg),
               bias = autocast_input(b_arg);
  LOWBIT_CHECK(x.defined() && x.dim() >= 1 && weight.defined() && weight.dim() == 2,
               "linear wants x (..., in) and weight (out, in), got ",
               x.defined() ? shape_str(x.shape()) : "undefined", " and ",
               weight.defined() ? shape_str(weight.shape()) : "undefined");
  LOWBIT_CHECK(x.size(-1) == weight.size(1), "linear: input has ", x.size(-1),
               " features but the weight ", weight.shape(), " expects ", weight.size(1));
  Shape out_shape = x.shape();
  out_shape.back() = weight.size(0);
  Tensor x2 = x.reshape({-1, x.size(-1)});
  Tensor y = bias.defined() ? addmm(bias, x2, weight, 1.0, 1.0, false, true)
                            : matmul(x2, weight, false, true);
  return y.reshape(out_shape);
}

Tensor dropout(const Tensor& x, double p, bool training) {
  LOWBIT_CHECK(p >= 0.0 && p <= 1.0, "dropout: p must be in [0, 1], got ", p);
  if (!training || p == 0.0) return x;
  if (p == 1.0) return x * 0.0;
  Tensor keep = empty(x.shape(), TensorOptions(x.dtype(), x.device()));
  Generator& gen = default_generator(x.device());
  core::RandomValue rv{gen.seed(), gen.next_offset(), core::RandomKind::bernoulli, 1.0 - p, 0.0};
  if (keep.numel() > 0) core::random_stub(x.device(), keep, rv);
  return x * (keep * (1.0 / (1.0 - p)));
}

Tensor ReLU::forward(const Tensor& x) { return relu(x); }

Tensor Linear::forward(const Tensor& x) {
  Tensor y = linear(x, effective_weight(), bias_);
  notify_forward(*this, x, y);
  return y;
}

Tensor Linear::effective_weight() const {
  return weight_mask_.defined() ? weight_ * weight_mask_ : weight_;
}

void Linear::set_weight_mask(const Tensor& mask) {
  LOWBIT_CHECK(mask.defined() && mask.shape() == weight_.shape(), "Linear weight mask must be ",
               weight_.shape(), ", got ", mask.defined() ? shape_str(mask.shape()) : "undefined");
  const bool first = !weight_mask_.defined();
  weight_mask_ = mask.detach().to(weight_.device(), weight_.dtype()).contiguous();
  if (first) register_buffer("weight_mask", &weight_mask_);
}

Linear::Linear(int64_t in_features, int64_t out_features, bool bias)
    : in_(in_features), out_(out_features) {
  LOWBIT_CHECK(in_features > 0 && out_features > 0, "Linear: features must be positive, got ",
               in_features, " -> ", out_features);
  weight_ = uniform_fan_in({out_features, in_features}, in_features);
  register_parameter("weight", &weight_);
  if (bias) {
    bias_ = uniform_fan_in({out_features}, in_features);
    register_parameter("bias", &bias_);
  }
}

void Linear::keep_inputs(const std::vector<int64_t>& keep) {
  LOWBIT_CHECK(!keep.empty(), "Linear(", extra_repr(), ").keep_inputs: cannot remove every input");
  weight_ = keep_along(weight_, 1, keep);
  if (weight_mask_.defined()) weight_mask_ = keep_along(weight_mask_, 1, keep);
  in_ = int64_t(keep.size());
}

void Linear::ensure_bias() {
  if (bias_.defined()) return;
  bias_ = zeros({out_}, TensorOptions(weight_.dtype(), weight_.device()));
  register_parameter("bias", &bias_);
}

std::string Linear::extra_repr() const {
  std::ostringstream os;
  os << "in_features=" << in_ << ", out_features=" << out_
     << ", bias=" << (bias_.defined() ? "True" : "False");
  return os.str();
}

Dropout::Dropout(double p) : p_(p) {
  LOWBIT_CHECK(p >= 0.0 && p <= 1.0, "Dropout: p must be in [0, 1], got ", p);
}

std::string Dropout::extra_repr() const { return str_cat("p=", p_); }

Sequential::Sequential(std::vector<ModulePtr> modules) {
  for (auto& m : modules) add(std::move(m));
}

Sequential& Sequential::add(ModulePtr m) { return add(std::to_string(size()), std::move(m)); }

Sequential& Sequential::add(const std::string& name, ModulePtr m) {
  add_child(name, std::move(m));
  return *this;
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor h = x;
  for (const auto& c : named_children()) h = c.second->forward(h);
  return h;
}

Residual::Residual(ModulePtr body, ModulePtr shortcut, ModulePtr activation) {
  body_ = register_child("body", std::move(body));
  if (shortcut) shortcut_ = register_child("shortcut", std::move(shortcut));
  if (activation) act_ = register_child("act", std::move(activation));
}

Tensor Residual::forward(const Tensor& x) {
  Tensor y = body_->forward(x) + (shortcut_ ? shortcut_->forward(x) : x);
  return act_ ? act_->forward(y) : y;
}

}  // namespace lowbit::layers
