#include "layers/module.h"

#include <cmath>
#include <set>
#include <sstream>

#include "core/autograd.h"
#include "core/ops.h"

namespace lowbit::layers {

void Module::register_parameter(const std::string& name, Tensor* slot) {
  for (const auto& p : params_)
    LOWBIT_CHECK(p.first != name, "parameter '", name, "' registered twice");
  if (slot->defined() && is_floating(slot->dtype()) && !slot->requires_grad())
    slot->requires_grad_(true);
  params_.emplace_back(name, slot);
}

void Module::register_buffer(const std::string& name, Tensor* slot) {
  for (const auto& b : buffers_)
    LOWBIT_CHECK(b.first != name, "buffer '", name, "' registered twice");
  buffers_.emplace_back(name, slot);
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> m) {
  LOWBIT_CHECK(m != nullptr, "child module '", name, "' is null");
  for (const auto& c : children_)
    LOWBIT_CHECK(c.first != name, "child module '", name, "' registered twice");
  children_.emplace_back(name, std::move(m));
}

void Module::train(bool on) {
  training_ = on;
  on_train(on);
  for (auto& c : children_) c.second->train(on);
}

void Module::collect(const std::string& prefix, bool params, bool recurse,
                     std::vector<std::pair<std::string, Tensor>>* out) const {
  for (const auto& [name, slot] : params ? params_ : buffers_) {
    if (slot->defined()) out->emplace_back(prefix + name, *slot);
  }
  if (!recurse) return;
  for (const auto& [name, child] : children_)
    child->collect(prefix + name + ".", params, true, out);
}

void Module::collect_slots(
    const std::string& prefix,
    std::vector<std::tuple<std::string, Tensor*, const Module*, std::string>>* out) {
  for (auto& [name, slot] : params_) out->emplace_back(prefix + name, slot, this, name);
  for (auto& [name, slot] : buffers_) out->emplace_back(prefix + name, slot, this, name);
  for (auto& [name, child] : children_) child->collect_slots(prefix + name + ".", out);
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters(bool recurse) const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect("", true, recurse, &out);
  return out;
}

std::vector<Tensor> Module::parameters(bool recurse) const {
  std::vector<Tensor> out;
  for (auto& p : named_parameters(recurse)) out.push_back(p.second);
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers(bool recurse) const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect("", false, recurse, &out);
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_modules() {
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> out;
  std::function<void(const std::string&, const std::shared_ptr<Module>&)> walk =
      [&](const std::string& name, const std::shared_ptr<Module>& m) {
        out.emplace_back(name, m);
        for (auto& [cn, c] : m->children_) walk(name.empty() ? cn : name + "." + cn, c);
      };
  out.emplace_back("", shared_from_this());
  for (auto& [cn, c] : children_) walk(cn, c);
  return out;
}

std::shared_ptr<Module> Module::child(const std::string& name) const {
  for (const auto& c : children_) {
    if (c.first == name) return c.second;
  }
  LOWBIT_FAIL(type_name(), " has no child module '", name, "'");
}

void Module::replace_child(const std::string& name, std::shared_ptr<Module> m) {
  LOWBIT_CHECK(m != nullptr, "replace_child: module for '", name, "' is null");
  for (auto& c : children_) {
    if (c.first == name) {
      c.second = std::move(m);
      return;
    }
  }
  LOWBIT_FAIL(type_name(), " has no child module '", name, "' to replace");
}

void child_type_error(const Module& owner, size_t index) {
  const auto& c = owner.named_children().at(index);
  LOWBIT_FAIL("child '", c.first, "' of ", owner.type_name(), " was replaced by a ",
              c.second->type_name(), " of an incompatible type");
}

void replace_module(Module& root, const std::string& path, ModulePtr m) {
  LOWBIT_CHECK(!path.empty(), "replace_module: empty path (the root cannot be replaced)");
  Module* parent = &root;
  std::string rest = path;
  for (size_t dot; (dot = rest.find('.')) != std::string::npos;) {
    parent = parent->child(rest.substr(0, dot)).get();
    rest = rest.substr(dot + 1);
  }
  parent->replace_child(rest, std::move(m));
}

namespace {
thread_local ForwardRecorder* g_recorder = nullptr;
}

ForwardRecorder* current_forward_recorder() { return g_recorder; }
RecordForward::RecordForward(ForwardRecorder* r) : prev_(g_recorder) { g_recorder = r; }
RecordForward::~RecordForward() { g_recorder = prev_; }

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& p : named_parameters()) n += p.second.numel();
  return n;
}

void Module::zero_grad() {
  for (auto& p : named_parameters()) p.second.zero_grad();
}

