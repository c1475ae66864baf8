// Optimizer bookkeeping (groups, state, state_dict), SGD and AdamW building their per-tensor
// functors, the CPU loop and the dispatch by device to it or the fused CUDA launch, and
// clip_grad_norm.
#include "train/optimizer.h"

#include <cmath>
#include <limits>
#include <set>
#include <utility>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/parallel.h"
#include "train/registries.h"

namespace lowbit::train {

namespace {

// One tensor's update before it is lowered to raw pointers.
template <typename Op>
struct TensorUpdate {
  Tensor param, grad, state0, state1;  // states undefined when unused
  Op op;
};

// The CPU slot of the update stubs: one core::for_each_index loop per tensor.
struct CpuUpdate {
  template <typename T, typename Op>
  static void run(Device, const std::vector<detail::UpdateEntry<T, Op>>& entries) {
    for (const auto& e : entries) {
      core::for_each_index(e.numel, [&e](int64_t i) { detail::update_element(e, i); });
    }
  }
};
const detail::UpdateRegistrar<CpuUpdate> register_cpu_updates(DeviceType::cpu);

template <typename T>
T* data_or_null(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.raw_data()) : nullptr;
}

// Applies the updates: per (device, dtype) bucket one CUDA launch, or a CPU loop per tensor.
template <typename Op>
void apply_updates(const std::string& optimizer, const std::vector<TensorUpdate<Op>>& updates) {
  std::vector<std::vector<const TensorUpdate<Op>*>> buckets;
  for (const auto& u : updates) {
    bool placed = false;
    for (auto& b : buckets) {
      const Tensor& head = b.front()->param;
      if (head.device() == u.param.device() && head.dtype() == u.param.dtype()) {
        b.push_back(&u);
        placed = true;
        break;
      }
    }
    if (!placed) buckets.push_back({&u});
  }
  for (const auto& bucket : buckets) {
    const Tensor& head = bucket.front()->param;
    LOWBIT_DISPATCH_FLOATING(head.dtype(), optimizer.c_str(), [&] {
      std::vector<detail::UpdateEntry<scalar_t, Op>> entries;
      entries.reserve(bucket.size());
      for (const auto* u : bucket) {
        entries.push_back({static_cast<scalar_t*>(u->param.raw_data()),
                           static_cast<const scalar_t*>(u->grad.raw_data()),
                           data_or_null<scalar_t>(u->state0), data_or_null<scalar_t>(u->state1),
                           u->param.numel(), u->op});
      }
      detail::multi_tensor_update_stub<scalar_t, Op>()(head.device(), head.device(), entries);
    });
  }
  // Saved tensors of any graph that still refers to these must notice the change.
  for (const auto& u : updates) {
    u.param.storage()->bump_version();
    if (u.state0.defined()) u.state0.storage()->bump_version();
    if (u.state1.defined()) u.state1.storage()->bump_version();
  }
}

void check_hyper(const std::string& who, const char* what, double v) {
  LOWBIT_CHECK_INPUT(std::isfinite(v) && v >= 0.0, who, ": ", what, " ", v,
                     " must be a finite number >= 0");
}

// Parses a non-negative decimal index (digits only); false otherwise.
bool parse_index(const std::string& s, size_t* out) {
  if (s.empty() || s.size() > 18) return false;
  size_t v = 0;
  for (char ch : s) {
    if (ch < '0' || ch > '9') return false;
    v = v * 10 + size_t(ch - '0');
  }
  *out = v;
  return true;
}

// "state.<k>.<rest>" or "param_groups.<g>.<rest>": the index and rest; false for other forms.
bool split_key(const std::string& key, const std::string& prefix, size_t* index,
               std::string* rest) {
  if (key.compare(0, prefix.size(), prefix) != 0) return false;
  const size_t dot = key.find('.', prefix.size());
  if (dot == std::string::npos) return false;
  if (!parse_index(key.substr(prefix.size(), dot - prefix.size()), index)) return false;
  *rest = key.substr(dot + 1);
  return true;
}

// A one-element tensor's value, for the scalar entries of a state dict.
double scalar_entry(const std::string& key, const Tensor& t) {
  LOWBIT_CHECK_INPUT(t.numel() == 1, "optimizer state: '", key, "' must hold one value, got shape ",
                     t.shape());
  return t.item();
}

}  // namespace

