#include "prune/surgery.h"

#include <algorithm>
#include <numeric>
#include <set>
#include <sstream>

#include "core/autograd.h"
#include "core/error.h"
#include "core/ops.h"
#include "layers/basic.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"

namespace lowbit::prune {

namespace {

std::vector<int64_t> iota_n(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), int64_t(0));
  return v;
}

std::vector<int64_t> complement(const std::vector<int64_t>& removed, int64_t n) {
  std::vector<int64_t> keep;
  size_t j = 0;
  for (int64_t c = 0; c < n; ++c) {
    if (j < removed.size() && removed[j] == c) {
      ++j;
      continue;
    }
    keep.push_back(c);
  }
  return keep;
}

std::string group_layers(const ChannelGraph& g, const ChannelGroup& grp) {
  std::ostringstream os;
  for (size_t i = 0; i < grp.members.size(); ++i) {
    os << (i ? ", " : "") << g.layers[size_t(grp.members[i])].name;
  }
  return os.str();
}

}  // namespace

void remove_group_channels(const ChannelGraph& g,
                           const std::map<int, std::vector<int64_t>>& remove) {
  std::map<int, std::vector<int64_t>> out_keep, in_keep;
  for (const auto& [gid, channels] : remove) {
    LOWBIT_CHECK(gid >= 0 && gid < int(g.groups.size()), "remove_group_channels: no group ", gid);
    if (channels.empty()) continue;
    const ChannelGroup& grp = g.groups[size_t(gid)];
    LOWBIT_CHECK_INPUT(grp.removable, "channels of ", group_layers(g, grp),
                       " cannot be removed: ", grp.why_fixed, " (use mask mode)");
    for (size_t i = 0; i < channels.size(); ++i) {
      LOWBIT_CHECK_INPUT(channels[i] >= 0 && channels[i] < grp.channels &&
                             (i == 0 || channels[i] > channels[i - 1]),
                         "channels to remove from ", group_layers(g, grp),
                         " must be sorted, unique and in [0, ", grp.channels, "), got ",
                         channels[i]);
    }
    const std::string root = grp.roots.empty() ? g.layers[size_t(grp.members.front())].name
                                               : g.layers[size_t(grp.roots.front())].name;
    LOWBIT_CHECK_INPUT(int64_t(channels.size()) < grp.channels, "pruning would remove all ",
                       grp.channels, " output channels of layer '", root,
                       "' (tied: ", group_layers(g, grp),
                       "); refusing: a layer keeps at least one channel");
    const std::vector<int64_t> keep = complement(channels, grp.channels);
    for (int m : grp.members) out_keep[m] = keep;
    for (const Consumer& c : grp.consumers) {
      const GraphLayer& l = g.layers[size_t(c.layer)];
      if (l.kind == LayerKind::linear) {
        std::vector<int64_t> cols;
        for (int64_t p = 0; p < c.spatial; ++p) {
          for (int64_t k : keep) cols.push_back(p * grp.channels + k);
        }
        in_keep[c.layer] = cols;
      } else {
        in_keep[c.layer] = keep;
      }
    }
  }
  std::set<int> touched;
  for (auto& [l, k] : out_keep) touched.insert(l);
  for (auto& [l, k] : in_keep) touched.insert(l);
  for (int li : touched) {
    const GraphLayer& l = g.layers[size_t(li)];
    if (auto* conv = l.conv()) {
      auto out = out_keep.count(li) ? out_keep.at(li) : iota_n(conv->options().out_channels);
      auto in = in_keep.count(li) ? in_keep.at(li) : iota_n(conv->options().in_channels);
      if (l.kind == LayerKind::depthwise) in = out;
      conv->keep_channels(out, in);
    } else if (auto* bn = l.bn()) {
      bn->keep_channels(out_keep.at(li));
    } else if (auto* lin = l.linear()) {
      lin->keep_inputs(in_keep.at(li));
    }
  }
}

