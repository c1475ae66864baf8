// The autograd engine: node bookkeeping, saved-tensor version checks, gradient accumulation
// into leaves and the reverse-topological walk. Backward ops run with grad mode off (no
// double-backward), and gradients are accumulated out of place, so a gradient tensor handed to
// two consumers is never modified under the other's feet.
#include "core/autograd.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <queue>
#include <unordered_map>

#include "core/ops.h"

namespace lowbit::autograd {

namespace {
thread_local bool g_grad_enabled = true;
std::atomic<uint64_t> g_next_sequence_nr{0};

class LambdaNode : public Node {
 public:
  LambdaNode(const char* name, BackwardFn fn, const std::vector<Tensor>& outputs)
      : Node(name), fn_(std::move(fn)) {
    for (const auto& t : outputs) {
      out_shapes_.push_back(t.defined() ? t.shape() : Shape{});
      out_options_.push_back(t.defined() ? TensorOptions(t.dtype(), t.device()) : TensorOptions());
    }
  }
  std::vector<Tensor> apply(const std::vector<Tensor>& grad_outputs) override {
    LOWBIT_CHECK(fn_ != nullptr, "trying to backward through the graph a second time (through ",
                 name(), "); pass retain_graph=true to the first backward if you need to");
    std::vector<Tensor> g = grad_outputs;
    for (size_t i = 0; i < g.size() && i < out_shapes_.size(); ++i) {
      if (!g[i].defined()) g[i] = zeros(out_shapes_[i], out_options_[i]);
    }
    return fn_(g);
  }
  void release() override { fn_ = nullptr; }

 private:
  BackwardFn fn_;
  std::vector<Shape> out_shapes_;
  std::vector<TensorOptions> out_options_;
};

// Accumulates the incoming gradient into a leaf's .grad after running the leaf's hooks.
class AccumulateGrad : public Node {
 public:
  explicit AccumulateGrad(std::shared_ptr<TensorImpl> leaf)
      : Node("AccumulateGrad"), leaf_(std::move(leaf)) {}
  std::vector<Tensor> apply(const std::vector<Tensor>& grad_outputs) override {
    Tensor leaf(leaf_);
    Tensor g = grad_outputs.at(0);
    if (!g.defined()) return {};
    AutogradMeta& meta = leaf.autograd_meta();
    for (auto& hook : meta.hooks) {
      Tensor r = hook(g);
      if (r.defined()) g = r;
    }
    LOWBIT_CHECK(g.shape() == leaf.shape(), "gradient of shape ", g.shape(),
                 " does not match its leaf of shape ", leaf.shape());
    // .grad keeps the leaf's dtype, also when a later backward brings a gradient of another
    // dtype (add would promote, e.g. a bf16 .grad plus an f64 gradient to f64).
    const bool converted = g.dtype() != leaf.dtype();
    if (converted) g = g.to(leaf.dtype());
    if (meta.grad && meta.grad->defined()) {
      *meta.grad = add(*meta.grad, g);
    } else {
      meta.grad = std::make_shared<Tensor>(converted ? g : g.clone());
    }
    for (auto& hook : meta.post_accumulate_hooks) hook(leaf);
    return {};
  }

 private:
  std::shared_ptr<TensorImpl> leaf_;
};

std::shared_ptr<Node> grad_accumulator(const Tensor& leaf) {
  AutogradMeta& meta = leaf.autograd_meta();
  auto acc = meta.grad_accumulator.lock();
  if (!acc) {
    acc = std::make_shared<AccumulateGrad>(leaf.impl_ptr());
    meta.grad_accumulator = acc;
  }
  return acc;
}

Edge gradient_edge(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return {};
  if (t.grad_fn()) return {t.grad_fn(), t.autograd_meta().output_nr};
  return {grad_accumulator(t), 0};
}

}  // namespace

bool grad_enabled() { return g_grad_enabled; }
void set_grad_enabled(bool enabled) { g_grad_enabled = enabled; }

Node::Node(std::string name) : name_(std::move(name)), sequence_nr_(g_next_sequence_nr++) {
  output_hooks_.resize(1);
}

void Node::set_num_outputs(int n) {
  num_outputs_ = n;
  output_hooks_.resize(size_t(n));
}

void Node::add_output_hook(uint32_t output_nr, GradHook hook) {
  output_hooks_.at(output_nr).push_back(std::move(hook));
}

std::vector<GradHook>& Node::output_hooks(uint32_t output_nr) {
  return output_hooks_.at(output_nr);
}

SavedTensor::SavedTensor(const Tensor& t, const char* op_name) : op_name_(op_name) {
  if (!t.defined()) return;
  tensor_ = t.detach();
  version_ = t.storage()->version();
}

Tensor SavedTensor::unpack() const {
  if (!tensor_.defined()) return tensor_;
  const uint64_t now = tensor_.storage()->version();
  LOWBIT_CHECK(now == version_, "a tensor of shape ", tensor_.shape(), " saved for backward by ",
               op_name_, " was modified in place afterwards (version ", now, ", saved at ",
               version_, "); clone it before modifying it, or modify it before the op");
  return tensor_;
}

bool any_requires_grad(std::initializer_list<Tensor> inputs) {
  if (!g_grad_enabled) return false;
  for (const auto& t : inputs) {
    if (t.defined() && t.requires_grad()) return true;
  }
  return false;
}

bool any_requires_grad(const std::vector<Tensor>& inputs) {
  if (!g_grad_enabled) return false;
  for (const auto& t : inputs) {
    if (t.defined() && t.requires_grad()) return true;
  }
  return false;
}

void record(const char* name, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs,
            BackwardFn backward) {
  if (!any_requires_grad(inputs)) return;
  auto node = std::make_shared<LambdaNode>(name, std::move(backward), outputs);
  node->set_num_outputs(int(outputs.size()));
  for (const auto& t : inputs) node->next_edges().push_back(gradient_edge(t));
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (!outputs[i].defined()) continue;
    AutogradMeta& meta = outputs[i].autograd_meta();
    meta.requires_grad = true;
    meta.grad_fn = node;
    meta.output_nr = uint32_t(i);
  }
}

