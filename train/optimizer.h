// Optimizers (SGD, AdamW) over parameter groups, their checkpointable state, and global
// gradient-norm clipping. The update rules are PyTorch's (torch.optim.SGD, torch.optim.AdamW,
// torch.nn.utils.clip_grad_norm_), written once as LOWBIT_HD functors applied elementwise:
//
//   SGD    g += wd * p                              (coupled weight decay)
//          buf = g on a parameter's first step, else momentum * buf + (1 - dampening) * g
//          g = nesterov ? g + momentum * buf : buf  (when momentum != 0)
//          p -= lr * g
//   AdamW  p *= 1 - lr * wd                         (decoupled weight decay)
//          m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//          p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//          (= lr * mhat / (sqrt(vhat) + eps); t counts this parameter's steps, from 1)
//
// step() runs under NoGradGuard and skips parameters without a gradient: their state and step
// count stay as they were, as in PyTorch. Each group has its own lr and weight decay, so BN
// parameters and biases go into a group with weight_decay = 0. On the CPU each tensor is one
// core::for_each_index loop; on CUDA one launch updates every tensor of a group (per dtype, if
// a group mixes dtypes): a table of {param, grad, state pointers, numel, per-tensor scalars}
// plus a block -> chunk map is built on the host each step in pinned memory and copied to the
// device with a single asynchronous H2D copy, then one kernel walks the chunks (optimizer.cu).
// Math is in float for f32/bf16/f16 parameters and double for f64; state has the param's dtype.
#pragma once

#include <math.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/dispatch.h"
#include "core/hd.h"
#include "core/math.h"
#include "core/tensor.h"

namespace lowbit::train {

struct ParamGroup {
  std::vector<Tensor> params;
  double lr = 0.0;
  double weight_decay = 0.0;
  std::string name;  // optional, for messages ("group 1" when empty)

  ParamGroup() = default;
  // ParamGroup{params, lr}, ParamGroup{params, lr, weight_decay, "bn"}.
  ParamGroup(std::vector<Tensor> params_in, double lr_in, double weight_decay_in = 0.0,
             std::string name_in = "")
      : params(std::move(params_in)),
        lr(lr_in),
        weight_decay(weight_decay_in),
        name(std::move(name_in)) {}
};

// --- the update math, shared by the CPU loop and the CUDA kernel -------------------------------
// Each functor updates one element: p (param), g (grad), s0 and s1 (the optimizer's state, or
// scratch when unused), all in the op-math type A. Scalars are double and converted on use.

struct SgdUpdate {
  double lr = 0.0;
  double weight_decay = 0.0;
  double momentum = 0.0;
  double dampening = 0.0;
  bool nesterov = false;
  bool first_step = false;  // this parameter has no momentum buffer yet: buf = g

  template <typename A>
  LOWBIT_HD void operator()(A& p, A g, A& buf, A& /*unused*/) const {
    if (weight_decay != 0.0) g += A(weight_decay) * p;
    if (momentum != 0.0) {
      buf = first_step ? g : A(momentum) * buf + A(1.0 - dampening) * g;
      g = nesterov ? g + A(momentum) * buf : buf;
    }
    p -= A(lr) * g;
  }
};

struct AdamWUpdate {
  double decay = 1.0;  // 1 - lr * weight_decay
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double step_size = 0.0;              // lr / (1 - beta1^t)
  double bias_correction2_sqrt = 1.0;  // sqrt(1 - beta2^t)

  template <typename A>
  LOWBIT_HD void operator()(A& p, A g, A& m, A& v) const {
    p *= A(decay);
    m = A(beta1) * m + A(1.0 - beta1) * g;
    v = A(beta2) * v + A(1.0 - beta2) * g * g;
    const A denom = math::sqrt(v) / A(bias_correction2_sqrt) + A(eps);
    p -= A(step_size) * m / denom;
  }
};

namespace detail {

// One tensor's update: raw pointers (state pointers null when unused) and its functor.
template <typename T, typename Op>
struct UpdateEntry {
  T* param;
  const T* grad;
  T* state0;
  T* state1;
  int64_t numel;
  Op op;
};

template <typename T, typename Op>
LOWBIT_HD void update_element(const UpdateEntry<T, Op>& e, int64_t i) {
  using A = opmath_t<T>;
  A p = A(e.param[i]);
  A s0 = e.state0 ? A(e.state0[i]) : A(0);
  A s1 = e.state1 ? A(e.state1[i]) : A(0);
  e.op(p, A(e.grad[i]), s0, s1);
  e.param[i] = T(p);
  if (e.state0) e.state0[i] = T(s0);
  if (e.state1) e.state1[i] = T(s1);
}

// Applies every entry of one bucket; all pointers are on `device`. By device (core/dispatch.h):
// a CPU loop per tensor (optimizer.cpp) or one CUDA launch (optimizer.cu). One stub per (T, Op);
// each backend fills its slot of all of them with an UpdateRegistrar.
template <typename T, typename Op>
using MultiTensorUpdateFn = void (*)(Device device, const std::vector<UpdateEntry<T, Op>>& entries);
// A function-local static of an inline function: one object across every translation unit,
// constant-initialised, so registration order cannot matter.
template <typename T, typename Op>
core::DispatchStub<MultiTensorUpdateFn<T, Op>>& multi_tensor_update_stub() {
  static core::DispatchStub<MultiTensorUpdateFn<T, Op>> stub{"optimizer update"};
  return stub;
}
// Fills the `type` slot of the stubs of T in {float, double, bf16, f16} and both updates with
// Launch::run<T, Op>; one static object per backend.
template <typename Launch>
struct UpdateRegistrar {
  explicit UpdateRegistrar(DeviceType type) {
    add<float>(type);
    add<double>(type);
    add<bf16>(type);
    add<f16>(type);
  }

