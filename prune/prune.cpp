// prune_model: criterion -> plan -> (PfQ: constants and folding) -> surgery -> report.
// PfQ (docs/methods.md, "PfQ"-5.4) on a Conv+BN pair whose channel i has collapsed variance: the BN
// output is taken to be its constant (act(beta_i), or the calibration mean), the channel is removed
// and the constant's contribution goes into each consumer's bias:
//   dense conv:  b2'[k] += a_i * sum_{r,s} W2[k, r, s, i]    (border = full), or the exact
//                per-position map conv(P, W2[:, :, :, i]) (border = exact);
//   Linear after global pooling / flatten: b'[j] += sum_p W[j, p*C + i] * a_i;
//   depthwise chain: the constant goes through the dw conv, its BN and activation first.
// Channels that cannot be removed (residual streams, pads, the model output) are masked.
// The exact map is measured, not derived: with the pruned channels masked (zero filters, BN
// running mean 0, so the BN outputs exactly its constant), one forward pass on a zero sample
// gives each consumer's input, whose pruned channels do not depend on the data; the consumer
// applied to those channels alone is the map. The pruned model then matches the masked one up
// to float rounding.
#include "prune/prune.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "core/autograd.h"
#include "core/error.h"
#include "core/ops.h"
#include "layers/basic.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "prune/surgery.h"
#include "quant/accounting.h"

namespace lowbit::prune {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::vector<double> host(const Tensor& t) {
  std::vector<double> out;
  if (!t.defined()) return out;
  for (float v : t.detach().to(DType::f32).contiguous().to_vector<float>()) out.push_back(v);
  return out;
}

struct LayerSnapshot {
  int64_t channels = 0, params = 0, masked = 0;
};

LayerSnapshot snapshot(const GraphLayer& l) {
  LayerSnapshot s;
  for (auto& [n, p] : l.module->named_parameters(false)) s.params += p.numel();
  if (auto* conv = l.conv()) {
    s.channels = conv->weight().size(0);
    if (conv->weight_mask().defined()) {
      for (double v : host(conv->weight_mask())) s.masked += v == 0.0;
    }
  } else if (auto* bn = l.bn()) {
    s.channels = bn->options().num_features;
  } else if (auto* lin = l.linear()) {
    s.channels = lin->in_features();
  }
  return s;
}

// The activation ops right after a layer output, up to the first op that mixes it with others.
std::vector<std::string> leading_path(const std::vector<std::string>& path) {
  static const std::set<std::string> keep = {
      "relu", "relu6", "max_pool2d", "avg_pool2d", "sum", "mul_scalar", "view", "clone", "to"};
  std::vector<std::string> out;
  for (const auto& op : path) {
    if (!keep.count(op)) break;
    out.push_back(op);
  }
  return out;
}

// The path from BN layer b to its first reader.
std::vector<std::string> reader_path(const ChannelGraph& g, int b) {
  for (const GraphLayer& l : g.layers) {
    for (const ChannelSource& s : l.inputs) {
      if (s.source == b) return leading_path(s.path);
    }
  }
  return {};
}

class MeanRecorder : public layers::ForwardRecorder {
 public:
  std::map<const layers::Module*, std::vector<std::string>> paths;
  std::map<const layers::Module*, Tensor> sums;  // f64 (C)
  std::map<const layers::Module*, int64_t> counts;
  void on_forward(layers::Module& m, const Tensor&, const Tensor& output) override {
    auto it = paths.find(&m);
    if (it == paths.end()) return;
    Tensor a = activation_through(output.detach(), it->second);
    Tensor s = sum(a.to(DType::f64), {0, 1, 2});
    auto& acc = sums[&m];
    acc = acc.defined() ? acc + s : s;
    counts[&m] += a.size(0) * a.size(1) * a.size(2);
  }
};

class InputRecorder : public layers::ForwardRecorder {
 public:
  std::map<const layers::Module*, Tensor> inputs;
  void on_forward(layers::Module& m, const Tensor& input, const Tensor&) override {
    auto it = inputs.find(&m);
    if (it != inputs.end() && !it->second.defined()) it->second = input.detach();
  }
};

Tensor channel_mask(int64_t n, const std::vector<int64_t>& on, Device dev) {
  std::vector<float> v(size_t(n), 0.0f);
  for (int64_t c : on) v[size_t(c)] = 1.0f;
  return from_vector(v, {n}, TensorOptions(DType::f32, dev));
}

void add_to_bias(Tensor& bias, const Tensor& delta) {
  autograd::NoGradGuard guard;
  bias.detach().copy_(bias.detach() + delta.to(bias.dtype()));
}

// The PfQ pass over one traced graph.
class PfqPass {
 public:
  PfqPass(layers::Module& model, const ChannelGraph& g, const PruneOptions& o,
          const std::vector<Candidate>& picks, PruneReport& rep)
      : model_(model), g_(g), o_(o), picks_(picks), rep_(rep) {}