// ------------------------------------------------------------------------------------- Optimizer

Optimizer::Optimizer(std::vector<ParamGroup> groups, std::string name)
    : groups_(std::move(groups)), name_(std::move(name)) {
  std::set<const TensorImpl*> seen;
  for (size_t g = 0; g < groups_.size(); ++g) {
    check_hyper(name_ + " " + group_label(g), "lr", groups_[g].lr);
    check_hyper(name_ + " " + group_label(g), "weight_decay", groups_[g].weight_decay);
    for (size_t i = 0; i < groups_[g].params.size(); ++i) {
      const Tensor& p = groups_[g].params[i];
      LOWBIT_CHECK(p.defined(), name_, ": parameter ", i, " of ", group_label(g),
                   " is an undefined tensor");
      LOWBIT_CHECK(seen.insert(p.impl()).second, name_, ": parameter ", i, " of ", group_label(g),
                   " (shape ", p.shape(), ") appears more than once in the parameter groups");
    }
  }
  state_.resize(groups_.size());
  for (size_t g = 0; g < groups_.size(); ++g) state_[g].resize(groups_[g].params.size());
}

std::string Optimizer::group_label(size_t g) const {
  const std::string& n = g < groups_.size() ? groups_[g].name : std::string();
  return n.empty() ? str_cat("group ", g) : str_cat("group ", g, " ('", n, "')");
}

void Optimizer::set_lr(double lr) {
  check_hyper(name_, "lr", lr);
  for (auto& g : groups_) g.lr = lr;
}

void Optimizer::zero_grad() {
  for (auto& g : groups_) {
    for (auto& p : g.params) {
      if (p.defined()) p.zero_grad();
    }
  }
}

void Optimizer::step() {
  autograd::NoGradGuard guard;
  state_.resize(groups_.size());
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const ParamGroup& group = groups_[gi];
    const std::string who = name_ + " " + group_label(gi);
    check_hyper(who, "lr", group.lr);
    check_hyper(who, "weight_decay", group.weight_decay);
    std::vector<ParamState>& states = state_[gi];
    states.resize(group.params.size());
    std::vector<Item> items;
    for (size_t pi = 0; pi < group.params.size(); ++pi) {
      const Tensor& p = group.params[pi];
      LOWBIT_CHECK(p.defined(), who, ": parameter ", pi, " is undefined");
      Tensor g = p.grad();
      if (!g.defined() || p.numel() == 0) continue;
      LOWBIT_CHECK(is_floating(p.dtype()), who, ": parameter ", pi, " has dtype ", p.dtype(),
                   "; optimizers update floating tensors only");
      LOWBIT_CHECK(p.is_contiguous(), who, ": parameter ", pi, " (shape ", p.shape(),
                   ") is not contiguous; it is updated in place");
      LOWBIT_CHECK(g.shape() == p.shape() && g.dtype() == p.dtype() && g.device() == p.device(),
                   who, ": gradient of parameter ", pi, " is ", g.dtype(), " ", g.shape(), " on ",
                   g.device(), " but the parameter is ", p.dtype(), " ", p.shape(), " on ",
                   p.device());
      items.push_back({p, g.contiguous(), &states[pi]});
    }
    if (!items.empty()) update_group(group, items);
  }
}

