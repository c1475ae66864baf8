// Module: parameters, buffers and named children with PyTorch's dotted names
// (layer1.0.conv1.weight, bn1.running_var, num_batches_tracked), train/eval, to(device), and
// state dicts that map one to one onto a PyTorch checkpoint. Tensors are held in lowbit layouts
// (NHWC activations, KRSC conv weights); state_dict(Layout::pytorch) converts at the edge.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace lowbit::layers {

enum class Layout { lowbit, pytorch };

using StateDict = std::map<std::string, Tensor>;

class Module : public std::enable_shared_from_this<Module> {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  virtual Tensor forward(const Tensor& x) = 0;
  Tensor operator()(const Tensor& x) { return forward(x); }
  // PyTorch's class name, for printing and reports ("Conv2d", "BatchNorm2d").
  virtual std::string type_name() const = 0;
  // One line of options, as PyTorch's extra_repr ("3, 16, kernel_size=(3, 3), stride=(1, 1)").
  virtual std::string extra_repr() const { return ""; }

  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Moves (and casts floating parameters/buffers of) every tensor in the tree.
  void to(Device device);
  void to(DType dtype);
  Device device() const;

  std::vector<std::pair<std::string, Tensor>> named_parameters(bool recurse = true) const;
  std::vector<Tensor> parameters(bool recurse = true) const;
  std::vector<std::pair<std::string, Tensor>> named_buffers(bool recurse = true) const;
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& named_children() const {
    return children_;
  }
  // Every module in the tree with its dotted name ("" for this one), pre-order.
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_modules();
  std::shared_ptr<Module> child(const std::string& name) const;  // throws when missing
  int64_t num_parameters() const;
  void zero_grad();

  StateDict state_dict(Layout layout = Layout::lowbit) const;
  // Strict: every key present, no extra keys, every shape right; otherwise one error listing
  // the missing, unexpected and wrongly shaped keys. Values are copied into the existing
  // tensors (device and dtype of the module are kept).
  void load_state_dict(const StateDict& state, bool strict = true, Layout layout = Layout::lowbit);

  std::string str() const;  // PyTorch-like tree print

  // Converts one of this module's own tensors (by local name) between layouts. Conv2d
  // overrides it for its KRSC <-> OIHW weight.
  virtual Tensor to_layout(const std::string& local_name, const Tensor& t, Layout from,
                           Layout to) const;

 protected:
  // Registers a member tensor; the slot stays owned by the subclass, so `to()` and
  // `load_state_dict()` update the member itself.
  void register_parameter(const std::string& name, Tensor* slot);
  void register_buffer(const std::string& name, Tensor* slot);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    add_child(name, m);
    return m;
  }
  void add_child(const std::string& name, std::shared_ptr<Module> m);
  virtual void on_train(bool) {}

 private:
  void collect(const std::string& prefix, bool params, bool recurse,
               std::vector<std::pair<std::string, Tensor>>* out) const;
  void collect_slots(const std::string& prefix,
                     std::vector<std::tuple<std::string, Tensor*, const Module*, std::string>>* out);

  bool training_ = true;
  std::vector<std::pair<std::string, Tensor*>> params_;
  std::vector<std::pair<std::string, Tensor*>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

using ModulePtr = std::shared_ptr<Module>;

// Draws PyTorch's default init for weights and biases with fan_in:
// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform_ with a = sqrt(5)).
Tensor uniform_fan_in(const Shape& shape, int64_t fan_in);

}  // namespace lowbit::layers
