// PreCropping (prune/precrop.h, docs/methods.md "PreCropping"): SynFlow and SNIP scores, layer
// densities, channel keep ratios under the channel graph's constraints, the crop and the
// baselines (masks of unstructured pruning at initialization, random channel cropping).
#include "prune/precrop.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>

#include "core/autograd.h"
#include "core/ops.h"
#include "layers/basic.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "prune/graph.h"
#include "prune/surgery.h"

namespace lowbit::prune {

namespace {

void check_choice(const char* key, const std::string& v, const std::vector<std::string>& allowed) {
  if (std::find(allowed.begin(), allowed.end(), v) != allowed.end()) return;
  std::string list;
  for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
  throw InputError(str_cat(key, ": '", v, "' is not allowed; allowed: ", list));
}

// A prunable weight: every Conv2d's and Linear's, in module order.
struct Prunable {
  std::string name;
  std::string type;
  Tensor weight;  // the parameter (shares storage)
};

std::vector<Prunable> prunable(layers::Module& model) {
  std::vector<Prunable> out;
  for (auto& [name, m] : model.named_modules()) {
    if (auto* c = dynamic_cast<layers::Conv2d*>(m.get())) {
      out.push_back({name, "Conv2d", c->weight()});
    } else if (auto* l = dynamic_cast<layers::Linear*>(m.get())) {
      out.push_back({name, "Linear", l->weight()});
    }
  }
  LOWBIT_CHECK_INPUT(!out.empty(), "precrop: the model has no Conv2d or Linear layer to score");
  return out;
}

// The model's values, mode and gradients, restored when the scope ends.
class ModelGuard {
 public:
  explicit ModelGuard(layers::Module& m) : m_(m), training_(m.is_training()) {
    for (auto& [k, v] : m.state_dict()) saved_[k] = v.clone();
  }
  ~ModelGuard() {
    m_.load_state_dict(saved_);
    m_.train(training_);
    m_.zero_grad();
  }
  ModelGuard(const ModelGuard&) = delete;
  ModelGuard& operator=(const ModelGuard&) = delete;

 private:
  layers::Module& m_;
  bool training_;
  layers::StateDict saved_;
};

// Keeps the `n` largest scores of all layers (within the current masks: a pruned weight stays
// pruned), ties broken in layer and element order. Updates masks and kept counts.
void keep_top(std::vector<ScoredLayer>& layers, int64_t n) {
  int64_t total = 0;
  for (const auto& l : layers) total += l.total;
  std::vector<float> all;
  all.reserve(size_t(total));
  std::vector<std::vector<float>> s(layers.size()), m(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    s[i] = layers[i].score.to_vector<float>();
    m[i] = layers[i].mask.to_vector<float>();
    for (size_t j = 0; j < s[i].size(); ++j) all.push_back(m[i][j] > 0 ? s[i][j] : -1.0f);
  }
  n = std::clamp<int64_t>(n, 0, total);
  float thr = -1.0f;
  if (n > 0 && n < total) {
    std::nth_element(all.begin(), all.begin() + (total - n), all.end());
    thr = all[size_t(total - n)];
  }
  int64_t above = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    for (size_t j = 0; j < s[i].size(); ++j) above += m[i][j] > 0 && s[i][j] > thr;
  }
  int64_t ties = n - above;  // elements equal to the threshold still to keep
  for (size_t i = 0; i < layers.size(); ++i) {
    int64_t kept = 0;
    for (size_t j = 0; j < s[i].size(); ++j) {
      bool keep = m[i][j] > 0 && (n == total || s[i][j] > thr);
      if (!keep && m[i][j] > 0 && s[i][j] == thr && ties > 0 && n < total) {
        keep = true;
        --ties;
      }
      m[i][j] = keep ? 1.0f : 0.0f;
      kept += keep;
    }
    layers[i].mask = from_vector(m[i], layers[i].mask.shape());
    layers[i].kept = kept;
  }
}

std::vector<ScoredLayer> init_scored(const std::vector<Prunable>& ps) {
  std::vector<ScoredLayer> out;
  for (const auto& p : ps) {
    ScoredLayer l;
    l.name = p.name;
    l.total = p.weight.numel();
    l.kept = l.total;
    l.mask = ones(p.weight.shape());
    l.score = zeros(p.weight.shape());
    out.push_back(l);
  }
  return out;
}

void check_density(double density) {
  LOWBIT_CHECK_INPUT(density > 0.0 && density <= 1.0, "budget: ", density,
                     " is out of range (0, 1]");
}

}  // namespace