std::map<std::string, Tensor> Optimizer::state_dict() const {
  const std::vector<std::string> names = state_names();
  std::map<std::string, Tensor> out;
  size_t k = 0;
  for (size_t g = 0; g < groups_.size(); ++g) {
    const std::string gp = str_cat("param_groups.", g, ".");
    out[gp + "lr"] = scalar_tensor(groups_[g].lr, TensorOptions(DType::f64));
    out[gp + "weight_decay"] = scalar_tensor(groups_[g].weight_decay, TensorOptions(DType::f64));
    out[gp + "num_params"] = scalar_tensor(double(groups_[g].params.size()), DType::i64);
    for (size_t i = 0; i < groups_[g].params.size(); ++i, ++k) {
      if (g >= state_.size() || i >= state_[g].size()) continue;
      const ParamState& s = state_[g][i];
      const std::string sp = str_cat("state.", k, ".");
      if (!names[0].empty() && s.state0.defined()) out[sp + names[0]] = s.state0.detach();
      if (!names[1].empty() && s.state1.defined()) out[sp + names[1]] = s.state1.detach();
      if (counts_steps() && s.step > 0) {
        out[sp + "step"] = scalar_tensor(double(s.step), DType::i64);
      }
    }
  }
  return out;
}

void Optimizer::load_state_dict(const std::map<std::string, Tensor>& dict) {
  autograd::NoGradGuard guard;
  const std::vector<std::string> names = state_names();
  // Flat parameter index -> (group, position).
  std::vector<std::pair<size_t, size_t>> where;
  for (size_t g = 0; g < groups_.size(); ++g) {
    for (size_t i = 0; i < groups_[g].params.size(); ++i) where.emplace_back(g, i);
  }
  std::vector<std::vector<ParamState>> staged(groups_.size());
  for (size_t g = 0; g < groups_.size(); ++g) staged[g].resize(groups_[g].params.size());
  std::vector<double> lr(groups_.size()), wd(groups_.size());
  for (size_t g = 0; g < groups_.size(); ++g) {
    lr[g] = groups_[g].lr;
    wd[g] = groups_[g].weight_decay;
  }
  std::vector<bool> counted(groups_.size(), false);

  for (const auto& [key, t] : dict) {
    LOWBIT_CHECK_INPUT(t.defined(), name_, " state: '", key, "' is an undefined tensor");
    size_t index = 0;
    std::string rest;
    if (split_key(key, "state.", &index, &rest)) {
      LOWBIT_CHECK_INPUT(index < where.size(), name_, " state: '", key, "' names parameter ", index,
                         " but the optimizer has ", where.size(), " parameters");
      const auto [g, i] = where[index];
      const Tensor& p = groups_[g].params[i];
      ParamState& s = staged[g][i];
      if (counts_steps() && rest == "step") {
        const double v = scalar_entry(key, t);
        LOWBIT_CHECK_INPUT(v >= 1.0 && v == std::floor(v) && v < 9.0e15, name_, " state: '", key,
                           "' = ", v, " is not a step count (an integer >= 1)");
        s.step = int64_t(v);
        continue;
      }
      const int slot = (!names[0].empty() && rest == names[0])   ? 0
                       : (!names[1].empty() && rest == names[1]) ? 1
                                                                 : -1;
      LOWBIT_CHECK_INPUT(slot >= 0, name_, " state: unknown key '", key, "'");
      LOWBIT_CHECK_INPUT(is_floating(t.dtype()), name_, " state: '", key, "' has dtype ", t.dtype(),
                         "; want a floating tensor");
      LOWBIT_CHECK_INPUT(t.shape() == p.shape(), name_, " state: '", key, "' has shape ", t.shape(),
                         " but parameter ", index, " (", group_label(g), ", position ", i,
                         ") has shape ", p.shape());
      Tensor buf = empty_like(p);
      buf.copy_(t);
      (slot == 0 ? s.state0 : s.state1) = buf;
    } else if (split_key(key, "param_groups.", &index, &rest)) {
      LOWBIT_CHECK_INPUT(index < groups_.size(), name_, " state: '", key, "' names group ", index,
                         " but the optimizer has ", groups_.size(), " groups");
      const double v = scalar_entry(key, t);
      if (rest == "lr") {
        check_hyper(name_ + " state '" + key + "'", "lr", v);
        lr[index] = v;
      } else if (rest == "weight_decay") {
        check_hyper(name_ + " state '" + key + "'", "weight_decay", v);
        wd[index] = v;
      } else if (rest == "num_params") {
        LOWBIT_CHECK_INPUT(v == double(groups_[index].params.size()), name_, " state: '", key,
                           "' = ", v, " but ", group_label(index), " has ",
                           groups_[index].params.size(), " parameters");
        counted[index] = true;
      } else {
        LOWBIT_CHECK_INPUT(false, name_, " state: unknown key '", key, "'");
      }
    } else {
      LOWBIT_CHECK_INPUT(false, name_, " state: unknown key '", key, "'");
    }
  }
  for (size_t g = 0; g < groups_.size(); ++g) {
    LOWBIT_CHECK_INPUT(counted[g], name_, " state: no 'param_groups.", g,
                       ".num_params' entry; the state was not saved from ", groups_.size(),
                       " groups like these");
  }
  // Each parameter's state must be complete or absent.
  size_t k = 0;
  for (size_t g = 0; g < groups_.size(); ++g) {
    for (size_t i = 0; i < staged[g].size(); ++i, ++k) {
      const ParamState& s = staged[g][i];
      const bool has0 = s.state0.defined(), has1 = s.state1.defined();
      const bool has_step = s.step > 0;
      const bool complete =
          (names[1].empty() || has0 == has1) && (!counts_steps() || has0 == has_step);
      LOWBIT_CHECK_INPUT(complete, name_, " state: parameter ", k, " has an incomplete state (",
                         names[0], ": ", has0 ? "yes" : "no",
                         names[1].empty() ? "" : str_cat(", ", names[1], ": ", has1 ? "yes" : "no"),
                         counts_steps() ? str_cat(", step: ", has_step ? "yes" : "no") : "", ")");
    }
  }
  state_ = std::move(staged);
  for (size_t g = 0; g < groups_.size(); ++g) {
    groups_[g].lr = lr[g];
    groups_[g].weight_decay = wd[g];
  }
}