void Module::to(Device device) {
  std::vector<std::tuple<std::string, Tensor*, const Module*, std::string>> slots;
  collect_slots("", &slots);
  autograd::NoGradGuard guard;
  for (auto& [name, slot, owner, local] : slots) {
    if (!slot->defined() || slot->device() == device) continue;
    const bool rg = slot->requires_grad();
    *slot = slot->to(device);
    if (rg) slot->requires_grad_(true);
  }
}

void Module::to(DType dtype) {
  LOWBIT_CHECK(is_floating(dtype), "Module::to: dtype must be floating, got ", dtype);
  std::vector<std::tuple<std::string, Tensor*, const Module*, std::string>> slots;
  collect_slots("", &slots);
  autograd::NoGradGuard guard;
  for (auto& [name, slot, owner, local] : slots) {
    if (!slot->defined() || !is_floating(slot->dtype()) || slot->dtype() == dtype) continue;
    const bool rg = slot->requires_grad();
    *slot = slot->to(dtype);
    if (rg) slot->requires_grad_(true);
  }
}

Device Module::device() const {
  auto ps = named_parameters();
  if (!ps.empty()) return ps.front().second.device();
  auto bs = named_buffers();
  return bs.empty() ? Device::cpu() : bs.front().second.device();
}

Tensor Module::to_layout(const std::string&, const Tensor& t, Layout, Layout) const { return t; }

StateDict Module::state_dict(Layout layout) const {
  std::vector<std::tuple<std::string, Tensor*, const Module*, std::string>> slots;
  const_cast<Module*>(this)->collect_slots("", &slots);
  StateDict out;
  for (auto& [name, slot, owner, local] : slots) {
    if (!slot->defined()) continue;
    Tensor t = slot->detach();
    if (layout != Layout::lowbit)
      t = owner->to_layout(local, t, Layout::lowbit, layout).contiguous();
    out[name] = t;
  }
  return out;
}

void Module::load_state_dict(const StateDict& state, bool strict, Layout layout) {
  std::vector<std::tuple<std::string, Tensor*, const Module*, std::string>> slots;
  collect_slots("", &slots);
  std::vector<std::string> missing, unexpected, wrong_shape;
  std::set<std::string> known;
  autograd::NoGradGuard guard;
  // Check everything first, so a failed load changes nothing.
  std::vector<std::pair<Tensor*, Tensor>> plan;
  for (auto& [name, slot, owner, local] : slots) {
    if (!slot->defined()) continue;
    known.insert(name);
    auto it = state.find(name);
    if (it == state.end()) {
      missing.push_back(name);
      continue;
    }
    Tensor v = it->second;
    if (layout != Layout::lowbit) v = owner->to_layout(local, v, layout, Layout::lowbit);
    if (v.shape() != slot->shape()) {
      wrong_shape.push_back(
          str_cat(name, " (checkpoint ", v.shape(), ", model ", slot->shape(), ")"));
      continue;
    }
    plan.emplace_back(slot, v);
  }
  for (const auto& [name, t] : state) {
    if (!known.count(name)) unexpected.push_back(name);
  }
  auto join = [](const std::vector<std::string>& v) {
    std::ostringstream os;
    for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
    return os.str();
  };
  const bool bad = !wrong_shape.empty() || (strict && (!missing.empty() || !unexpected.empty()));
  if (bad) {
    std::ostringstream os;
    os << "load_state_dict into " << type_name() << " failed:";
    if (!missing.empty()) os << " missing keys: " << join(missing) << ";";
    if (!unexpected.empty()) os << " unexpected keys: " << join(unexpected) << ";";
    if (!wrong_shape.empty()) os << " wrong shapes: " << join(wrong_shape) << ";";
    throw InputError(os.str());
  }
  for (auto& [slot, v] : plan) {
    const bool rg = slot->requires_grad();
    if (rg) slot->autograd_meta().requires_grad = false;
    slot->copy_(v);
    if (rg) slot->autograd_meta().requires_grad = true;
  }
}

std::string Module::str() const {
  std::ostringstream os;
  os << type_name() << "(" << extra_repr();
  if (!children_.empty()) {
    os << "\n";
    for (const auto& [name, c] : children_) {
      std::string sub = c->str();
      size_t pos = 0;
      while ((pos = sub.find('\n', pos)) != std::string::npos) {
        sub.insert(pos + 1, "  ");
        pos += 3;
      }
      os << "  (" << name << "): " << sub << "\n";
    }
  }
  os << ")";
  return os.str();
}

Tensor uniform_fan_in(const Shape& shape, int64_t fan_in) {
  const double bound = fan_in > 0 ? 1.0 / std::sqrt(double(fan_in)) : 0.0;
  return rand(shape) * (2.0 * bound) - bound;
}

}  // namespace lowbit::layers