void PrecropOptions::validate() const {
  check_choice("method", method, {"precrop", "pai", "random"});
  check_choice("score", score, {"synflow", "snip"});
  check_choice("budget_kind", budget_kind, {"params", "flops"});
  LOWBIT_CHECK_INPUT(budget > 0.0 && budget <= 1.0, "budget: ", budget,
                     " is out of range (0, 1]: the fraction of the full network to keep");
  LOWBIT_CHECK_INPUT(iterations >= 1 && iterations <= 100000, "iterations: ", iterations,
                     " is out of range 1 to 100000");
  LOWBIT_CHECK_INPUT(snip_batches >= 1 && snip_batches <= 100000, "snip_batches: ", snip_batches,
                     " is out of range 1 to 100000");
  LOWBIT_CHECK_INPUT(!(method == "pai" && budget_kind == "flops"),
                     "budget_kind: flops does not apply to method pai (masked weights still cost "
                     "their operations); use params");
}

std::vector<ScoredLayer> synflow_scores(layers::Module& model, const Shape& sample_hwc,
                                        double density, int64_t iterations) {
  check_density(density);
  LOWBIT_CHECK_INPUT(iterations >= 1, "iterations: ", iterations, " must be at least 1");
  LOWBIT_CHECK_INPUT(sample_hwc.size() == 3, "synflow_scores: the sample shape must be {H, W, C}");
  std::vector<Prunable> ps = prunable(model);
  std::vector<ScoredLayer> out = init_scored(ps);
  ModelGuard guard(model);
  model.eval();
  std::vector<Tensor> w_abs;
  {
    autograd::NoGradGuard ng;
    // R is then positively homogeneous in the input and in each layer's weights.
    for (auto& [name, p] : model.named_parameters()) p.copy_(abs(p));
    for (auto& [name, m] : model.named_modules()) {
      if (auto* c = dynamic_cast<layers::Conv2d*>(m.get())) {
        if (c->bias().defined()) c->bias().zero_();
      } else if (auto* l = dynamic_cast<layers::Linear*>(m.get())) {
        if (l->bias().defined()) l->bias().zero_();
      } else if (auto* bn = dynamic_cast<layers::BatchNorm2d*>(m.get())) {
        if (bn->bias().defined()) bn->bias().zero_();
        if (bn->running_mean().defined()) bn->running_mean().zero_();
      }
    }
    for (auto& p : ps) w_abs.push_back(p.weight.detach().clone());
  }
  int64_t total = 0;
  for (const auto& l : out) total += l.total;
  const Device dev = model.device();
  double s_in = 1.0;  // input scale; the output gradient is scaled by the same factor
  for (int64_t k = 1; k <= iterations; ++k) {
    {
      autograd::NoGradGuard ng;
      for (size_t i = 0; i < ps.size(); ++i) {
        ps[i].weight.copy_(w_abs[i] * out[i].mask.to(dev, w_abs[i].dtype()));
      }
    }
    // Scale the all-ones input to about 1/sqrt(G), G the network's gain R(ones), and the output
    // gradient by the same: activations and gradients then stay within sqrt(G) of 1.
    Tensor y;
    for (int tries = 0;; ++tries) {
      model.zero_grad();
      y = sum(model.forward(full({1, sample_hwc[0], sample_hwc[1], sample_hwc[2]}, s_in,
                                 TensorOptions(DType::f32, dev))));
      const double r = y.item();
      LOWBIT_CHECK(tries < 40, "synflow_scores: no input scale keeps R finite (last R = ", r, ")");
      if (!std::isfinite(r)) {
        s_in *= 1e-15;
        continue;
      }
      if (r <= 0.0) break;  // everything pruned away: all scores 0
      const double want = 1.0 / std::sqrt(r / s_in);
      if (std::fabs(std::log10(want / s_in)) <= 3.0) break;
      s_in = want;
    }
    (y * s_in).backward();
    for (size_t i = 0; i < ps.size(); ++i) {
      const Tensor g = ps[i].weight.grad();
      out[i].score = g.defined() ? abs(ps[i].weight.detach() * g).to(Device::cpu(), DType::f32)
                                 : zeros(ps[i].weight.shape());
    }
    const double d = std::pow(density, double(k) / double(iterations));
    keep_top(out, int64_t(std::llround(d * double(total))));
  }
  return out;
}

