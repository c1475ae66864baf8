#include "quant/convert.h"

#include <fnmatch.h>

#include <map>
#include <nlohmann/json.hpp>

#include "core/autograd.h"
#include "core/ops.h"
#include "layers/basic.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "quant/qlayers.h"

namespace lowbit::quant {

using json = nlohmann::json;

namespace {

// One recorded layer call of the probe pass.
struct Call {
  layers::Module* module;
  const void* in;
  const void* out;
  bool input_negative;
  Tensor keep;  // holds the output alive, so no later tensor reuses its address
};

class ProbeRecorder : public layers::ForwardRecorder {
 public:
  void on_forward(layers::Module& m, const Tensor& input, const Tensor& output) override {
    const bool layer = dynamic_cast<layers::Conv2d*>(&m) || dynamic_cast<layers::Linear*>(&m);
    const bool bn = dynamic_cast<layers::BatchNorm2d*>(&m) != nullptr;
    if (!layer && !bn) return;
    const bool neg = layer && amin(input).item() < 0.0;
    calls.push_back({&m, input.raw_data(), output.raw_data(), neg, output});
  }
  std::vector<Call> calls;
};

QuantizerOptions merged(const QuantizerOptions& base, const QuantizerOptions& over) {
  QuantizerOptions out = base;
  for (const auto& [k, v] : over.values()) out.set(k, v);
  return out;
}

json options_json(const QuantizerChoice& c) {
  json o = json::object();
  for (const auto& [k, v] : c.options.values()) o[k] = v;
  return json{{"quantizer", c.name}, {"options", o}};
}

QuantizerChoice choice_from_json(const json& j) {
  QuantizerChoice c;
  c.name = j.at("quantizer").get<std::string>();
  for (auto& [k, v] : j.at("options").items()) c.options.set(k, v.get<std::string>());
  return c;
}

QuantizerPtr build(const QuantizerChoice& c, const std::string& layer, const char* what) {
  try {
    return create_quantizer(c.name, c.options);
  } catch (const InputError& e) {
    throw InputError(str_cat("quantizing ", layer, " (", what, "): ", e.what()));
  }
}

// first_last_bits sets `bits` only. When the first or last layer's quantizer refuses those bits
// but takes its own (binary: 1 bit only, ternary: 2), the error names the config key, not the
// layer: the config, not the model, asks for what the quantizer cannot do.
void check_first_last_bits(const QuantizerChoice& c, int64_t bits, const char* key) {
  auto it = c.options.values().find("bits");
  if (it == c.options.values().end() || it->second != std::to_string(bits)) return;  // a rule's
  try {
    create_quantizer(c.name, c.options);
  } catch (const InputError& e) {
    QuantizerOptions own;
    for (const auto& [k, v] : c.options.values()) {
      if (k != "bits") own.set(k, v);
    }
    try {
      create_quantizer(c.name, own);
    } catch (const InputError&) {
      return;  // refused for another reason: build() reports it, naming the layer
    }
    throw InputError(str_cat(
        "quant.first_last_bits = ", bits, ": the first and last layers' ", key, " quantizer '",
        c.name, "' cannot take ", bits, " bits (", e.what(),
        "); set quant.first_last_bits: 0, or give those layers another quantizer with a rule "
        "(quant.rules)"));
  }
}

}  // namespace

json QuantPlan::to_json() const {
  json arr = json::array();
  for (const auto& l : layers) {
    json e{{"name", l.name},
           {"type", l.type},
           {"weight", options_json(l.weight)},
           {"fold_bn", l.fold_bn}};
    if (l.sat_rescale) e["sat_rescale"] = true;  // absent in plans written before SAT
    e["input"] = l.input.name.empty() ? json(nullptr) : options_json(l.input);
    arr.push_back(e);
  }
  return json{{"format", "lowbit-quant-plan-1"}, {"layers", arr}};
}

QuantPlan QuantPlan::from_json(const json& j) {
  LOWBIT_CHECK_INPUT(j.is_object() && j.value("format", "") == "lowbit-quant-plan-1",
                     "not a lowbit quantization plan (format lowbit-quant-plan-1)");
  QuantPlan p;
  for (const auto& e : j.at("layers")) {
    LayerPlan l;
    l.name = e.at("name").get<std::string>();
    l.type = e.at("type").get<std::string>();
    l.weight = choice_from_json(e.at("weight"));
    if (!e.at("input").is_null()) l.input = choice_from_json(e.at("input"));
    l.fold_bn = e.value("fold_bn", "");
    l.sat_rescale = e.value("sat_rescale", false);
    p.layers.push_back(l);
  }
  return p;
}

std::string QuantPlan::str() const { return to_json().dump(); }

QuantPlan QuantPlan::parse(const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const std::exception& e) {
    throw InputError(str_cat("quantization plan: not valid JSON: ", e.what()));
  }
  return from_json(j);
}