SurgeryResult remove_channels(layers::Module& model, const ChannelGraph& g,
                              const ChannelRequest& request) {
  (void)model;  // the graph holds the model's layers; kept for call-site clarity
  std::map<int, std::map<int64_t, std::set<int>>> asked;  // group -> channel -> roots asking
  for (const auto& [name, channels] : request) {
    const int li = g.find(name);
    LOWBIT_CHECK_INPUT(li >= 0 && g.layers[size_t(li)].kind == LayerKind::conv,
                       "channel surgery: '", name,
                       "' is not a dense Conv2d of the traced model (depthwise convs and BNs "
                       "follow their producer conv)");
    const GraphLayer& l = g.layers[size_t(li)];
    const ChannelGroup& grp = g.groups[size_t(l.group)];
    LOWBIT_CHECK_INPUT(grp.removable, "channels of '", name, "' cannot be removed: ", grp.why_fixed,
                       " (use mask mode)");
    for (int64_t c : channels) {
      LOWBIT_CHECK_INPUT(c >= 0 && c < l.out_channels, "channel surgery: channel ", c, " of '",
                         name, "' is out of range [0, ", l.out_channels, ")");
      asked[l.group][c + l.offset].insert(li);
    }
  }
  SurgeryResult result;
  for (const auto& [gid, chans] : asked) {
    const ChannelGroup& grp = g.groups[size_t(gid)];
    std::vector<int64_t> removed;
    for (const auto& [c, roots] : chans) {
      if (roots.size() == grp.roots.size()) {
        removed.push_back(c);
        continue;
      }
      std::ostringstream os;
      os << "channel " << c << " of";
      for (int r : roots) os << " " << g.layers[size_t(r)].name;
      os << " kept: residual group partner(s)";
      for (int r : grp.roots) {
        if (!roots.count(r)) os << " " << g.layers[size_t(r)].name;
      }
      os << " keep it";
      result.kept.push_back(os.str());
    }
    if (!removed.empty()) result.removed[gid] = removed;
  }
  remove_group_channels(g, result.removed);
  return result;
}

void mask_channels(layers::Conv2d& conv, layers::BatchNorm2d* bn,
                   const std::vector<int64_t>& channels, bool freeze) {
  if (channels.empty()) return;
  const int64_t k = conv.weight().size(0);
  std::vector<float> keep(size_t(k), 1.0f);
  if (conv.weight_mask().defined()) {
    LOWBIT_CHECK_INPUT(conv.weight_mask().dim() == 1,
                       "mask_channels: the conv has an element mask "
                       "(pruned at initialization); channel masks do not combine with it");
    keep = conv.weight_mask().to(DType::f32).to_vector<float>();
  }
  for (int64_t c : channels) {
    LOWBIT_CHECK_INPUT(c >= 0 && c < k, "mask_channels: channel ", c, " out of range [0, ", k, ")");
    keep[size_t(c)] = 0.0f;
  }
  autograd::NoGradGuard guard;
  const Device dev = conv.weight().device();
  Tensor m = from_vector(keep, {k}, TensorOptions(DType::f32, dev));
  if (freeze) conv.set_weight_mask(m);
  // Zero the stored values too, so the raw weight, the state dict and weight decay agree.
  Tensor& w = conv.weight();
  Tensor wz = w.detach() * m.to(w.dtype()).view({k, 1, 1, 1});
  w.detach().copy_(wz);
  if (conv.bias().defined()) {
    Tensor& b = conv.bias();
    b.detach().copy_(b.detach() * m.to(b.dtype()));
  }
  if (bn != nullptr && bn->running_mean().defined()) {
    Tensor& rm = bn->running_mean();
    rm.copy_(rm * m.to(rm.dtype()));
  }
}

