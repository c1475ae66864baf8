// Helpers for the pruning suites: zoo models with "trained-looking" BN statistics, clones,
// eval outputs, and the references pruned models are compared against.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/random.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "models/registry.h"
#include "prune/graph.h"

namespace lowbit::prune::testing {

inline models::ModelOptions zoo_options(int64_t in_channels = 3, int64_t size = 32,
                                        const std::string& shortcut = "A") {
  models::ModelOptions o;
  o.in_channels = in_channels;
  o.input_size = size;
  o.shortcut = shortcut;
  o.num_classes = 10;
  return o;
}

// gamma in [0.5, 1.5], beta in [-0.5, 0.5], running mean in [-0.2, 0.2], running var in
// [0.5, 1.5]: far from PfQ's threshold, so only the channels a test collapses are picked.
inline void randomize_bn(layers::Module& m) {
  autograd::NoGradGuard g;
  for (auto& [name, mod] : m.named_modules()) {
    auto* bn = dynamic_cast<layers::BatchNorm2d*>(mod.get());
    if (bn == nullptr) continue;
    const int64_t c = bn->options().num_features;
    bn->weight().detach().copy_(rand({c}) + 0.5);
    bn->bias().detach().copy_(rand({c}) - 0.5);
    bn->running_mean().copy_((rand({c}) - 0.5) * 0.4);
    bn->running_var().copy_(rand({c}) + 0.5);
  }
}

// A fresh model of the same kind with the same state.
inline layers::ModulePtr clone_model(const std::string& name, const models::ModelOptions& o,
                                     layers::Module& src) {
  auto m = models::create_model(name, o);
  m->load_state_dict(src.state_dict());
  m->to(src.device());
  return m;
}

inline Tensor eval_forward(layers::Module& m, const Tensor& x) {
  autograd::NoGradGuard g;
  const bool training = m.is_training();
  m.eval();
  Tensor y = m.forward(x);
  m.train(training);
  return y;
}

template <typename T>
T* module_as(layers::Module& root, const std::string& path) {
  for (auto& [name, m] : root.named_modules()) {
    if (name == path) {
      T* t = dynamic_cast<T*>(m.get());
      EXPECT_NE(t, nullptr) << path << " is a " << m->type_name();
      return t;
    }
  }
  ADD_FAILURE() << "no module " << path;
  return nullptr;
}

// Sets entries `idx` of a 1-D tensor (any device) to `value`.
inline void set_entries(Tensor& t, const std::vector<int64_t>& idx, double value) {
  autograd::NoGradGuard g;
  std::vector<float> v = t.to(DType::f32).to_vector<float>();
  for (int64_t i : idx) v[size_t(i)] = float(value);
  t.detach().copy_(from_vector(v, {int64_t(v.size())}).to(t.device()));
}

// Scales output channels `idx` of a conv's weight by s (s = 0: a dead filter).
inline void scale_filters(layers::Conv2d& conv, const std::vector<int64_t>& idx, double s) {
  autograd::NoGradGuard g;
  const int64_t k = conv.weight().size(0);
  std::vector<float> f(size_t(k), 1.0f);
  for (int64_t i : idx) f[size_t(i)] = float(s);
  Tensor m = from_vector(f, {k, 1, 1, 1}).to(conv.weight().device());
  conv.weight().detach().copy_(conv.weight().detach() * m);
}

// A "trained" Conv+BN pair whose filters `idx` decayed to `residual_scale` of their init: the
// BN saw (almost) the constant conv bias (0 without one), so running var is 1e-8 and running
// mean that bias (docs/methods.md, "PfQ"). With residual_scale = 0 the BN outputs exactly beta in
// eval.
inline void collapse(layers::Module& m, const std::string& conv, const std::string& bn,
                     const std::vector<int64_t>& idx, double residual_scale = 0.0) {
  auto* c = module_as<layers::Conv2d>(m, conv);
  scale_filters(*c, idx, residual_scale);
  auto* b = module_as<layers::BatchNorm2d>(m, bn);
  set_entries(b->running_var(), idx, 1e-8);
  if (c->bias().defined()) {
    const std::vector<float> bias = c->bias().to(DType::f32).to_vector<float>();
    for (int64_t i : idx) set_entries(b->running_mean(), {i}, bias[size_t(i)]);
  } else {
    set_entries(b->running_mean(), idx, 0.0);
  }
}

}  // namespace lowbit::prune::testing