std::vector<ScoredLayer> snip_scores(layers::Module& model, double density,
                                     const std::function<Tensor(layers::Module&)>& loss,
                                     int64_t batches) {
  check_density(density);
  LOWBIT_CHECK(loss != nullptr, "snip_scores: needs a loss function (training batches)");
  std::vector<Prunable> ps = prunable(model);
  std::vector<ScoredLayer> out = init_scored(ps);
  ModelGuard guard(model);
  model.train();
  model.zero_grad();
  for (int64_t b = 0; b < batches; ++b) loss(model).backward();
  int64_t total = 0;
  for (size_t i = 0; i < ps.size(); ++i) {
    const Tensor g = ps[i].weight.grad();
    out[i].score = g.defined() ? abs(ps[i].weight.detach() * g).to(Device::cpu(), DType::f32)
                               : zeros(ps[i].weight.shape());
    total += out[i].total;
  }
  keep_top(out, int64_t(std::llround(density * double(total))));
  return out;
}

namespace {

// Parameters and MACs (per sample) of the traced model with group g cropped to kept[g].
struct Counter {
  const ChannelGraph& g;
  int64_t other_params = 0;  // parameters outside the graph's layers
  std::map<int, std::vector<std::pair<int, int64_t>>> reads;  // layer -> (group, spatial)

  Counter(const ChannelGraph& graph, int64_t all_params) : g(graph) {
    int64_t in_graph = 0;
    for (const auto& l : g.layers) in_graph += params_of(l, l.out_channels, l.in_channels);
    other_params = all_params - in_graph;
    for (const auto& grp : g.groups) {
      for (const Consumer& c : grp.consumers) reads[c.layer].push_back({grp.id, c.spatial});
    }
  }
  static int64_t params_of(const GraphLayer& l, int64_t out, int64_t in) {
    if (auto* c = l.conv()) {
      const auto& o = c->options();
      const int64_t groups = l.kind == LayerKind::depthwise ? out : o.groups;
      return out * o.kernel[0] * o.kernel[1] * (in / groups) + (c->bias().defined() ? out : 0);
    }
    if (auto* lin = l.linear()) return out * in + (lin->bias().defined() ? out : 0);
    if (auto* bn = l.bn()) return bn->options().affine ? 2 * out : 0;
    return 0;
  }
  static int64_t macs_of(const GraphLayer& l, int64_t out, int64_t in) {
    if (auto* c = l.conv()) {
      const auto& o = c->options();
      const int64_t groups = l.kind == LayerKind::depthwise ? out : o.groups;
      return l.output_shape[1] * l.output_shape[2] * out * o.kernel[0] * o.kernel[1] *
             (in / groups);
    }
    if (l.linear()) return out * in;
    return 0;
  }
  // {out, in} of layer i after the crop.
  std::pair<int64_t, int64_t> shape(size_t i, const std::map<int, int64_t>& kept) const {
    const GraphLayer& l = g.layers[i];
    int64_t out = l.out_channels, in = l.in_channels;
    if (l.group >= 0 && kept.count(l.group)) out = kept.at(l.group);
    if (l.kind == LayerKind::depthwise || l.kind == LayerKind::batchnorm) {
      in = out;
    } else if (auto it = reads.find(int(i)); it != reads.end()) {
      for (const auto& [gid, spatial] : it->second) {
        if (kept.count(gid)) in -= (g.groups[size_t(gid)].channels - kept.at(gid)) * spatial;
      }
    }
    return {out, in};
  }
  std::pair<int64_t, int64_t> count(const std::map<int, int64_t>& kept) const {
    int64_t params = other_params, macs = 0;
    for (size_t i = 0; i < g.layers.size(); ++i) {
      const auto [out, in] = shape(i, kept);
      params += params_of(g.layers[i], out, in);
      macs += macs_of(g.layers[i], out, in);
    }
    return {params, macs};
  }
};

std::map<int, int64_t> kept_for(const std::map<int, double>& rho, const ChannelGraph& g, double t) {
  std::map<int, int64_t> kept;
  for (const auto& [gid, r] : rho) {
    const int64_t k = g.groups[size_t(gid)].channels;
    kept[gid] = std::max<int64_t>(1, std::llround(std::min(1.0, t * r) * double(k)));
  }
  return kept;
}

}  // namespace