// ------------------------------------------------------------------------------------------- SGD

SGD::SGD(std::vector<ParamGroup> groups, SgdOptions options)
    : Optimizer(std::move(groups), "SGD"), options_(options) {
  check_hyper("SGD", "momentum", options.momentum);
  LOWBIT_CHECK_INPUT(std::isfinite(options.dampening), "SGD: dampening ", options.dampening,
                     " must be finite");
  LOWBIT_CHECK_INPUT(!options.nesterov || (options.momentum > 0.0 && options.dampening == 0.0),
                     "SGD: Nesterov momentum needs momentum > 0 and dampening 0, got momentum ",
                     options.momentum, " and dampening ", options.dampening);
}

void SGD::update_group(const ParamGroup& group, std::vector<Item>& items) {
  std::vector<TensorUpdate<SgdUpdate>> updates;
  updates.reserve(items.size());
  for (Item& item : items) {
    SgdUpdate op;
    op.lr = group.lr;
    op.weight_decay = group.weight_decay;
    op.momentum = options_.momentum;
    op.dampening = options_.dampening;
    op.nesterov = options_.nesterov;
    Tensor buf;
    if (options_.momentum != 0.0) {
      if (!item.state->state0.defined()) {
        item.state->state0 = zeros_like(item.param);
        op.first_step = true;
      }
      buf = item.state->state0;
    }
    updates.push_back({item.param, item.grad, buf, Tensor(), op});
  }
  apply_updates(name(), updates);
}

// ----------------------------------------------------------------------------------------- AdamW

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions options)
    : Optimizer(std::move(groups), "AdamW"), options_(options) {
  LOWBIT_CHECK_INPUT(options.beta1 >= 0.0 && options.beta1 < 1.0, "AdamW: beta1 ", options.beta1,
                     " must lie in [0, 1)");
  LOWBIT_CHECK_INPUT(options.beta2 >= 0.0 && options.beta2 < 1.0, "AdamW: beta2 ", options.beta2,
                     " must lie in [0, 1)");
  check_hyper("AdamW", "eps", options.eps);
}