bool is_quantized(layers::Module& model) {
  for (auto& [name, m] : model.named_modules()) {
    if (dynamic_cast<QConv2d*>(m.get()) || dynamic_cast<QLinear*>(m.get())) return true;
  }
  return false;
}

QuantPlan plan_quantization(layers::Module& model, const QuantConfig& cfg, const Tensor& probe) {
  LOWBIT_CHECK_INPUT(!is_quantized(model), "quantize_model: the model is already quantized");
  std::map<const layers::Module*, std::string> names;
  for (auto& [name, m] : model.named_modules()) names[m.get()] = name;

  ProbeRecorder rec;
  const bool was_training = model.is_training();
  {
    autograd::NoGradGuard ng;
    model.eval();
    layers::RecordForward guard(&rec);
    model.forward(probe);
  }
  model.train(was_training);

  // Layers in call order (first call of each), and conv -> BN pairs by tensor identity.
  std::vector<const Call*> order;
  std::map<const layers::Module*, const Call*> first_call;
  std::map<const layers::Module*, std::string> bn_of;
  for (const Call& c : rec.calls) {
    if (auto* bn = dynamic_cast<layers::BatchNorm2d*>(c.module)) {
      // Its producer: the latest layer call whose output is this BN's input.
      for (auto it = order.rbegin(); it != order.rend(); ++it) {
        if ((*it)->out != c.in) continue;
        auto* conv = dynamic_cast<layers::Conv2d*>((*it)->module);
        if (conv && conv->options().out_channels == bn->options().num_features &&
            bn->options().affine && bn->options().track_running_stats && !bn_of.count(conv)) {
          bn_of[conv] = names.at(c.module);
        }
        break;
      }
      continue;
    }
    if (first_call.count(c.module)) {
      // Called twice: any negative input makes it signed.
      const_cast<Call*>(first_call[c.module])->input_negative |= c.input_negative;
      continue;
    }
    first_call[c.module] = &c;
    order.push_back(&c);
  }

  QuantPlan plan;
  for (size_t i = 0; i < order.size(); ++i) {
    const Call& c = *order[i];
    const std::string& name = names.at(c.module);
    auto* conv = dynamic_cast<layers::Conv2d*>(c.module);
    auto* lin = dynamic_cast<layers::Linear*>(c.module);
    const std::string type = conv ? "Conv2d" : "Linear";
    LayerPlan l;
    l.name = name;
    l.type = type;
    l.weight = cfg.weight;
    QuantizerChoice input = cfg.activation;
    bool quantize_input = true, skip = false;
    const bool first_last = cfg.first_last_bits > 0 && (i == 0 || i + 1 == order.size());
    if (first_last) {
      l.weight.options.set("bits", cfg.first_last_bits);
      input.options.set("bits", cfg.first_last_bits);
    }
    for (const QuantRule& r : cfg.rules) {
      if (!r.type.empty() && r.type != type) continue;
      if (!r.match.empty() && fnmatch(r.match.c_str(), name.c_str(), 0) != 0) continue;
      skip = r.skip;
      if (r.replace) {
        if (!r.weight_quantizer.empty()) l.weight = QuantizerChoice{r.weight_quantizer, r.weight};
        if (!r.activation_quantizer.empty())
          input = QuantizerChoice{r.activation_quantizer, r.activation};
      } else {
        if (!r.weight_quantizer.empty()) l.weight.name = r.weight_quantizer;
        if (!r.activation_quantizer.empty()) input.name = r.activation_quantizer;
        l.weight.options = merged(l.weight.options, r.weight);
        input.options = merged(input.options, r.activation);
      }
      quantize_input = r.quantize_input;
    }
    if (skip) {
      LOWBIT_CHECK_INPUT(!(cfg.sat && lin && i + 1 == order.size()),
                         "sat.enabled: SAT rescales the "
                         "quantized weights of the classifier '",
                         name, "', which a rule skips");
      continue;
    }
    const int64_t out = conv ? conv->options().out_channels : lin->out_features();
    l.weight.options.set("role", "weight").set("channels", out);
    input.options.set("role", "activation");
    if (!input.options.has("signed") &&
        quantizer_reads_option(input.name, input.options, "signed")) {
      input.options.set("signed", c.input_negative);
    }
    if (quantize_input) l.input = input;
    if (cfg.fold_bn && conv && bn_of.count(c.module)) l.fold_bn = bn_of[c.module];
    if (cfg.sat) {
      const bool last = i + 1 == order.size();
      if (last) {
        LOWBIT_CHECK_INPUT(lin != nullptr,
                           "sat.enabled: SAT rescales the last linear layer (the "
                           "classifier), but the model's last layer '",
                           name, "' is a Conv2d; set quant.sat.enabled: false for this model");
      }
      l.sat_rescale = last || (conv && cfg.sat_rescale_conv);
    }
    // Validate now, naming the key or the layer, rather than at apply time.
    if (first_last) {
      check_first_last_bits(l.weight, cfg.first_last_bits, "quant.weight");
      if (!l.input.name.empty()) {
        check_first_last_bits(l.input, cfg.first_last_bits, "quant.activation");
      }
    }
    build(l.weight, name, "weights");
    if (!l.input.name.empty()) build(l.input, name, "input");
    plan.layers.push_back(l);
  }
  return plan;
}