  void run(const Shape& hwc, const CalibrationBatches& calib) {
    for (size_t i = 0; i < picks_.size(); ++i) selected_[picks_[i].layer].insert(picks_[i].channel);
    decide_actions();
    if (o_.constant == "data_mean") measure_means(calib);
    decide_structural();
    // Constants for the report (BN output of each picked channel).
    for (size_t i = 0; i < picks_.size(); ++i) {
      auto c = const_at(picks_[i].layer, picks_[i].channel);
      rep_.channels[i].constant = c ? *c : kNaN;
    }
    apply_masks();
    fold(hwc);
    remove_group_channels(g_, removed_);
  }

 private:
  struct BnParams {
    std::vector<double> gamma, beta, mean, var;
    double eps = 0;
    bool relu = false;
  };

  const BnParams& bn_params(int b) {
    auto it = bn_.find(b);
    if (it != bn_.end()) return it->second;
    layers::BatchNorm2d* bn = g_.layers[size_t(b)].bn();
    BnParams p;
    const int64_t c = bn->options().num_features;
    p.gamma = bn->weight().defined() ? host(bn->weight()) : std::vector<double>(size_t(c), 1.0);
    p.beta = bn->bias().defined() ? host(bn->bias()) : std::vector<double>(size_t(c), 0.0);
    p.mean = host(bn->running_mean());
    p.var = host(bn->running_var());
    p.eps = bn->options().eps;
    p.relu = bn->options().fuse_relu;
    return bn_[b] = p;
  }

  void set_action(size_t pick, const std::string& action, const std::string& reason) {
    rep_.channels[pick].action = action;
    rep_.channels[pick].reason = reason;
  }

  // docs/methods.md, "PfQ": residual streams use mask mode (lowbit default) or are skipped; groups
  // that cannot change shape are masked; the rest are removal candidates.
  void decide_actions() {
    for (size_t i = 0; i < picks_.size(); ++i) {
      const GraphLayer& l = g_.layers[size_t(picks_[i].layer)];
      const ChannelGroup& grp = g_.groups[size_t(l.group)];
      if (o_.mode == "mask") {
        set_action(i, "masked", "mode = mask");
      } else if (grp.residual) {
        if (o_.residual == "skip")
          set_action(i, "skipped", "residual stream (residual = skip)");
        else
          set_action(i, "masked", "residual stream (residual = mask)");
      } else if (!grp.removable) {
        set_action(i, "masked", grp.why_fixed);
      } else {
        set_action(i, "removed", "");
        candidates_[l.group].insert(picks_[i].channel + l.offset);
      }
    }
    // Refuse before anything changes (docs/methods.md, "PfQ" folds a constant; a layer with no
    // channel left has nothing to carry the data).
    for (auto& [gid, chans] : candidates_) {
      const ChannelGroup& grp = g_.groups[size_t(gid)];
      LOWBIT_CHECK_INPUT(
          int64_t(chans.size()) < grp.channels, "PfQ would remove all ", grp.channels,
          " output channels of layer '",
          g_.layers[size_t(grp.roots.empty() ? grp.members.front() : grp.roots.front())].name,
          "' (every running variance is below the threshold); refusing: a layer ",
          "keeps at least one channel (lower var_threshold or use mode = mask)");
    }
  }