void AdamW::update_group(const ParamGroup& group, std::vector<Item>& items) {
  std::vector<TensorUpdate<AdamWUpdate>> updates;
  updates.reserve(items.size());
  for (Item& item : items) {
    ParamState& s = *item.state;
    if (!s.state0.defined()) {
      s.state0 = zeros_like(item.param);
      s.state1 = zeros_like(item.param);
      s.step = 0;
    }
    s.step += 1;
    const double t = double(s.step);
    AdamWUpdate op;
    op.decay = 1.0 - group.lr * group.weight_decay;
    op.beta1 = options_.beta1;
    op.beta2 = options_.beta2;
    op.eps = options_.eps;
    op.step_size = group.lr / (1.0 - std::pow(options_.beta1, t));
    op.bias_correction2_sqrt = std::sqrt(1.0 - std::pow(options_.beta2, t));
    updates.push_back({item.param, item.grad, s.state0, s.state1, op});
  }
  apply_updates(name(), updates);
}

// ------------------------------------------------------------------------------ clip_grad_norm

Tensor clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  LOWBIT_CHECK(std::isfinite(max_norm) && max_norm >= 0.0, "clip_grad_norm: max_norm ", max_norm,
               " must be a finite number >= 0");
  autograd::NoGradGuard guard;
  std::vector<Tensor> grads;
  for (const Tensor& p : params) {
    if (!p.defined()) continue;
    Tensor g = p.grad();
    if (!g.defined()) continue;
    LOWBIT_CHECK(is_floating(g.dtype()), "clip_grad_norm: gradient of dtype ", g.dtype());
    if (!grads.empty()) {
      LOWBIT_CHECK(g.device() == grads.front().device(), "clip_grad_norm: gradients on ",
                   grads.front().device(), " and ", g.device(), "; want one device");
    }
    grads.push_back(g);
  }
  if (grads.empty()) return zeros({}, TensorOptions(DType::f64));
  const Device dev = grads.front().device();
  Tensor total_sq = zeros({}, TensorOptions(DType::f64, dev));
  for (const Tensor& g : grads) {
    if (g.numel() == 0) continue;
    total_sq = add(total_sq, sum(square(g.to(DType::f64))));  // f32 squares are exact in double
  }
  const Tensor total = sqrt(total_sq);
  const Tensor limit = scalar_tensor(max_norm, TensorOptions(DType::f64, dev));
  const Tensor coef = clamp(div(limit, add(total, 1e-6)), 0.0, 1.0);  // NaN stays NaN
  // On the CPU skip the multiply when it would be by exactly 1 (reading coef is free there);
  // on CUDA always multiply rather than sync: x * 1 is exact.
  if (dev.is_cpu()) {
    const double c = coef.item();
    if (c == 1.0) return total;
  }
  for (const Tensor& g : grads) {
    if (g.numel() == 0) continue;
    Tensor target = g;
    target.copy_(mul(g, coef.to(g.dtype())));
  }
  return total;
}

namespace {

// stages[].optimizer.name (train/registries.h).
const bool kOptimizersRegistered = [] {
  optimizer_registry().add("sgd", [](std::vector<ParamGroup> groups, const OptimizerConfig& c) {
    return std::unique_ptr<Optimizer>(
        std::make_unique<SGD>(std::move(groups), SgdOptions{c.momentum, 0.0, c.nesterov}));
  });
  optimizer_registry().add("adamw", [](std::vector<ParamGroup> groups, const OptimizerConfig& c) {
    return std::unique_ptr<Optimizer>(
        std::make_unique<AdamW>(std::move(groups), AdamWOptions{c.beta1, c.beta2, c.eps}));
  });
  return true;
}();

}  // namespace

}  // namespace lowbit::train