void apply_quant_plan(layers::Module& model, const QuantPlan& plan) {
  std::map<std::string, layers::ModulePtr> mods;
  for (auto& [name, m] : model.named_modules()) mods[name] = m;
  const Device dev = model.device();
  for (const LayerPlan& l : plan.layers) {
    auto it = mods.find(l.name);
    LOWBIT_CHECK_INPUT(it != mods.end(), "quantization plan: the model has no layer '", l.name,
                       "'");
    QuantizerPtr wq = build(l.weight, l.name, "weights");
    QuantizerPtr iq = l.input.name.empty() ? nullptr : build(l.input, l.name, "input");
    layers::ModulePtr q;
    if (l.type == "Conv2d") {
      auto* conv = dynamic_cast<layers::Conv2d*>(it->second.get());
      LOWBIT_CHECK_INPUT(conv && !dynamic_cast<QConv2d*>(conv), "quantization plan: '", l.name,
                         "' is not a float Conv2d but ", it->second->type_name());
      auto qc = std::make_shared<QConv2d>(*conv, wq, iq);
      if (!l.fold_bn.empty()) {
        auto bit = mods.find(l.fold_bn);
        auto bn = bit == mods.end() ? nullptr
                                    : std::dynamic_pointer_cast<layers::BatchNorm2d>(bit->second);
        LOWBIT_CHECK_INPUT(bn != nullptr, "quantization plan: '", l.fold_bn, "' (folded into ",
                           l.name, ") is not a BatchNorm2d of the model");
        qc->fold_bn(bn);
      }
      qc->set_sat_rescale(l.sat_rescale);
      q = qc;
    } else {
      auto* lin = dynamic_cast<layers::Linear*>(it->second.get());
      LOWBIT_CHECK_INPUT(l.type == "Linear" && lin && !dynamic_cast<QLinear*>(lin),
                         "quantization plan: '", l.name, "' is not a float Linear but ",
                         it->second->type_name());
      auto ql = std::make_shared<QLinear>(*lin, wq, iq);
      ql->set_sat_rescale(l.sat_rescale);
      q = ql;
    }
    q->to(dev);
    layers::replace_module(model, l.name, q);
  }
}

QuantPlan quantize_model(layers::Module& model, const QuantConfig& cfg, const Tensor& probe) {
  QuantPlan plan = plan_quantization(model, cfg, probe);
  apply_quant_plan(model, plan);
  return plan;
}

void calibrate_model(layers::Module& model, const std::function<bool(Tensor&)>& next_batch,
                     int64_t batches, bool weights, bool activations) {
  auto qs = find_quantizers(model);
  std::vector<std::pair<QuantizerPtr, bool>> saved;
  for (auto& [name, q] : qs) {
    saved.emplace_back(q, q->enabled());
    const bool pick = q->role() == QuantRole::weight ? weights : activations;
    if (pick) {
      q->set_enabled(true);
      q->set_calibrating(true);
    } else if (q->role() == QuantRole::activation) {
      q->set_enabled(false);
    }
  }
  const bool was_training = model.is_training();
  {
    autograd::NoGradGuard ng;
    model.eval();
    Tensor x;
    for (int64_t b = 0; b < batches && next_batch(x); ++b) model.forward(x);
  }
  model.train(was_training);
  for (auto& [q, enabled] : saved) {
    if (q->calibrating()) q->set_calibrating(false);
    q->set_enabled(enabled);
  }
}

void set_activation_quantization(layers::Module& model, bool on) {
  for (auto& [name, q] : find_quantizers(model)) {
    if (q->role() == QuantRole::activation) q->set_enabled(on);
  }
}

void freeze_bn_statistics(layers::Module& model, bool on) {
  for (auto& [name, m] : model.named_modules()) {
    if (auto* bn = dynamic_cast<layers::BatchNorm2d*>(m.get())) bn->set_frozen_stats(on);
  }
}

}  // namespace lowbit::quant