  // constant = data_mean: c_i = mean over the calibration data of act(BN(x))_i (docs/methods.md,
  // "PfQ"'s data-based variant). It replaces beta_i, so the masked BN outputs it exactly and the
  // folding below uses it like beta.
  void measure_means(const CalibrationBatches& calib) {
    LOWBIT_CHECK_INPUT(calib != nullptr, "PfQ constant = data_mean needs calibration batches");
    MeanRecorder rec;
    std::map<const layers::Module*, int> bn_of;
    for (size_t i = 0; i < picks_.size(); ++i) {
      if (rep_.channels[i].action == "skipped") continue;
      const int b = picks_[i].layer;
      rec.paths[g_.layers[size_t(b)].module] = reader_path(g_, b);
      bn_of[g_.layers[size_t(b)].module] = b;
    }
    if (rec.paths.empty()) return;
    {
      autograd::NoGradGuard ng;
      layers::RecordForward guard(&rec);
      Tensor x;
      while (calib(x)) {
        LOWBIT_CHECK_INPUT(x.defined() && x.dim() == 4, "calibration batch must be NHWC, got ",
                           x.defined() ? shape_str(x.shape()) : "undefined");
        model_.forward(x.to(model_.device(), DType::f32));
      }
    }
    for (auto& [m, b] : bn_of) {
      LOWBIT_CHECK_INPUT(rec.counts[m] > 0,
                         "PfQ constant = data_mean: the calibration batches "
                         "never reached '",
                         g_.layers[size_t(b)].name, "' (no batches given?)");
      const std::vector<double> mean = host(rec.sums.at(m) * (1.0 / double(rec.counts.at(m))));
      layers::BatchNorm2d* bn = g_.layers[size_t(b)].bn();
      LOWBIT_CHECK_INPUT(bn->bias().defined(), "PfQ constant = data_mean needs an affine BN, '",
                         g_.layers[size_t(b)].name, "' has none");
      std::vector<double> beta = host(bn->bias());
      for (int64_t c : selected_.at(b)) beta[size_t(c)] = mean[size_t(c)];
      std::vector<float> bf(beta.begin(), beta.end());
      autograd::NoGradGuard ng;
      bn->bias().detach().copy_(from_vector(bf, {int64_t(bf.size())}));
    }
  }

  // The value of channel v at the output of group member s once the picked channels are
  // masked; nullopt where it is not constant (no collapsed BN at or before s).
  std::optional<double> const_at(int s, int64_t v) {
    const GraphLayer& l = g_.layers[size_t(s)];
    if (l.kind == LayerKind::batchnorm) {
      const BnParams& p = bn_params(s);
      auto sel = selected_.find(s);
      double y;
      if (sel != selected_.end() && sel->second.count(v)) {
        y = p.beta[size_t(v)];  // masked: running mean 0, input 0
      } else {
        if (l.inputs.size() != 1 || l.inputs[0].source < 0) return std::nullopt;
        auto x = const_at(l.inputs[0].source, v);
        if (!x) return std::nullopt;
        x = constant_through(*x, l.inputs[0].path);
        if (!x) return std::nullopt;
        y = p.gamma[size_t(v)] * (*x - p.mean[size_t(v)]) / std::sqrt(p.var[size_t(v)] + p.eps) +
            p.beta[size_t(v)];
      }
      return p.relu ? std::max(y, 0.0) : y;
    }
    if (l.kind == LayerKind::depthwise) {
      if (l.inputs.size() != 1 || l.inputs[0].source < 0) return std::nullopt;
      auto x = const_at(l.inputs[0].source, v);
      if (!x) return std::nullopt;
      x = constant_through(*x, l.inputs[0].path);
      if (!x) return std::nullopt;
      // Interior value of the dw output: d_i = a_i sum_{r,s} Wdw[i, r, s] + bdw_i (docs/methods.md,
      // "PfQ").
      auto& dw = dw_[s];
      if (dw.first.empty()) {
        layers::Conv2d* conv = l.conv();
        autograd::NoGradGuard ng;
        dw.first = host(conv->effective_weight().sum({1, 2, 3}));
        dw.second =
            conv->bias().defined() ? host(conv->bias()) : std::vector<double>(dw.first.size(), 0.0);
      }
      return *x * dw.first[size_t(v)] + dw.second[size_t(v)];
    }
    return std::nullopt;
  }