 private:
  template <typename T>
  static void add(DeviceType type) {
    core::StubRegistrar(multi_tensor_update_stub<T, SgdUpdate>(), type,
                        &Launch::template run<T, SgdUpdate>);
    core::StubRegistrar(multi_tensor_update_stub<T, AdamWUpdate>(), type,
                        &Launch::template run<T, AdamWUpdate>);
  }
};

}  // namespace detail

// --- optimizers ----------------------------------------------------------------------------------

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // Updates every parameter that has a gradient (under NoGradGuard).
  void step();
  // Drops the .grad of every parameter (PyTorch's set_to_none=True).
  void zero_grad();

  // Groups may be edited between steps (lr, weight_decay, appending parameters); removing or
  // reordering parameters would misattribute their state.
  std::vector<ParamGroup>& param_groups() { return groups_; }
  const std::vector<ParamGroup>& param_groups() const { return groups_; }
  void set_lr(double lr);  // every group

  // Named tensors for a checkpoint, with k the parameter's position counting through the
  // groups in order (PyTorch's state_dict numbering):
  //   state.<k>.<buffer>         momentum_buffer (SGD); exp_avg, exp_avg_sq (AdamW)
  //   state.<k>.step             i64 0-d (AdamW)
  //   param_groups.<g>.lr, .weight_decay   f64 0-d;   param_groups.<g>.num_params  i64 0-d
  // The state tensors alias the live state: save (or clone) them before the next step().
  std::map<std::string, Tensor> state_dict() const;
  // Replaces all state (copied onto each parameter's device and dtype) and the groups' lr and
  // weight decay. Validates everything first and throws lowbit::InputError naming the key and
  // the problem (unknown key, group structure, shape or dtype); on error nothing changes.
  void load_state_dict(const std::map<std::string, Tensor>& state);

  const std::string& name() const { return name_; }

 protected:
  struct ParamState {
    Tensor state0, state1;  // named by state_names()
    int64_t step = 0;
  };
  struct Item {
    Tensor param;  // contiguous, floating
    Tensor grad;   // same shape, dtype and device; contiguous
    ParamState* state;
  };

  Optimizer(std::vector<ParamGroup> groups, std::string name);
  // The names of state0 and state1 ("" = unused) and whether the step count is kept.
  virtual std::vector<std::string> state_names() const = 0;
  virtual bool counts_steps() const = 0;
  // Updates the items of one group (those with a gradient).
  virtual void update_group(const ParamGroup& group, std::vector<Item>& items) = 0;

 private:
  std::string group_label(size_t g) const;
  std::vector<ParamGroup> groups_;
  std::vector<std::vector<ParamState>> state_;  // [group][param]
  std::string name_;
};

struct SgdOptions {
  double momentum = 0.0;
  double dampening = 0.0;
  bool nesterov = false;  // needs momentum > 0 and dampening 0
};

class SGD final : public Optimizer {
 public:
  explicit SGD(std::vector<ParamGroup> groups, SgdOptions options = {});
  const SgdOptions& options() const { return options_; }

 protected:
  std::vector<std::string> state_names() const override { return {"momentum_buffer", ""}; }
  bool counts_steps() const override { return false; }
  void update_group(const ParamGroup& group, std::vector<Item>& items) override;

 private:
  SgdOptions options_;
};

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
};

class AdamW final : public Optimizer {
 public:
  explicit AdamW(std::vector<ParamGroup> groups, AdamWOptions options = {});
  const AdamWOptions& options() const { return options_; }

 protected:
  std::vector<std::string> state_names() const override { return {"exp_avg", "exp_avg_sq"}; }
  bool counts_steps() const override { return true; }
  void update_group(const ParamGroup& group, std::vector<Item>& items) override;

 private:
  AdamWOptions options_;
};

// PyTorch's clip_grad_norm_ (L2): total = sqrt(sum over all grads of g^2), accumulated in
// double; every grad is multiplied in place by min(1, max_norm / (total + 1e-6)). Parameters
// without a gradient are skipped; all gradients must share a device. Returns total as a 0-d f64
// tensor on that device (0 on the CPU when no parameter has a gradient) without a host sync:
// call .item() where you log. A non-finite total makes every gradient NaN, as in PyTorch.
Tensor clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

}  // namespace lowbit::train