int apply_channel_shapes(layers::Module& model, const layers::StateDict& state,
                         layers::Layout layout) {
  const bool torch = layout == layers::Layout::pytorch;
  int changed = 0;
  auto find = [&](const std::string& key) -> const Tensor* {
    auto it = state.find(key);
    return it == state.end() ? nullptr : &it->second;
  };
  for (auto& [name, m] : model.named_modules()) {
    const std::string p = name.empty() ? "" : name + ".";
    if (auto* conv = dynamic_cast<layers::Conv2d*>(m.get())) {
      const Tensor* w = find(p + "weight");
      if (w == nullptr) continue;
      LOWBIT_CHECK_INPUT(w->dim() == 4, "apply_channel_shapes: ", p, "weight must be 4-D, got ",
                         w->shape());
      const auto o = conv->options();
      const int64_t k = w->size(0), cg = torch ? w->size(1) : w->size(3);
      const bool dw = o.groups > 1 && o.groups == o.in_channels && o.groups == o.out_channels;
      bool did = false;
      if (k != o.out_channels || cg != o.in_channels / o.groups) {
        LOWBIT_CHECK_INPUT(k <= o.out_channels && (dw ? cg == 1 : cg <= o.in_channels),
                           "apply_channel_shapes: ", p, "weight ", w->shape(),
                           " is larger than the model's Conv2d(", conv->extra_repr(), ")");
        if (dw) {
          conv->keep_channels(iota_n(k), iota_n(k));
        } else {
          LOWBIT_CHECK_INPUT(o.groups == 1 || cg == o.in_channels / o.groups,
                             "apply_channel_shapes: ", p, "weight ", w->shape(),
                             " changes the input channels of a grouped conv");
          conv->keep_channels(iota_n(k), iota_n(o.groups == 1 ? cg : o.in_channels));
        }
        did = true;
      }
      if (find(p + "bias") && !conv->bias().defined()) {
        conv->ensure_bias();
        did = true;
      }
      if (const Tensor* wm = find(p + "weight_mask"); wm && !conv->weight_mask().defined()) {
        conv->set_weight_mask(wm->dim() == 1 ? ones({k}) : ones(conv->weight().shape()));
        did = true;
      }
      if (const Tensor* bm = find(p + "bias_map"); bm && !conv->bias_map().defined()) {
        conv->set_bias_map(zeros(bm->shape()));
        did = true;
      }
      changed += did;
    } else if (auto* bn = dynamic_cast<layers::BatchNorm2d*>(m.get())) {
      const Tensor* t = find(p + "running_mean");
      if (t == nullptr) t = find(p + "weight");
      if (t == nullptr) continue;
      const int64_t c = t->numel(), have = bn->options().num_features;
      if (c != have) {
        LOWBIT_CHECK_INPUT(c < have && c > 0, "apply_channel_shapes: ", p, " has ", c,
                           " channels, more than the model's BatchNorm2d(", have, ")");
        bn->keep_channels(iota_n(c));
        ++changed;
      }
    } else if (auto* lin = dynamic_cast<layers::Linear*>(m.get())) {
      const Tensor* w = find(p + "weight");
      if (w == nullptr) continue;
      LOWBIT_CHECK_INPUT(
          w->dim() == 2 && w->size(0) == lin->out_features() && w->size(1) <= lin->in_features(),
          "apply_channel_shapes: ", p, "weight ", w->shape(), " does not fit a pruned Linear(",
          lin->extra_repr(), "): only input features are pruned");
      bool did = false;
      if (w->size(1) != lin->in_features()) {
        lin->keep_inputs(iota_n(w->size(1)));
        did = true;
      }
      if (find(p + "bias") && !lin->bias().defined()) {
        lin->ensure_bias();
        did = true;
      }
      if (find(p + "weight_mask") && !lin->weight_mask().defined()) {
        lin->set_weight_mask(ones(lin->weight().shape()));
        did = true;
      }
      changed += did;
    }
  }
  return changed;
}

}  // namespace lowbit::prune