  // A candidate channel is removed when every consumer of its group can take its constant;
  // otherwise it falls back to the mask.
  void decide_structural() {
    for (auto& [gid, chans] : candidates_) {
      const ChannelGroup& grp = g_.groups[size_t(gid)];
      std::vector<int64_t> removed;
      for (int64_t v : chans) {
        std::string why;
        std::map<int, double> values;
        for (const Consumer& c : grp.consumers) {
          const std::string& cname = g_.layers[size_t(c.layer)].name;
          if (c.from < 0) {
            why = "consumer " + cname + " reads a sum of layers";
            break;
          }
          auto x = const_at(c.from, v);
          if (!x) {
            why = "consumer " + cname + " reads the channel before the collapsed BN";
            break;
          }
          auto a = constant_through(*x, c.path);
          if (!a) {
            why = "consumer " + cname + " reads the channel through an op PfQ cannot fold";
            break;
          }
          values[c.layer] = *a;
        }
        if (!why.empty()) {
          for (size_t i = 0; i < picks_.size(); ++i) {
            const GraphLayer& l = g_.layers[size_t(picks_[i].layer)];
            if (l.group == gid && picks_[i].channel + l.offset == v) set_action(i, "masked", why);
          }
          continue;
        }
        removed.push_back(v);
        for (auto& [layer, a] : values) folds_[layer][v] = a;
      }
      if (!removed.empty()) removed_[gid] = removed;
    }
  }

  // Masked channels get the frozen mask; channels about to be removed are zeroed the same way
  // (without a mask) so that the measured maps see exactly their constants.
  void apply_masks() {
    std::map<int, std::vector<int64_t>> freeze, zero;
    for (size_t i = 0; i < picks_.size(); ++i) {
      const std::string& a = rep_.channels[i].action;
      if (a == "masked")
        freeze[picks_[i].layer].push_back(picks_[i].channel);
      else if (a == "removed")
        zero[picks_[i].layer].push_back(picks_[i].channel);
    }
    for (auto* m : {&freeze, &zero}) {
      for (auto& [b, chans] : *m) {
        const int conv = g_.conv_of_bn(b);
        mask_channels(*g_.layers[size_t(conv)].conv(), g_.layers[size_t(b)].bn(), chans,
                      m == &freeze);
      }
    }
  }

  void fold(const Shape& hwc) {
    if (folds_.empty()) return;
    autograd::NoGradGuard ng;
    if (o_.border == "exact") {
      fold_exact(hwc);
      return;
    }
    for (auto& [li, values] : folds_) {
      const GraphLayer& l = g_.layers[size_t(li)];
      const Device dev = l.module->device();
      bool any = false;
      for (auto& [v, a] : values) any = any || a != 0.0;
      if (!any)
        continue;  // a_i = 0 (e.g. ReLU of beta <= 0): no correction (docs/methods.md, "PfQ")
      if (auto* conv = l.conv()) {
        // b2'[k] = b2[k] + sum_i a_i sum_{r,s} W2[k, r, s, i]   (docs/methods.md, "PfQ", border =
        // full)
        std::vector<float> a(size_t(l.in_channels), 0.0f);
        for (auto& [v, val] : values) a[size_t(v)] = float(val);
        Tensor av = from_vector(a, {1, l.in_channels}, TensorOptions(DType::f32, dev));
        Tensor w = conv->effective_weight().detach().to(DType::f32);
        Tensor delta = (w.sum({1, 2}) * av).sum({1});
        conv->ensure_bias();
        add_to_bias(conv->bias(), delta);
      } else if (auto* lin = l.linear()) {
        // b'[j] = b[j] + sum_p W[j, p*C + i] a_i   (docs/methods.md, "PfQ", Linear after GAP /
        // flatten)
        const int64_t c = l.in_channels / l.inputs[0].spatial;  // channels of the flattened map
        std::vector<float> a(size_t(l.in_channels), 0.0f);
        for (int64_t col = 0; col < l.in_channels; ++col) {
          auto it = values.find(col % c);
          if (it != values.end()) a[size_t(col)] = float(it->second);
        }
        Tensor av = from_vector(a, {1, l.in_channels}, TensorOptions(DType::f32, dev));
        Tensor delta = (lin->weight().detach().to(DType::f32) * av).sum({1});
        lin->ensure_bias();
        add_to_bias(lin->bias(), delta);
      }
    }
  }