PrecropPlan plan_precrop(layers::Module& model, const PrecropOptions& options,
                         const Shape& sample_hwc,
                         const std::function<Tensor(layers::Module&)>& loss) {
  options.validate();
  PrecropPlan plan;
  PrecropReport& rep = plan.report;
  rep.options = options;
  const ChannelGraph g = trace_channel_graph(model, sample_hwc);
  Counter counter(g, model.num_parameters());
  std::tie(rep.params_before, rep.macs_before) = counter.count({});

  // 1. Layer densities (random cropping does not score).
  std::map<std::string, ScoredLayer> scored;
  if (options.method != "random") {
    const std::vector<ScoredLayer> s =
        options.score == "synflow"
            ? synflow_scores(model, sample_hwc, options.budget, options.iterations)
            : snip_scores(model, options.budget, loss, options.snip_batches);
    for (const auto& l : s) scored[l.name] = l;
  }
  auto density_of = [&](const std::string& name) {
    auto it = scored.find(name);
    return it == scored.end() ? 1.0 : it->second.density();
  };

  if (options.method == "pai") {
    int64_t pruned = 0;
    for (const auto& [name, l] : scored) {
      plan.masks[name] = l.mask;
      pruned += l.total - l.kept;
    }
    rep.params_after = rep.params_before - pruned;
    rep.macs_after = rep.macs_before;
  } else {
    // 2. Keep ratios of the groups that can change: the largest over the dense convs creating
    // the group (a residual group has several), sqrt of their density (precrop) or random.
    std::map<int, double> rho;
    std::mt19937_64 rng(options.seed);
    std::uniform_real_distribution<double> u(0.05, 1.0);
    for (const ChannelGroup& grp : g.groups) {
      if (!grp.removable || grp.roots.empty() || grp.has_input) continue;
      double r = 0.0;
      for (int root : grp.roots)
        r = std::max(r, std::sqrt(density_of(g.layers[size_t(root)].name)));
      rho[grp.id] = options.method == "random" ? u(rng) : r;
    }
    LOWBIT_CHECK_INPUT(!rho.empty(), "precrop: the model has no channel group that can be cropped");
    const bool by_params = options.budget_kind == "params";
    const double target = options.budget * double(by_params ? rep.params_before : rep.macs_before);
    auto cost = [&](double t) {
      const auto [p, m] = counter.count(kept_for(rho, g, t));
      return double(by_params ? p : m);
    };
    double rmin = 1.0;
    for (const auto& [gid, r] : rho) rmin = std::min(rmin, r);
    // One factor t for all ratios, by bisection on the monotone cost (every group is whole at
    // t = 1 / min rho); then the closer end.
    double lo = 0.0, hi = 1.0 / std::max(rmin, 1e-12);
    for (int it = 0; it < 60; ++it) {
      const double mid = 0.5 * (lo + hi);
      (cost(mid) <= target ? lo : hi) = mid;
    }
    rep.scale = std::fabs(cost(lo) - target) <= std::fabs(cost(hi) - target) ? lo : hi;
    plan.kept = kept_for(rho, g, rep.scale);
    std::tie(rep.params_after, rep.macs_after) = counter.count(plan.kept);
  }
  for (size_t i = 0; i < g.layers.size(); ++i) {
    const GraphLayer& l = g.layers[i];
    if (l.kind == LayerKind::batchnorm) continue;
    PrecropLayer pl;
    pl.name = l.name;
    pl.type = l.linear() ? "Linear" : "Conv2d";
    pl.density = density_of(l.name);
    pl.out_before = l.out_channels;
    pl.in_before = l.in_channels;
    std::tie(pl.out_after, pl.in_after) = counter.shape(i, plan.kept);
    rep.layers.push_back(pl);
  }
  return plan;
}

