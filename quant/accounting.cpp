#include "quant/accounting.h"

#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/autograd.h"
#include "layers/basic.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "quant/qlayers.h"

namespace lowbit::quant {

namespace {

struct Seen {
  layers::Module* module;
  Shape out_shape;
};

class AccountRecorder : public layers::ForwardRecorder {
 public:
  void on_forward(layers::Module& m, const Tensor&, const Tensor& output) override {
    if (!seen.insert(&m).second) return;
    calls.push_back({&m, output.shape()});
  }
  std::set<const layers::Module*> seen;
  std::vector<Seen> calls;
};

int64_t bits_of(const Quantizer* q) { return q && q->enabled() ? q->bits() : 32; }
int64_t scalars_of(const Quantizer* q) {
  return q && q->enabled() ? 4 * q->inference_scalars() : 0;
}
int64_t packed_bytes(int64_t n, int64_t bits) { return (n * bits + 7) / 8; }

std::string human(double v) {
  char buf[32];
  if (v >= 1e9)
    std::snprintf(buf, sizeof(buf), "%.2fG", v / 1e9);
  else if (v >= 1e6)
    std::snprintf(buf, sizeof(buf), "%.2fM", v / 1e6);
  else if (v >= 1e3)
    std::snprintf(buf, sizeof(buf), "%.1fk", v / 1e3);
  else
    std::snprintf(buf, sizeof(buf), "%.0f", v);
  return buf;
}

}  // namespace

ModelAccount account_model(layers::Module& model, const Shape& sample_hwc) {
  LOWBIT_CHECK_INPUT(sample_hwc.size() == 3,
                     "account_model: the sample shape must be {H, W, C}, got ",
                     shape_str(sample_hwc));
  std::map<const layers::Module*, std::string> names;
  std::set<const layers::Module*> folded;
  for (auto& [name, m] : model.named_modules()) {
    names[m.get()] = name;
    if (auto* qc = dynamic_cast<QConv2d*>(m.get())) {
      if (qc->folded_bn()) folded.insert(qc->folded_bn());
    }
  }
  // Quantizers are bypassed for the shape pass: nothing is observed or initialised.
  auto qs = find_quantizers(model);
  std::vector<bool> enabled;
  for (auto& [n, q] : qs) enabled.push_back(q->enabled());
  AccountRecorder rec;
  const bool was_training = model.is_training();
  {
    for (auto& [n, q] : qs) q->set_enabled(false);
    autograd::NoGradGuard ng;
    model.eval();
    layers::RecordForward guard(&rec);
    Tensor x = zeros({1, sample_hwc[0], sample_hwc[1], sample_hwc[2]},
                     TensorOptions(DType::f32, model.device()));
    model.forward(x);
  }
  model.train(was_training);
  for (size_t i = 0; i < qs.size(); ++i) qs[i].second->set_enabled(enabled[i]);

  ModelAccount acc;
  int64_t weight_elems = 0;
  double weight_bits_sum = 0.0;
  for (const Seen& s : rec.calls) {
    LayerAccount l;
    l.name = names.count(s.module) ? names.at(s.module) : "?";
    l.type = s.module->type_name();
    if (auto* conv = dynamic_cast<layers::Conv2d*>(s.module)) {
      const auto* qc = dynamic_cast<QConv2d*>(conv);
      const Tensor& w = conv->weight();
      const int64_t k = w.size(0);
      l.weight_elems = w.numel();
      l.params = w.numel() + (conv->bias().defined() ? k : 0);
      l.weight_bits = bits_of(qc ? qc->weight_quantizer() : nullptr);
      l.act_bits = bits_of(qc ? qc->input_quantizer() : nullptr);
      const int64_t p = s.out_shape[1], q = s.out_shape[2];
      l.macs = p * q * w.numel();  // P*Q*K*R*S*C/groups
      const bool bias = conv->bias().defined() || (qc && qc->folded_bn());
      l.bytes = packed_bytes(l.weight_elems, l.weight_bits) + (bias ? 4 * k : 0) +
                (qc ? scalars_of(qc->weight_quantizer()) + scalars_of(qc->input_quantizer()) : 0) +
                (qc && qc->sat_rescale() ? 4 : 0);  // SAT's constant (docs/methods.md, "SAT")
      l.shape = str_cat(shape_str(w.shape()), " -> ", p, "x", q);
      acc.float_bytes += 4 * l.params;
    } else if (auto* lin = dynamic_cast<layers::Linear*>(s.module)) {
      const auto* ql = dynamic_cast<QLinear*>(lin);
      const Tensor& w = lin->weight();
      l.weight_elems = w.numel();
      l.params = w.numel() + (lin->bias().defined() ? w.size(0) : 0);
      l.weight_bits = bits_of(ql ? ql->weight_quantizer() : nullptr);
      l.act_bits = bits_of(ql ? ql->input_quantizer() : nullptr);
      l.macs = w.numel();
      l.bytes = packed_bytes(l.weight_elems, l.weight_bits) +
                (lin->bias().defined() ? 4 * w.size(0) : 0) +
                (ql ? scalars_of(ql->weight_quantizer()) + scalars_of(ql->input_quantizer()) : 0) +
                (ql && ql->sat_rescale() ? 4 : 0);
      l.shape = shape_str(w.shape());
      acc.float_bytes += 4 * l.params;
    } else if (auto* bn = dynamic_cast<layers::BatchNorm2d*>(s.module)) {
      const int64_t c = bn->options().num_features;
      l.params = bn->options().affine ? 2 * c : 0;
      l.weight_bits = 0;
      l.act_bits = 0;
      l.bn_folded = folded.count(bn) > 0;
      l.bytes =
          l.bn_folded ? 0 : 16 * c;  // gamma, beta, mean, var in fp32; folded: the conv's bias
      l.shape = std::to_string(c);
      acc.float_bytes += 16 * c;
    } else {
      continue;
    }
    l.bops = double(l.macs) * double(l.weight_bits) * double(l.act_bits);
    acc.params += l.params;
    acc.model_bytes += l.bytes;
    acc.macs += l.macs;
    acc.bops += l.bops;
    if (l.weight_elems > 0) {
      weight_elems += l.weight_elems;
      weight_bits_sum += double(l.weight_elems) * double(l.weight_bits);
    }
    acc.layers.push_back(l);
  }
  acc.compression_ratio = weight_bits_sum > 0 ? 32.0 * double(weight_elems) / weight_bits_sum : 1.0;
  return acc;
}

std::string ModelAccount::table() const {
  std::ostringstream os;
  char line[256];
  std::snprintf(line, sizeof(line), "%-28s %-12s %-26s %9s %4s %4s %10s %10s %10s\n", "layer",
                "type", "shape", "params", "w", "a", "MACs", "BOPs", "bytes");
  os << line;
  for (const auto& l : layers) {
    const std::string w = l.weight_bits ? std::to_string(l.weight_bits) : "-";
    const std::string a = l.act_bits ? std::to_string(l.act_bits) : "-";
    std::snprintf(line, sizeof(line), "%-28s %-12s %-26s %9lld %4s %4s %10s %10s %10lld%s\n",
                  l.name.c_str(), l.type.c_str(), l.shape.c_str(), (long long)l.params, w.c_str(),
                  a.c_str(), l.macs ? human(double(l.macs)).c_str() : "-",
                  l.bops > 0 ? human(l.bops).c_str() : "-", (long long)l.bytes,
                  l.bn_folded ? " (folded)" : "");
    os << line;
  }
  std::snprintf(line, sizeof(line),
                "total: %lld parameters, %lld bytes (float %lld, %.2fx smaller), weight CR %.2fx, "
                "%s MACs, %s BOPs per sample\n",
                (long long)params, (long long)model_bytes, (long long)float_bytes,
                model_bytes > 0 ? double(float_bytes) / double(model_bytes) : 1.0,
                compression_ratio, human(double(macs)).c_str(), human(bops).c_str());
  os << line;
  return os.str();
}

nlohmann::json ModelAccount::to_json() const {
  nlohmann::json ls = nlohmann::json::array();
  for (const auto& l : layers) {
    ls.push_back({{"name", l.name},
                  {"type", l.type},
                  {"shape", l.shape},
                  {"params", l.params},
                  {"weight_bits", l.weight_bits},
                  {"act_bits", l.act_bits},
                  {"macs", l.macs},
                  {"bops", l.bops},
                  {"bytes", l.bytes},
                  {"bn_folded", l.bn_folded}});
  }
  return {{"params", params},
          {"model_bytes", model_bytes},
          {"float_bytes", float_bytes},
          {"compression_ratio", compression_ratio},
          {"macs", macs},
          {"bops", bops},
          {"layers", ls}};
}

}  // namespace lowbit::quant