  // border = exact: the consumer applied to its pruned input channels alone, measured on the
  // masked model (see the file comment). Constant maps (1x1 convs without dw borders, Linear)
  // go into the bias, the others into the conv's bias map.
  void fold_exact(const Shape& hwc) {
    InputRecorder rec;
    for (auto& [li, values] : folds_) rec.inputs[g_.layers[size_t(li)].module] = Tensor();
    {
      layers::RecordForward guard(&rec);
      Tensor x = zeros({1, hwc[0], hwc[1], hwc[2]}, TensorOptions(DType::f32, model_.device()));
      model_.forward(x);
    }
    for (auto& [li, values] : folds_) {
      const GraphLayer& l = g_.layers[size_t(li)];
      Tensor in = rec.inputs.at(l.module);
      LOWBIT_CHECK(in.defined(), "PfQ exact folding: '", l.name, "' was not called");
      const int64_t n_in = in.size(-1);
      std::vector<int64_t> on;
      if (auto* lin = l.linear()) {
        (void)lin;
        const int64_t c = n_in / l.inputs[0].spatial;
        for (int64_t col = 0; col < n_in; ++col) {
          if (values.count(col % c)) on.push_back(col);
        }
      } else {
        for (auto& [v, a] : values) on.push_back(v);
      }
      Tensor xp = in.to(DType::f32) * channel_mask(n_in, on, in.device());
      if (auto* conv = l.conv()) {
        Tensor y = layers::conv2d(xp, conv->effective_weight().detach().to(DType::f32), Tensor(),
                                  conv->options())
                       .squeeze(0);  // (P, Q, K)
        const Tensor corner = y.slice(0, 0, 1).slice(1, 0, 1);
        if (amax(abs(y)).item() == 0.0) continue;  // only zero constants: nothing to fold
        const bool constant = amax(abs(y - corner)).item() == 0.0;
        if (constant) {
          conv->ensure_bias();
          add_to_bias(conv->bias(), corner.reshape({y.size(2)}));
        } else {
          const Tensor& old = conv->bias_map();
          conv->set_bias_map(old.defined() ? old.to(DType::f32) + y : y);
        }
      } else if (auto* lin = l.linear()) {
        Tensor y = layers::linear(xp, lin->weight().detach().to(DType::f32), Tensor());
        if (amax(abs(y)).item() == 0.0) continue;
        lin->ensure_bias();
        add_to_bias(lin->bias(), y.reshape({y.size(-1)}));
      }
    }
  }

  layers::Module& model_;
  const ChannelGraph& g_;
  const PruneOptions& o_;
  const std::vector<Candidate>& picks_;
  PruneReport& rep_;
  std::map<int, std::set<int64_t>> selected_;       // BN layer -> picked channels
  std::map<int, std::set<int64_t>> candidates_;     // group -> channels to try to remove
  std::map<int, std::vector<int64_t>> removed_;     // group -> channels removed
  std::map<int, std::map<int64_t, double>> folds_;  // consumer -> group channel -> constant
  std::map<int, BnParams> bn_;
  std::map<int, std::pair<std::vector<double>, std::vector<double>>> dw_;
};

}  // namespace

