// Module: parameters, buffers and named children with PyTorch's dotted names
// (layer1.0.conv1.weight, bn1.running_var, num_batches_tracked), train/eval, to(device), and
// state dicts that map one to one onto a PyTorch checkpoint. Tensors are held in lowbit layouts
// (NHWC activations, KRSC conv weights); state_dict(Layout::pytorch) converts at the edge.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/error.h"
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
  // Swaps the child `name` for `m` (quantize_model turns a Conv2d into a QConv2d this way).
  // Parents that hold the child through a Child<M> handle see the new module; `m` must be an M.
  void replace_child(const std::string& name, std::shared_ptr<Module> m);
  // The child at registration index i (Child<M> handles resolve through this).
  Module* child_at(size_t i) const { return children_[i].second.get(); }
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
  // Registers `m` and returns a handle that always reaches the module now registered under
  // `name`, so model conversion (replace_child) is seen by the parent's forward.
  template <typename M>
  class Child;
  template <typename M>
  Child<M> register_child(const std::string& name, std::shared_ptr<M> m);
  void add_child(const std::string& name, std::shared_ptr<Module> m);
  virtual void on_train(bool) {}

 private:
  void collect(const std::string& prefix, bool params, bool recurse,
               std::vector<std::pair<std::string, Tensor>>* out) const;
  void collect_slots(
      const std::string& prefix,
      std::vector<std::tuple<std::string, Tensor*, const Module*, std::string>>* out);

  bool training_ = true;
  std::vector<std::pair<std::string, Tensor*>> params_;
  std::vector<std::pair<std::string, Tensor*>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

using ModulePtr = std::shared_ptr<Module>;

// Thrown by Child<M> when the module registered at `index` is not an M.
[[noreturn]] void child_type_error(const Module& owner, size_t index);

// A parent's typed handle on one of its children: (owner, registration index). It resolves on
// every access, so a child swapped by replace_child (Conv2d -> QConv2d) is the one called; the
// swapped-in module must derive from M (checked). Empty handles (optional children) are false.
template <typename M>
class Module::Child {
 public:
  Child() = default;
  Child(const Module* owner, size_t index) : owner_(owner), index_(index) {}
  M* get() const {
    if (owner_ == nullptr) return nullptr;
    Module* m = owner_->child_at(index_);
    if constexpr (std::is_same_v<M, Module>) {
      return m;
    } else {
      M* typed = dynamic_cast<M*>(m);
      if (typed == nullptr) child_type_error(*owner_, index_);
      return typed;
    }
  }
  M* operator->() const { return get(); }
  M& operator*() const { return *get(); }
  explicit operator bool() const { return owner_ != nullptr; }

 private:
  const Module* owner_ = nullptr;
  size_t index_ = 0;
};

template <typename M>
Module::Child<M> Module::register_child(const std::string& name, std::shared_ptr<M> m) {
  add_child(name, std::move(m));
  return Child<M>(this, children_.size() - 1);
}

template <typename M>
using Child = Module::Child<M>;

// Replaces the module at a dotted path ("layer1.0.conv1") in the tree under root.
void replace_module(Module& root, const std::string& path, ModulePtr m);

// Forward recording: while a ForwardRecorder is installed (RecordForward guard, this thread),
// Conv2d, Linear and BatchNorm2d (and layers built on them) report each call with its input and
// output. Model conversion uses it to find conv -> BN pairs, the first and last layers and the
// activation ranges; accounting uses it for output sizes. Costs one branch when off.
class ForwardRecorder {
 public:
  virtual ~ForwardRecorder() = default;
  virtual void on_forward(Module& m, const Tensor& input, const Tensor& output) = 0;
};
ForwardRecorder* current_forward_recorder();
inline void notify_forward(Module& m, const Tensor& input, const Tensor& output) {
  if (ForwardRecorder* r = current_forward_recorder()) r->on_forward(m, input, output);
}
class RecordForward {
 public:
  explicit RecordForward(ForwardRecorder* r);
  ~RecordForward();
  RecordForward(const RecordForward&) = delete;
  RecordForward& operator=(const RecordForward&) = delete;

 private:
  ForwardRecorder* prev_;
};

// Draws PyTorch's default init for weights and biases with fan_in:
// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform_ with a = sqrt(5)).
Tensor uniform_fan_in(const Shape& shape, int64_t fan_in);

}  // namespace lowbit::layers
