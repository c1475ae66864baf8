// Define-by-run autograd, as PyTorch's: each differentiable op records a Node holding what its
// backward needs; Tensor::backward walks the graph in reverse topological order and
// accumulates .grad on leaves. Saved tensors remember their storage version, so modifying one
// in place before backward is an error naming the op that saved it. New ops (a research fork's
// quantizer) use Function<T> (see docs/autograd.md) and never touch the engine.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace lowbit::autograd {

// --- grad mode ---
bool grad_enabled();
void set_grad_enabled(bool enabled);

// Disables recording in its scope (evaluation, optimizer steps, in-place parameter updates).
class NoGradGuard {
 public:
  NoGradGuard() : prev_(grad_enabled()) { set_grad_enabled(false); }
  ~NoGradGuard() { set_grad_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

class Node;

// Where a gradient flows: input `input_nr` of node `fn` (null: nobody wants it).
struct Edge {
  std::shared_ptr<Node> fn;
  uint32_t input_nr = 0;
};

class Node : public std::enable_shared_from_this<Node> {
 public:
  explicit Node(std::string name);
  virtual ~Node() = default;
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Gradients of the forward outputs in; gradients of the forward inputs out (one per
  // next_edges entry; undefined where no gradient flows).
  virtual std::vector<Tensor> apply(const std::vector<Tensor>& grad_outputs) = 0;
  // Frees what backward needed (saved tensors) once backward ran without retain_graph.
  virtual void release() {}

  const std::string& name() const { return name_; }
  uint64_t sequence_nr() const { return sequence_nr_; }
  std::vector<Edge>& next_edges() { return next_edges_; }
  int num_outputs() const { return num_outputs_; }
  void set_num_outputs(int n);
  // Hooks on the gradient of forward output `output_nr` (Tensor::register_hook on non-leaves).
  void add_output_hook(uint32_t output_nr, GradHook hook);
  std::vector<GradHook>& output_hooks(uint32_t output_nr);

 private:
  std::string name_;
  uint64_t sequence_nr_;
  int num_outputs_ = 1;
  std::vector<Edge> next_edges_;
  std::vector<std::vector<GradHook>> output_hooks_;
};

// A tensor kept for backward: a detached alias plus the storage version at save time.
class SavedTensor {
 public:
  SavedTensor() = default;
  SavedTensor(const Tensor& t, const char* op_name);
  // The saved tensor; throws if its storage was modified in place since it was saved.
  Tensor unpack() const;
  bool defined() const { return tensor_.defined(); }

 private:
  Tensor tensor_;
  uint64_t version_ = 0;
  const char* op_name_ = "";
};

using BackwardFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& grad_outputs)>;

// True when grad mode is on and any defined input requires grad.
bool any_requires_grad(std::initializer_list<Tensor> inputs);
bool any_requires_grad(const std::vector<Tensor>& inputs);

// Records a node named `name` with inputs `inputs` producing `outputs` (which get grad_fn and
// requires_grad). `backward` maps output grads (zeros filled in for outputs that got none) to
// one grad per input. Does nothing unless any_requires_grad(inputs).
void record(const char* name, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs,
            BackwardFn backward);
// Single-output convenience.
void record(const char* name, const std::vector<Tensor>& inputs, const Tensor& output,
            std::function<std::vector<Tensor>(const Tensor& grad_output)> backward);

// Computes and accumulates gradients of `roots` (with `grad_roots`, undefined = ones for
// single-element roots) into the leaves.
void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots,
                  bool retain_graph);

// --- custom functions ---------------------------------------------------------------------

// Passed to a Function's forward and backward: saved tensors and plain values.
class FunctionCtx {
 public:
  void save_for_backward(const std::vector<Tensor>& tensors);
  // The saved tensors; throws if one was modified in place since forward.
  std::vector<Tensor> saved_tensors() const;
  // Which tensor inputs (in argument order) need a gradient.
  const std::vector<bool>& needs_input_grad() const { return needs_input_grad_; }
  // Free-form values forward leaves for backward (scales, flags).
  std::vector<double> saved_values;

  // Set by Function<T>::apply.
  void set_name(const char* name) { name_ = name; }
  void set_needs_input_grad(std::vector<bool> v) { needs_input_grad_ = std::move(v); }
  void release() { saved_.clear(); }

 private:
  std::vector<SavedTensor> saved_;
  std::vector<bool> needs_input_grad_;
  const char* name_ = "custom function";
};

namespace detail {
inline void collect_tensors(std::vector<Tensor>&) {}
template <typename A, typename... Rest>
void collect_tensors(std::vector<Tensor>& out, const A& first, const Rest&... rest) {
  if constexpr (std::is_same_v<std::decay_t<A>, Tensor>) out.push_back(first);
  collect_tensors(out, rest...);
}
inline std::vector<Tensor> as_vector(const Tensor& t) { return {t}; }
inline std::vector<Tensor> as_vector(const std::vector<Tensor>& v) { return v; }
}  // namespace detail

// CRTP base for a custom differentiable op:
//   struct MyOp : Function<MyOp> {
//     static constexpr const char* kName = "my_op";
//     static Tensor forward(FunctionCtx& ctx, const Tensor& x, double s);
//     static std::vector<Tensor> backward(FunctionCtx& ctx, const std::vector<Tensor>& grads);
//   };
//   Tensor y = MyOp::apply(x, 2.0);
// forward runs with grad mode off and may return a Tensor or std::vector<Tensor>; backward
// returns one gradient per Tensor argument of forward, in order (undefined = none).
template <typename Derived>
struct Function {
  template <typename... Args>
  static auto apply(const Args&... args) {
    std::vector<Tensor> inputs;
    detail::collect_tensors(inputs, args...);
    auto ctx = std::make_shared<FunctionCtx>();
    ctx->set_name(Derived::kName);
    std::vector<bool> needs;
    for (const auto& t : inputs) needs.push_back(t.defined() && t.requires_grad());
    ctx->set_needs_input_grad(needs);
    const bool record_it = any_requires_grad(inputs);
    using Out = decltype(Derived::forward(*ctx, args...));
    Out out = [&] {
      NoGradGuard guard;
      return Derived::forward(*ctx, args...);
    }();
    if (record_it) {
      record(Derived::kName, inputs, detail::as_vector(out),
             [ctx](const std::vector<Tensor>& grads) {
               auto g = Derived::backward(*ctx, grads);
               return g;
             });
    }
    return out;
  }
};

}  // namespace lowbit::autograd
