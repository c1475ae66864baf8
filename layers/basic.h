// The small layers: activations (ReLU, ReLU6, Hardswish), Linear, Dropout, Flatten, Identity,
// Sequential and the residual Add. Each is a thin module over core ops (or a functional form
// here) so its backward comes from those ops.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "layers/module.h"

namespace lowbit::layers {

// relu6(x) = min(max(x, 0), 6); the gradient passes where 0 < x < 6, as PyTorch's hardtanh.
Tensor relu6(const Tensor& x);
// hardswish(x) = x * relu6(x + 3) / 6 (Howard et al. 2019).
Tensor hardswish(const Tensor& x);
// y = x @ weight^T + bias; x (..., in), weight (out, in), bias (out) or undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);
// Zeroes elements with probability p (Philox, bernoulli) and scales the rest by 1 / (1 - p).
Tensor dropout(const Tensor& x, double p, bool training);

class ReLU : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "ReLU"; }
};

class ReLU6 : public Module {
 public:
  Tensor forward(const Tensor& x) override { return relu6(x); }
  std::string type_name() const override { return "ReLU6"; }
};

class Hardswish : public Module {
 public:
  Tensor forward(const Tensor& x) override { return hardswish(x); }
  std::string type_name() const override { return "Hardswish"; }
};

class Identity : public Module {
 public:
  Tensor forward(const Tensor& x) override { return x; }
  std::string type_name() const override { return "Identity"; }
};

// (N, ...) -> (N, prod(...)).
class Flatten : public Module {
 public:
  Tensor forward(const Tensor& x) override { return x.flatten(1); }
  std::string type_name() const override { return "Flatten"; }
};

class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Linear"; }
  std::string extra_repr() const override;
  Tensor& weight() { return weight_; }
  Tensor& bias() { return bias_; }
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  // Keeps the input features `keep` (columns of the weight; sorted, unique), in place (channel
  // surgery in prune/); device, dtype and requires_grad are kept.
  void keep_inputs(const std::vector<int64_t>& keep);
  // Creates a zero bias (parameter "bias", requires_grad) when the layer has none.
  void ensure_bias();
  // An element mask (out, in), 0 or 1 (unstructured pruning at initialization,
  // prune/precrop.h): the layer then uses weight * mask, so masked weights get zero gradient.
  // Registered as the buffer "weight_mask" on first use.
  void set_weight_mask(const Tensor& mask);
  const Tensor& weight_mask() const { return weight_mask_; }
  // weight * weight_mask when a mask is set, else the weight (QLinear quantizes this one).
  Tensor effective_weight() const;

 protected:
  int64_t in_, out_;
  Tensor weight_, bias_;
  Tensor weight_mask_;  // (out, in) or undefined
};

class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5);
  Tensor forward(const Tensor& x) override { return dropout(x, p_, is_training()); }
  std::string type_name() const override { return "Dropout"; }
  std::string extra_repr() const override;

 private:
  double p_;
};

// Children run in order; named "0", "1", ... as in PyTorch unless given names.
class Sequential : public Module {
 public:
  Sequential() = default;
  explicit Sequential(std::vector<ModulePtr> modules);
  Sequential& add(ModulePtr m);
  Sequential& add(const std::string& name, ModulePtr m);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Sequential"; }
  size_t size() const { return named_children().size(); }
  ModulePtr operator[](size_t i) const { return named_children().at(i).second; }
};

// Residual block skeleton: y = act(body(x) + shortcut(x)); shortcut may be Identity.
class Residual : public Module {
 public:
  Residual(ModulePtr body, ModulePtr shortcut, ModulePtr activation = nullptr);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Residual"; }

 private:
  Child<Module> body_, shortcut_, act_;
};

}  // namespace lowbit::layers