void reinitialize(layers::Module& model) {
  autograd::NoGradGuard ng;
  auto draw = [](Tensor& t, int64_t fan_in) {
    if (t.defined()) t.copy_(layers::uniform_fan_in(t.shape(), fan_in).to(t.device(), t.dtype()));
  };
  for (auto& [name, m] : model.named_modules()) {
    if (auto* c = dynamic_cast<layers::Conv2d*>(m.get())) {
      const auto& o = c->options();
      const int64_t fan_in = (o.in_channels / o.groups) * o.kernel[0] * o.kernel[1];
      draw(c->weight(), fan_in);
      draw(c->bias(), fan_in);
    } else if (auto* l = dynamic_cast<layers::Linear*>(m.get())) {
      draw(l->weight(), l->in_features());
      draw(l->bias(), l->in_features());
    } else if (auto* bn = dynamic_cast<layers::BatchNorm2d*>(m.get())) {
      if (bn->weight().defined()) bn->weight().fill_(1.0);
      if (bn->bias().defined()) bn->bias().zero_();
      if (bn->running_mean().defined()) bn->running_mean().zero_();
      if (bn->running_var().defined()) bn->running_var().fill_(1.0);
      if (bn->num_batches_tracked().defined()) bn->num_batches_tracked().zero_();
    }
  }
}

void apply_precrop(layers::Module& model, const PrecropPlan& plan, const Shape& sample_hwc) {
  if (!plan.masks.empty()) {
    autograd::NoGradGuard ng;
    for (auto& [name, m] : model.named_modules()) {
      auto it = plan.masks.find(name);
      if (it == plan.masks.end()) continue;
      if (auto* c = dynamic_cast<layers::Conv2d*>(m.get())) {
        c->set_weight_mask(it->second);
        c->weight().copy_(c->effective_weight());  // the stored weights agree with the mask
      } else if (auto* l = dynamic_cast<layers::Linear*>(m.get())) {
        l->set_weight_mask(it->second);
        l->weight().copy_(l->effective_weight());
      }
    }
    return;
  }
  const ChannelGraph g = trace_channel_graph(model, sample_hwc);
  std::map<int, std::vector<int64_t>> remove;
  for (const auto& [gid, k] : plan.kept) {
    LOWBIT_CHECK(gid >= 0 && gid < int(g.groups.size()), "apply_precrop: no group ", gid,
                 " (was the plan made for this model?)");
    for (int64_t c = k; c < g.groups[size_t(gid)].channels; ++c) remove[gid].push_back(c);
  }
  remove_group_channels(g, remove);
  reinitialize(model);
}

std::string PrecropReport::table() const {
  std::ostringstream os;
  char line[256];
  std::snprintf(line, sizeof(line), "precrop: method %s, score %s, budget %.4g of the %s\n",
                options.method.c_str(), options.score.c_str(), options.budget,
                options.budget_kind == "params" ? "parameters" : "MACs");
  os << line;
  std::snprintf(line, sizeof(line), "%-28s %-7s %8s %11s %11s\n", "layer", "type", "density", "out",
                "in");
  os << line;
  for (const auto& l : layers) {
    std::snprintf(line, sizeof(line), "%-28s %-7s %8.4f %5lld->%-5lld %5lld->%-5lld\n",
                  l.name.c_str(), l.type.c_str(), l.density, (long long)l.out_before,
                  (long long)l.out_after, (long long)l.in_before, (long long)l.in_after);
    os << line;
  }
  std::snprintf(
      line, sizeof(line),
      "total: %lld -> %lld parameters (%.2f%%%s), %lld -> %lld MACs per sample (%.2f%%)\n",
      (long long)params_before, (long long)params_after,
      100.0 * double(params_after) / double(std::max<int64_t>(params_before, 1)),
      options.method == "pai" ? ", nonzero" : "", (long long)macs_before, (long long)macs_after,
      100.0 * double(macs_after) / double(std::max<int64_t>(macs_before, 1)));
  os << line;
  return os.str();
}

nlohmann::json PrecropReport::to_json() const {
  nlohmann::json ls = nlohmann::json::array();
  for (const auto& l : layers) {
    ls.push_back({{"name", l.name},
                  {"type", l.type},
                  {"density", l.density},
                  {"out_before", l.out_before},
                  {"out_after", l.out_after},
                  {"in_before", l.in_before},
                  {"in_after", l.in_after}});
  }
  return {{"method", options.method},
          {"score", options.score},
          {"budget_kind", options.budget_kind},
          {"budget", options.budget},
          {"scale", scale},
          {"params_before", params_before},
          {"params_after", params_after},
          {"macs_before", macs_before},
          {"macs_after", macs_after},
          {"layers", ls}};
}

}  // namespace lowbit::prune
