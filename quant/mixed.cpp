#include "quant/mixed.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/autograd.h"
#include "core/ops.h"

namespace lowbit::quant {

using json = nlohmann::json;

namespace {

std::shared_ptr<layers::BatchNorm2d> copy_bn(const layers::BatchNorm2d& src) {
  layers::BatchNormOptions o = src.options();
  o.fuse_relu = false;  // the model's (bypassed) BN applies the ReLU after the mix
  auto bn = std::make_shared<layers::BatchNorm2d>(o);
  auto& s = const_cast<layers::BatchNorm2d&>(src);
  autograd::NoGradGuard g;
  bn->weight().copy_(s.weight());
  bn->bias().copy_(s.bias());
  bn->running_mean().copy_(s.running_mean());
  bn->running_var().copy_(s.running_var());
  bn->num_batches_tracked().copy_(s.num_batches_tracked());
  bn->to(s.weight().device());
  bn->train(s.is_training());
  return bn;
}

std::vector<QuantizerPtr> build_candidates(const SearchPlan& plan, const std::string& layer,
                                           int64_t channels) {
  std::vector<QuantizerPtr> out;
  for (size_t j = 0; j < plan.candidates.size(); ++j) {
    QuantizerOptions o = plan.candidates[j].options;
    o.set("role", "weight").set("channels", channels);
    try {
      out.push_back(create_quantizer(plan.candidates[j].name, o));
    } catch (const InputError& e) {
      throw InputError(str_cat("search.candidates.", j, " (layer ", layer, "): ", e.what()));
    }
  }
  return out;
}

json choice_json(const QuantizerChoice& c) {
  json o = json::object();
  for (const auto& [k, v] : c.options.values()) o[k] = v;
  return json{{"quantizer", c.name}, {"options", o}};
}

}  // namespace

// ------------------------------------------------------------------------------- MixedChoice

void MixedChoice::init(std::vector<QuantizerPtr> cands, Device dev) {
  LOWBIT_CHECK_INPUT(!cands.empty(), "a mixed-precision layer needs at least one candidate");
  cands_ = std::move(cands);
  holder_ = std::make_shared<layers::Sequential>();
  for (auto& q : cands_) {
    LOWBIT_CHECK(q && q->role() == QuantRole::weight,
                 "mixed-precision candidates must be weight quantizers");
    bits_.push_back(q->bits());
    holder_->add(q);
  }
  alpha_ = zeros({size()}, TensorOptions(DType::f32, dev).with_requires_grad(true));
}

Tensor MixedChoice::probabilities() const { return softmax(alpha_, 0); }

std::vector<double> MixedChoice::probabilities_host() const {
  autograd::NoGradGuard g;
  const Tensor p = probabilities().to(Device::cpu(), DType::f64).contiguous();
  return std::vector<double>(p.data<double>(), p.data<double>() + p.numel());
}

int64_t MixedChoice::choice() const {
  const Tensor a = alpha_.detach().to(Device::cpu(), DType::f64).contiguous();
  const double* p = a.data<double>();
  return int64_t(std::max_element(p, p + a.numel()) - p);
}

void MixedChoice::force(int64_t j) {
  LOWBIT_CHECK(j >= -1 && j < size(), "MixedChoice::force: candidate ", j, " of ", size());
  forced_ = j;
}

Tensor MixedChoice::mixed_weight(const Tensor& w) {
  if (forced_ >= 0) return cands_[size_t(forced_)]->forward(w);
  const Tensor p = probabilities();
  Tensor out;
  for (int64_t j = 0; j < size(); ++j) {
    Tensor term = cands_[size_t(j)]->forward(w) * p.narrow(0, j, 1).to(w.dtype());
    out = out.defined() ? out + term : term;
  }
  return out;
}

// ------------------------------------------------------------------------------- MixedConv2d

MixedConv2d::MixedConv2d(layers::Conv2d& src, std::vector<QuantizerPtr> cands,
                         const std::shared_ptr<layers::BatchNorm2d>& bn, bool shared_bn)
    : layers::Conv2d([&] {
        layers::Conv2dOptions o = src.options();
        o.bias = false;  // the source's tensors are taken over below
        return o;
      }()) {
  opts_ = src.options();
  weight_ = src.weight();
  if (src.bias().defined()) {
    bias_ = src.bias();
    register_parameter("bias", &bias_);
  }
  LOWBIT_CHECK(!src.weight_mask().defined() && !src.bias_map().defined(),
               "MixedConv2d: a conv with a weight mask or bias map (PfQ mask mode) cannot be "
               "searched; prune physically first");
  choice_.init(std::move(cands), weight_.device());
  register_module("candidates", choice_.holder());
  register_parameter("alpha", &choice_.alpha());
  if (bn && !shared_bn) {
    LOWBIT_CHECK_INPUT(bn->options().num_features == opts_.out_channels, "MixedConv2d: BN of ",
                       bn->options().num_features, " features after a conv of ", opts_.out_channels,
                       " channels");
    bns_ = std::make_shared<layers::Sequential>();
    for (int64_t j = 0; j < choice_.size(); ++j) bns_->add(copy_bn(*bn));
    register_module("bns", bns_);
    bn->set_bypass(true);
  }
  train(src.is_training());
}

layers::BatchNorm2d* MixedConv2d::candidate_bn(int64_t j) const {
  if (!bns_) return nullptr;
  return dynamic_cast<layers::BatchNorm2d*>((*bns_)[size_t(j)].get());
}

Tensor MixedConv2d::forward(const Tensor& x) {
  Tensor y;
  if (!bns_) {
    y = layers::conv2d(x, choice_.mixed_weight(weight_), bias_, opts_);
  } else if (choice_.forced() >= 0) {
    const int64_t j = choice_.forced();
    y = candidate_bn(j)->forward(
        layers::conv2d(x, choice_.candidates()[size_t(j)]->forward(weight_), bias_, opts_));
  } else {
    // One pass over the input per candidate, each through its own BN, mixed by p.
    const Tensor p = choice_.probabilities();
    for (int64_t j = 0; j < choice_.size(); ++j) {
      Tensor yj = candidate_bn(j)->forward(
          layers::conv2d(x, choice_.candidates()[size_t(j)]->forward(weight_), bias_, opts_));
      yj = yj * p.narrow(0, j, 1).to(yj.dtype());
      y = y.defined() ? y + yj : yj;
    }
  }
  layers::notify_forward(*this, x, y);
  return y;
}

std::string MixedConv2d::extra_repr() const {
  return layers::Conv2d::extra_repr() +
         str_cat(", candidates=", choice_.size(), bns_ ? ", bn_per_candidate=True" : "");
}

// ------------------------------------------------------------------------------- MixedLinear

MixedLinear::MixedLinear(layers::Linear& src, std::vector<QuantizerPtr> cands)
    : layers::Linear(src.in_features(), src.out_features(), false) {
  weight_ = src.weight();
  if (src.bias().defined()) {
    bias_ = src.bias();
    register_parameter("bias", &bias_);
  }
  choice_.init(std::move(cands), weight_.device());
  register_module("candidates", choice_.holder());
  register_parameter("alpha", &choice_.alpha());
  train(src.is_training());
}

Tensor MixedLinear::forward(const Tensor& x) {
  Tensor y = layers::linear(x, choice_.mixed_weight(weight_), bias_);
  layers::notify_forward(*this, x, y);
  return y;
}

std::string MixedLinear::extra_repr() const {
  return layers::Linear::extra_repr() + str_cat(", candidates=", choice_.size());
}

// ------------------------------------------------------------------------------- plans

std::string SearchPlan::str() const {
  json cands = json::array();
  for (const auto& c : candidates) cands.push_back(choice_json(c));
  json ls = json::array();
  for (const auto& l : layers) {
    ls.push_back(json{{"name", l.name}, {"type", l.type}, {"bn", l.bn}, {"weights", l.weights}});
  }
  return json{{"format", "lowbit-search-plan-1"},
              {"candidates", cands},
              {"shared_bn", shared_bn},
              {"layers", ls}}
      .dump();
}

SearchPlan SearchPlan::parse(const std::string& text) {
  SearchPlan p;
  try {
    const json j = json::parse(text);
    LOWBIT_CHECK_INPUT(j.value("format", "") == "lowbit-search-plan-1",
                       "not a lowbit search plan (format lowbit-search-plan-1)");
    for (const auto& c : j.at("candidates")) {
      QuantizerChoice q;
      q.name = c.at("quantizer").get<std::string>();
      for (auto& [k, v] : c.at("options").items()) q.options.set(k, v.get<std::string>());
      p.candidates.push_back(q);
    }
    p.shared_bn = j.at("shared_bn").get<bool>();
    for (const auto& l : j.at("layers")) {
      p.layers.push_back(
          MixedLayerPlan{l.at("name").get<std::string>(), l.at("type").get<std::string>(),
                         l.at("bn").get<std::string>(), l.at("weights").get<int64_t>()});
    }
  } catch (const nlohmann::json::exception& e) {
    throw InputError(str_cat("search plan: ", e.what()));
  }
  return p;
}

SearchPlan plan_search(layers::Module& model, const SearchSpec& spec, const Tensor& probe) {
  LOWBIT_CHECK_INPUT(!spec.candidates.empty(), "search.candidates: the list is empty");
  // The layers and their BNs as quantization would see them (every layer quantized, BN pairs
  // found by folding), inputs left float.
  QuantConfig qc;
  qc.weight = {"uniform", QuantizerOptions{{"bits", "8"}}};  // the structure only; candidates below
  qc.first_last_bits = 0;
  qc.fold_bn = true;
  QuantRule all;
  all.match = "*";
  all.quantize_input = false;
  qc.rules.push_back(all);
  for (const auto& g : spec.skip) {
    QuantRule r;
    r.match = g;
    r.skip = true;
    r.quantize_input = false;
    qc.rules.push_back(r);
  }
  SearchPlan plan;
  plan.candidates = spec.candidates;
  plan.shared_bn = spec.shared_bn;
  const QuantPlan qp = plan_quantization(model, qc, probe);
  std::map<std::string, layers::ModulePtr> mods;
  for (auto& [name, m] : model.named_modules()) mods[name] = m;
  for (const LayerPlan& l : qp.layers) {
    const layers::ModulePtr& m = mods.at(l.name);
    int64_t n = 0;
    if (auto* c = dynamic_cast<layers::Conv2d*>(m.get())) n = c->weight().numel();
    if (auto* c = dynamic_cast<layers::Linear*>(m.get())) n = c->weight().numel();
    plan.layers.push_back(MixedLayerPlan{l.name, l.type, l.fold_bn, n});
  }
  LOWBIT_CHECK_INPUT(!plan.layers.empty(),
                     "search: the model has no Conv2d or Linear layer left to search (check "
                     "search.skip)");
  // Every candidate must be a weight quantizer that builds for a real layer.
  const MixedLayerPlan& first = plan.layers.front();
  int64_t channels = 1;
  if (auto* c = dynamic_cast<layers::Conv2d*>(mods.at(first.name).get()))
    channels = c->options().out_channels;
  if (auto* c = dynamic_cast<layers::Linear*>(mods.at(first.name).get()))
    channels = c->out_features();
  build_candidates(plan, first.name, channels);
  return plan;
}

void apply_search_plan(layers::Module& model, const SearchPlan& plan) {
  std::map<std::string, layers::ModulePtr> mods;
  for (auto& [name, m] : model.named_modules()) mods[name] = m;
  const Device dev = model.device();
  for (const MixedLayerPlan& l : plan.layers) {
    auto it = mods.find(l.name);
    LOWBIT_CHECK_INPUT(it != mods.end(), "search plan: the model has no layer '", l.name, "'");
    layers::ModulePtr q;
    if (l.type == "Conv2d") {
      auto* conv = dynamic_cast<layers::Conv2d*>(it->second.get());
      LOWBIT_CHECK_INPUT(conv && conv->type_name() == "Conv2d", "search plan: '", l.name,
                         "' is not a float Conv2d but ", it->second->type_name());
      std::shared_ptr<layers::BatchNorm2d> bn;
      if (!l.bn.empty()) {
        auto bit = mods.find(l.bn);
        bn = bit == mods.end() ? nullptr
                               : std::dynamic_pointer_cast<layers::BatchNorm2d>(bit->second);
        LOWBIT_CHECK_INPUT(bn != nullptr, "search plan: '", l.bn, "' (after ", l.name,
                           ") is not a BatchNorm2d of the model");
      }
      auto cands = build_candidates(plan, l.name, conv->options().out_channels);
      q = std::make_shared<MixedConv2d>(*conv, cands, bn, plan.shared_bn);
    } else {
      auto* lin = dynamic_cast<layers::Linear*>(it->second.get());
      LOWBIT_CHECK_INPUT(l.type == "Linear" && lin && lin->type_name() == "Linear",
                         "search plan: '", l.name, "' is not a float Linear but ",
                         it->second->type_name());
      q = std::make_shared<MixedLinear>(*lin, build_candidates(plan, l.name, lin->out_features()));
    }
    q->to(dev);
    layers::replace_module(model, l.name, q);
  }
}

// ------------------------------------------------------------------------------- queries

std::vector<std::pair<std::string, MixedChoice*>> mixed_layers(layers::Module& model) {
  std::vector<std::pair<std::string, MixedChoice*>> out;
  for (auto& [name, m] : model.named_modules()) {
    if (auto* c = dynamic_cast<MixedConv2d*>(m.get())) out.emplace_back(name, &c->choice());
    if (auto* l = dynamic_cast<MixedLinear*>(m.get())) out.emplace_back(name, &l->choice());
  }
  return out;
}

std::vector<Tensor> search_parameters(layers::Module& model) {
  std::vector<Tensor> out;
  for (auto& [name, c] : mixed_layers(model)) out.push_back(c->alpha());
  return out;
}

void force_candidate(layers::Module& model, int64_t j) {
  for (auto& [name, c] : mixed_layers(model)) c->force(j);
}

Tensor expected_size(layers::Module& model, const SearchPlan& plan) {
  std::map<std::string, MixedChoice*> by_name;
  for (auto& [name, c] : mixed_layers(model)) by_name[name] = c;
  int64_t total = 0;
  for (const auto& l : plan.layers) total += l.weights;
  LOWBIT_CHECK(total > 0, "expected_size: no searched weights");
  Tensor g;
  for (const auto& l : plan.layers) {
    auto it = by_name.find(l.name);
    LOWBIT_CHECK(it != by_name.end(), "expected_size: '", l.name, "' is not a mixed layer");
    MixedChoice& c = *it->second;
    std::vector<float> b(c.bits().begin(), c.bits().end());
    const Tensor bits = from_vector(b, {c.size()}).to(c.alpha().device());
    Tensor term = sum(c.probabilities() * bits) * (double(l.weights) / (32.0 * double(total)));
    g = g.defined() ? g + term : term;
  }
  return g;
}

std::vector<LayerChoice> search_choices(layers::Module& model, const SearchPlan& plan) {
  std::map<std::string, MixedChoice*> by_name;
  for (auto& [name, c] : mixed_layers(model)) by_name[name] = c;
  std::vector<LayerChoice> out;
  for (const auto& l : plan.layers) {
    auto it = by_name.find(l.name);
    LOWBIT_CHECK(it != by_name.end(), "search_choices: '", l.name, "' is not a mixed layer");
    LayerChoice c;
    c.name = l.name;
    c.type = l.type;
    c.weights = l.weights;
    c.probabilities = it->second->probabilities_host();
    c.choice = it->second->choice();
    c.bits = it->second->bits()[size_t(c.choice)];
    c.quantizer = plan.candidates[size_t(c.choice)];
    out.push_back(c);
  }
  return out;
}

std::vector<LayerChoice> finish_search(layers::Module& model, const SearchPlan& plan) {
  std::vector<LayerChoice> choices = search_choices(model, plan);
  std::map<std::string, layers::ModulePtr> mods;
  for (auto& [name, m] : model.named_modules()) mods[name] = m;
  autograd::NoGradGuard g;
  for (size_t i = 0; i < plan.layers.size(); ++i) {
    const MixedLayerPlan& l = plan.layers[i];
    layers::ModulePtr m = mods.at(l.name);
    layers::ModulePtr plain;
    if (auto* mc = dynamic_cast<MixedConv2d*>(m.get())) {
      layers::Conv2dOptions o = mc->options();
      const bool had_bias = o.bias;
      o.bias = false;
      auto conv = std::make_shared<layers::Conv2d>(o);
      conv->weight() = mc->weight();
      if (had_bias) {
        conv->ensure_bias();
        conv->bias() = mc->bias();
      }
      if (!l.bn.empty()) {
        auto bn = std::dynamic_pointer_cast<layers::BatchNorm2d>(mods.at(l.bn));
        if (layers::BatchNorm2d* chosen = mc->candidate_bn(choices[i].choice)) {
          bn->weight().copy_(chosen->weight());
          bn->bias().copy_(chosen->bias());
          bn->running_mean().copy_(chosen->running_mean());
          bn->running_var().copy_(chosen->running_var());
          bn->num_batches_tracked().copy_(chosen->num_batches_tracked());
        }
        bn->set_bypass(false);
      }
      plain = conv;
    } else if (auto* ml = dynamic_cast<MixedLinear*>(m.get())) {
      const bool had_bias = ml->bias().defined();
      auto lin = std::make_shared<layers::Linear>(ml->in_features(), ml->out_features(), false);
      lin->weight() = ml->weight();
      if (had_bias) {
        lin->ensure_bias();
        lin->bias() = ml->bias();
      }
      plain = lin;
    } else {
      LOWBIT_CHECK(false, "finish_search: '", l.name, "' is not a mixed layer");
    }
    plain->train(m->is_training());
    layers::replace_module(model, l.name, plain);
  }
  return choices;
}

std::vector<QuantRule> choice_rules(const std::vector<LayerChoice>& choices) {
  std::vector<QuantRule> out;
  for (const auto& c : choices) {
    QuantRule r;
    r.match = c.name;
    r.type = c.type;
    r.replace = true;
    r.weight_quantizer = c.quantizer.name;
    r.weight = c.quantizer.options;
    out.push_back(r);
  }
  return out;
}

std::string choice_rules_yaml(const std::vector<LayerChoice>& choices, const std::string& origin) {
  std::ostringstream o;
  o << "# The bit widths chosen by the mixed-precision search of " << origin << ".\n"
    << "# Include it in a config (include: [this file]) to train with the same scheme.\n"
    << "quant:\n  rules:\n";
  for (const QuantRule& r : choice_rules(choices)) {
    o << "    - {match: \"" << r.match << "\", type: " << r.type
      << ", replace: true, weight: {quantizer: " << r.weight_quantizer;
    for (const auto& [k, v] : r.weight.values()) o << ", " << k << ": " << v;
    o << "}}\n";
  }
  return o.str();
}

std::string rules_str(const std::vector<QuantRule>& rules) {
  json arr = json::array();
  for (const QuantRule& r : rules) {
    json w = json::object(), a = json::object();
    for (const auto& [k, v] : r.weight.values()) w[k] = v;
    for (const auto& [k, v] : r.activation.values()) a[k] = v;
    arr.push_back(json{{"match", r.match},
                       {"type", r.type},
                       {"skip", r.skip},
                       {"replace", r.replace},
                       {"quantize_input", r.quantize_input},
                       {"weight_quantizer", r.weight_quantizer},
                       {"weight", w},
                       {"activation_quantizer", r.activation_quantizer},
                       {"activation", a}});
  }
  return arr.dump();
}

std::vector<QuantRule> parse_rules(const std::string& text) {
  std::vector<QuantRule> out;
  try {
    for (const auto& e : json::parse(text)) {
      QuantRule r;
      r.match = e.at("match").get<std::string>();
      r.type = e.at("type").get<std::string>();
      r.skip = e.at("skip").get<bool>();
      r.replace = e.at("replace").get<bool>();
      r.quantize_input = e.at("quantize_input").get<bool>();
      r.weight_quantizer = e.at("weight_quantizer").get<std::string>();
      for (auto& [k, v] : e.at("weight").items()) r.weight.set(k, v.get<std::string>());
      r.activation_quantizer = e.at("activation_quantizer").get<std::string>();
      for (auto& [k, v] : e.at("activation").items()) r.activation.set(k, v.get<std::string>());
      out.push_back(r);
    }
  } catch (const nlohmann::json::exception& e) {
    throw InputError(str_cat("search rules: ", e.what()));
  }
  return out;
}

std::string choice_table(const std::vector<LayerChoice>& choices) {
  std::ostringstream o;
  size_t w = 5;
  for (const auto& c : choices) w = std::max(w, c.name.size());
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-*s %10s  %-24s %s\n", int(w), "layer", "weights",
                "probabilities", "bits");
  o << buf;
  int64_t total = 0, bits = 0;
  for (const auto& c : choices) {
    std::string p;
    for (size_t j = 0; j < c.probabilities.size(); ++j) {
      char q[32];
      std::snprintf(q, sizeof q, "%s%.3f", j ? " " : "", c.probabilities[j]);
      p += q;
    }
    std::snprintf(buf, sizeof buf, "%-*s %10lld  %-24s %lld\n", int(w), c.name.c_str(),
                  static_cast<long long>(c.weights), p.c_str(), static_cast<long long>(c.bits));
    o << buf;
    total += c.weights;
    bits += c.weights * c.bits;
  }
  std::snprintf(buf, sizeof buf,
                "%-*s %10lld  weight bits %.2f per weight, %.1fx smaller than fp32\n", int(w),
                "total", static_cast<long long>(total), total ? double(bits) / double(total) : 0.0,
                bits ? 32.0 * double(total) / double(bits) : 0.0);
  o << buf;
  return o.str();
}

}  // namespace lowbit::quant