void record(const char* name, const std::vector<Tensor>& inputs, const Tensor& output,
            std::function<std::vector<Tensor>(const Tensor& grad_output)> backward) {
  record(name, inputs, std::vector<Tensor>{output},
         [fn = std::move(backward)](const std::vector<Tensor>& g) { return fn(g.at(0)); });
}

void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots,
                  bool retain_graph) {
  NoGradGuard no_grad;
  // Gradient buffers per node, one slot per forward output.
  std::unordered_map<Node*, std::vector<Tensor>> buffers;
  std::unordered_map<Node*, int> dependencies;
  std::unordered_map<Node*, std::shared_ptr<Node>> keep_alive;

  auto accumulate = [&](const Edge& e, const Tensor& g) {
    auto& buf = buffers[e.fn.get()];
    if (buf.empty()) buf.resize(size_t(std::max(1, e.fn->num_outputs())));
    Tensor& slot = buf.at(e.input_nr);
    slot = slot.defined() ? add(slot, g) : g;
  };

  std::vector<Edge> root_edges;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& r = roots[i];
    LOWBIT_CHECK(r.requires_grad(), "backward: tensor ", i, " (shape ", r.shape(),
                 ") does not require grad and has no grad_fn");
    Tensor g = i < grad_roots.size() ? grad_roots[i] : Tensor();
    if (!g.defined()) {
      LOWBIT_CHECK(r.numel() == 1,
                   "backward: a gradient must be given for a non-scalar output of shape ",
                   r.shape());
      g = ones_like(r);
    }
    LOWBIT_CHECK(g.shape() == r.shape(), "backward: gradient shape ", g.shape(),
                 " does not match output shape ", r.shape());
    root_edges.push_back(gradient_edge(r));
    accumulate(root_edges.back(), g);
  }

  // Count, for every reachable node, how many edges point at it.
  std::vector<Node*> stack;
  for (const auto& e : root_edges) {
    if (keep_alive.emplace(e.fn.get(), e.fn).second) stack.push_back(e.fn.get());
  }
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const auto& e : n->next_edges()) {
      if (!e.fn) continue;
      dependencies[e.fn.get()]++;
      if (keep_alive.emplace(e.fn.get(), e.fn).second) stack.push_back(e.fn.get());
    }
  }

  // Ready nodes run newest first (reverse order of the forward). Leaves' AccumulateGrad nodes go
  // before everything else, as in PyTorch: a gradient lands in .grad (and its post-accumulate
  // hooks, e.g. a data-parallel bucket launch, run) as soon as it is complete, not when its
  // node's creation order comes up (an AccumulateGrad outlives graphs and keeps the sequence
  // number of the first one).
  auto later = [](Node* a, Node* b) {
    const bool acc_a = dynamic_cast<AccumulateGrad*>(a) != nullptr,
               acc_b = dynamic_cast<AccumulateGrad*>(b) != nullptr;
    if (acc_a != acc_b) return acc_b;
    return a->sequence_nr() < b->sequence_nr();
  };
  std::priority_queue<Node*, std::vector<Node*>, decltype(later)> ready(later);
  for (auto& [node, alive] : keep_alive) {
    if (dependencies[node] == 0) ready.push(node);
  }
  while (!ready.empty()) {
    Node* n = ready.top();
    ready.pop();
    std::vector<Tensor> grads = std::move(buffers[n]);
    buffers.erase(n);
    grads.resize(size_t(std::max(1, n->num_outputs())));
    for (size_t o = 0; o < grads.size(); ++o) {
      if (!grads[o].defined()) continue;
      for (auto& hook : n->output_hooks(uint32_t(o))) {
        Tensor r = hook(grads[o]);
        if (r.defined()) grads[o] = r;
      }
    }
    std::vector<Tensor> input_grads = n->apply(grads);
    if (!retain_graph) n->release();
    auto& edges = n->next_edges();
    for (size_t i = 0; i < edges.size(); ++i) {
      const Edge& e = edges[i];
      if (!e.fn) continue;
      if (i < input_grads.size() && input_grads[i].defined()) accumulate(e, input_grads[i]);
      if (--dependencies[e.fn.get()] == 0) ready.push(e.fn.get());
    }
  }
}

void FunctionCtx::save_for_backward(const std::vector<Tensor>& tensors) {
  saved_.clear();
  for (const auto& t : tensors) saved_.emplace_back(t, name_);
}

std::vector<Tensor> FunctionCtx::saved_tensors() const {
  std::vector<Tensor> out;
  for (const auto& s : saved_) out.push_back(s.unpack());
  return out;
}

}  // namespace lowbit::autograd