PruneReport prune_model(layers::Module& model, const PruneOptions& o, const Shape& hwc,
                        const CalibrationBatches& calib) {
  o.validate();
  const Criterion& crit = find_criterion(o.method);
  LOWBIT_CHECK_INPUT(crit.folds || o.mode == "structural", "pruning mode 'mask' keeps PfQ's ",
                     "collapsed channels at their constant; method '", o.method,
                     "' removes channels, use mode = structural");
  LOWBIT_CHECK_INPUT(o.constant != "data_mean" || calib != nullptr,
                     "PfQ constant = data_mean needs calibration batches");
  const bool was_training = model.is_training();
  struct Restore {
    layers::Module& m;
    bool training;
    ~Restore() { m.train(training); }
  } restore{model, was_training};
  model.eval();

  PruneReport rep;
  rep.options = o;
  const ChannelGraph g = trace_channel_graph(model, hwc);
  const quant::ModelAccount before = quant::account_model(model, hwc);
  rep.params_before = model.num_parameters();
  rep.bytes_before = before.model_bytes;
  rep.bops_before = before.bops;
  rep.macs_before = before.macs;
  std::vector<LayerSnapshot> snap;
  for (const GraphLayer& l : g.layers) snap.push_back(snapshot(l));

  const std::vector<Candidate> picks = crit.select(g, o);
  for (const Candidate& c : picks) {
    const GraphLayer& l = g.layers[size_t(c.layer)];
    PrunedChannel pc;
    pc.layer = l.name;
    pc.channel = c.channel;
    pc.score = c.score;
    int bn = -1;
    if (l.kind == LayerKind::batchnorm) {
      bn = c.layer;
      pc.conv = g.layers[size_t(g.conv_of_bn(c.layer))].name;
    } else {
      pc.conv = l.name;
      bn = g.bn_of_conv(c.layer);
    }
    pc.var = pc.gamma = pc.beta = pc.out_std = pc.constant = kNaN;
    if (bn >= 0 && g.layers[size_t(bn)].bn()->running_var().defined()) {
      const BnChannelStats s = bn_channel_stats(g.layers[size_t(bn)])[size_t(c.channel)];
      pc.var = s.var;
      pc.gamma = s.gamma;
      pc.beta = s.beta;
      pc.out_std = s.out_std;
    }
    rep.channels.push_back(pc);
  }

  if (crit.folds) {
    PfqPass(model, g, o, picks, rep).run(hwc, calib);
  } else {
    std::map<int, std::vector<int64_t>> remove;
    for (size_t i = 0; i < picks.size(); ++i) {
      const GraphLayer& l = g.layers[size_t(picks[i].layer)];
      remove[l.group].push_back(picks[i].channel + l.offset);
      rep.channels[i].action = "removed";
    }
    for (auto& [gid, v] : remove) std::sort(v.begin(), v.end());
    remove_group_channels(g, remove);
  }

  for (const PrunedChannel& c : rep.channels) {
    rep.removed += c.action == "removed";
    rep.masked += c.action == "masked";
    rep.skipped += c.action == "skipped";
  }
  for (size_t i = 0; i < g.layers.size(); ++i) {
    const LayerSnapshot after = snapshot(g.layers[i]);
    if (after.channels == snap[i].channels && after.params == snap[i].params &&
        after.masked == snap[i].masked) {
      continue;
    }
    LayerChange ch;
    ch.name = g.layers[i].name;
    ch.type = g.layers[i].module->type_name();
    ch.channels_before = snap[i].channels;
    ch.channels_after = after.channels;
    ch.masked = after.masked;
    ch.params_before = snap[i].params;
    ch.params_after = after.params;
    rep.layers.push_back(ch);
  }
  const quant::ModelAccount after = quant::account_model(model, hwc);
  rep.params_after = model.num_parameters();
  rep.bytes_after = after.model_bytes;
  rep.bops_after = after.bops;
  rep.macs_after = after.macs;
  return rep;
}

}  // namespace lowbit::prune
