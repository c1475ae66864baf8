// Tracing the channel dependency graph. The shapes of the intermediate autograd nodes (needed to
// tell global average pooling or flatten from other reductions and views, and the pad of
// pad_channels) come from one backward pass with output hooks on every node: the gradient of a
// node's output has the output's shape. Parameters are switched off requires_grad during the
// trace, so only the input carries the graph and no .grad is written.
#include "prune/graph.h"

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <set>
#include <sstream>
#include <utility>

#include "core/autograd.h"
#include "core/error.h"
#include "core/ops.h"
#include "layers/basic.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"

namespace lowbit::prune {

namespace {

using Key = std::pair<const autograd::Node*, uint32_t>;

// Ops that keep every element's channel (shape checks still apply).
const std::set<std::string>& channel_ops() {
  static const std::set<std::string> s = {
      "relu",  "relu6",      "neg",        "abs",        "sign",    "square",
      "clamp", "add_scalar", "mul_scalar", "pow_scalar", "exp",     "log",
      "sqrt",  "rsqrt",      "reciprocal", "sigmoid",    "tanh",    "add",
      "sub",   "mul",        "div",        "pow",        "maximum", "minimum",
      "where", "max_pool2d", "avg_pool2d", "clone",      "to",      "add_relu"};
  return s;
}

struct Call {
  layers::Module* module;
  Tensor input, output;
};

class TraceRecorder : public layers::ForwardRecorder {
 public:
  void on_forward(layers::Module& m, const Tensor& input, const Tensor& output) override {
    for (const Call& c : calls) {
      // Subclasses that report through their base class as well give the same output twice.
      if (c.module == &m && c.output.same(output)) return;
    }
    calls.push_back({&m, input, output});
  }
  std::vector<Call> calls;
};

Key key_of(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return {nullptr, 0};
  if (t.grad_fn()) return {t.grad_fn().get(), t.autograd_meta().output_nr};
  return {t.autograd_meta().grad_accumulator.lock().get(), 0};
}

// Union-find with offsets: virtual channel of (space s, channel c) = c + off(s).
class OffsetUnion {
 public:
  explicit OffsetUnion(int n) : parent_(size_t(n)), off_(size_t(n), 0) {
    std::iota(parent_.begin(), parent_.end(), 0);
  }
  int find(int a) {
    if (parent_[size_t(a)] == a) return a;
    const int p = parent_[size_t(a)];
    const int r = find(p);
    off_[size_t(a)] += off_[size_t(p)];
    parent_[size_t(a)] = r;
    return r;
  }
  int64_t offset(int a) {
    find(a);
    return off_[size_t(a)];
  }
  // Ties channel c of a to channel c + delta of b, i.e. off(a) = off(b) + delta.
  // Returns false on a contradiction (an inconsistent cycle).
  bool unite(int a, int b, int64_t delta) {
    const int ra = find(a), rb = find(b);
    const int64_t oa = off_[size_t(a)], ob = off_[size_t(b)];
    if (ra == rb) return oa == ob + delta;
    // off(a) = oa + off(ra) (root-relative) ... attach ra under rb.
    parent_[size_t(ra)] = rb;
    off_[size_t(ra)] = ob + delta - oa;
    return true;
  }

 private:
  std::vector<int> parent_;
  std::vector<int64_t> off_;
};

struct Walker {
  std::map<Key, int> source_of;  // layer outputs and the model input (-1)
  std::map<Key, Shape> shape_of;
  std::map<Key, std::vector<ChannelSource>> memo;
  std::set<int> opaque_sources;  // sources read through an op the walk cannot follow
  std::set<std::string> opaque_ops;

  const Shape* shape(const Key& k) const {
    auto it = shape_of.find(k);
    return it == shape_of.end() ? nullptr : &it->second;
  }

  // Every source upstream of k, through any op.
  void mark_opaque(const Key& k, std::set<Key>& seen) {
    if (!k.first || !seen.insert(k).second) return;
    auto s = source_of.find(k);
    if (s != source_of.end()) {
      opaque_sources.insert(s->second);
      return;
    }
    auto* node = const_cast<autograd::Node*>(k.first);
    for (const auto& e : node->next_edges()) {
      if (e.fn) mark_opaque({e.fn.get(), e.input_nr}, seen);
    }
  }
  void opaque(const Key& k, const std::string& why) {
    opaque_ops.insert(why);
    std::set<Key> seen;
    auto* node = const_cast<autograd::Node*>(k.first);
    for (const auto& e : node->next_edges()) {
      if (e.fn) mark_opaque({e.fn.get(), e.input_nr}, seen);
    }
  }

  // The contributions of the value k (paths in reverse order while walking).
  const std::vector<ChannelSource>& walk(const Key& k) {
    auto m = memo.find(k);
    if (m != memo.end()) return m->second;
    std::vector<ChannelSource> out;
    auto s = source_of.find(k);
    if (s != source_of.end()) {
      out.push_back({s->second, 0, 1, {}});
      return memo[k] = out;
    }
    if (!k.first) return memo[k] = out;
    auto* node = const_cast<autograd::Node*>(k.first);
    const std::string& name = node->name();
    const Shape* out_shape = shape(k);
    std::vector<Key> operands;
    for (const auto& e : node->next_edges()) {
      if (e.fn) operands.push_back({e.fn.get(), e.input_nr});
    }
    auto fail = [&](const std::string& why) -> const std::vector<ChannelSource>& {
      opaque(k, why);
      return memo[k] = std::vector<ChannelSource>{};
    };
    if (!out_shape) return fail(name + " (shape unknown)");
    for (const Key& op : operands) {
      const Shape* in_shape = shape(op);
      if (!in_shape) return fail(name + " (input shape unknown)");
      int64_t offset = 0, spatial = 1;
      const Shape& is = *in_shape;
      const Shape& os = *out_shape;
      if (channel_ops().count(name)) {
        if (is.size() != os.size() || is.back() != os.back()) {
          return fail(name + " " + shape_str(is) + " -> " + shape_str(os));
        }
      } else if (name == "sum") {
        // Global pooling: (N, H, W, C) -> (N, C) or (N, 1, 1, C).
        const bool gap = is.size() == 4 && os.back() == is.back() && os[0] == is[0] &&
                         (os.size() == 2 || (os.size() == 4 && os[1] == 1 && os[2] == 1));
        if (!gap) return fail("sum " + shape_str(is) + " -> " + shape_str(os));
      } else if (name == "view") {
        const bool same = os == is;
        const bool squeeze =
            is.size() == 4 && is[1] == 1 && is[2] == 1 && os.size() == 2 && os[1] == is[3];
        const bool flatten =
            is.size() == 4 && os.size() == 2 && os[0] == is[0] && os[1] == is[1] * is[2] * is[3];
        if (!same && !squeeze && !flatten)
          return fail("view " + shape_str(is) + " -> " + shape_str(os));
        if (flatten && !squeeze && !same) spatial = is[1] * is[2];
      } else if (name == "pad_channels") {
        if (is.size() != 4 || os.size() != 4 || (os[3] - is[3]) % 2 != 0) {
          return fail("pad_channels " + shape_str(is) + " -> " + shape_str(os));
        }
        offset = (os[3] - is[3]) / 2;
      } else {
        return fail(name);
      }
      for (ChannelSource c : walk(op)) {
        if (c.spatial != 1 && spatial != 1) return fail(name + " after a flatten");
        c.offset += offset;
        c.spatial *= spatial;
        c.path.push_back(name);
        out.push_back(std::move(c));
      }
    }
    return memo[k] = out;
  }
};

LayerKind kind_of(layers::Module* m) {
  if (auto* c = dynamic_cast<layers::Conv2d*>(m)) {
    const auto& o = c->options();
    if (o.groups == 1) return LayerKind::conv;
    if (o.groups == o.in_channels && o.groups == o.out_channels) return LayerKind::depthwise;
    return LayerKind::grouped;
  }
  if (dynamic_cast<layers::BatchNorm2d*>(m)) return LayerKind::batchnorm;
  return LayerKind::linear;
}

}  // namespace

layers::Conv2d* GraphLayer::conv() const { return dynamic_cast<layers::Conv2d*>(module); }
layers::BatchNorm2d* GraphLayer::bn() const { return dynamic_cast<layers::BatchNorm2d*>(module); }
layers::Linear* GraphLayer::linear() const { return dynamic_cast<layers::Linear*>(module); }

int ChannelGraph::find(const std::string& name) const {
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i].name == name) return int(i);
  }
  return -1;
}

const GraphLayer& ChannelGraph::layer(const std::string& name) const {
  const int i = find(name);
  LOWBIT_CHECK_INPUT(i >= 0, "no Conv2d, BatchNorm2d or Linear named '", name,
                     "' was called in the traced forward pass");
  return layers[size_t(i)];
}

int ChannelGraph::conv_of_bn(int bn) const {
  const GraphLayer& l = layers.at(size_t(bn));
  if (l.kind != LayerKind::batchnorm || l.inputs.size() != 1) return -1;
  const ChannelSource& s = l.inputs[0];
  if (s.source < 0 || !s.path.empty() || s.offset != 0) return -1;
  const LayerKind k = layers[size_t(s.source)].kind;
  return (k == LayerKind::conv || k == LayerKind::depthwise) ? s.source : -1;
}

int ChannelGraph::bn_of_conv(int conv) const {
  for (size_t i = 0; i < layers.size(); ++i) {
    if (conv_of_bn(int(i)) == conv) return int(i);
  }
  return -1;
}

std::string ChannelGraph::str() const {
  std::ostringstream os;
  for (const ChannelGroup& g : groups) {
    os << "group " << g.id << " (" << g.channels << " channels" << (g.residual ? ", residual" : "")
       << (g.removable ? "" : ", fixed: " + g.why_fixed) << "): members";
    for (int m : g.members) {
      os << " " << layers[size_t(m)].name;
      if (layers[size_t(m)].offset) os << "@" << layers[size_t(m)].offset;
    }
    os << "; consumers";
    for (const Consumer& c : g.consumers) {
      os << " " << layers[size_t(c.layer)].name;
      if (c.offset) os << "@" << c.offset;
      if (c.spatial > 1) os << " x" << c.spatial;
    }
    os << "\n";
  }
  return os.str();
}

namespace {

// Parameters off requires_grad (the graph then hangs off the input only), eval mode and grad
// mode on for the trace; everything restored when the trace ends.
class TraceMode {
 public:
  explicit TraceMode(layers::Module& model)
      : model_(model), training_(model.is_training()), grad_(autograd::grad_enabled()) {
    for (auto& [n, p] : model.named_parameters()) {
      if (p.requires_grad()) params_.push_back(p);
    }
    for (auto& p : params_) p.autograd_meta().requires_grad = false;
    model.eval();
    autograd::set_grad_enabled(true);
  }
  ~TraceMode() {
    for (auto& p : params_) p.autograd_meta().requires_grad = true;
    model_.train(training_);
    autograd::set_grad_enabled(grad_);
  }
  TraceMode(const TraceMode&) = delete;
  TraceMode& operator=(const TraceMode&) = delete;

 private:
  layers::Module& model_;
  std::vector<Tensor> params_;
  bool training_, grad_;
};

// The graph's layers (Conv2d, BatchNorm2d, Linear) in call order, their outputs as walk sources.
// layer_inputs receives each layer's input tensor.
void collect_layers(layers::Module& model, const TraceRecorder& rec, ChannelGraph& g, Walker& w,
                    std::vector<Tensor>& layer_inputs) {
  std::map<const layers::Module*, std::string> names;
  for (auto& [name, m] : model.named_modules()) names.emplace(m.get(), name);
  std::set<const layers::Module*> seen_modules;
  for (const Call& c : rec.calls) {
    if (!dynamic_cast<layers::Conv2d*>(c.module) && !dynamic_cast<layers::BatchNorm2d*>(c.module) &&
        !dynamic_cast<layers::Linear*>(c.module)) {
      continue;
    }
    const std::string name = names.count(c.module) ? names.at(c.module) : "?";
    LOWBIT_CHECK_INPUT(seen_modules.insert(c.module).second, "layer '", name,
                       "' is called more than once in the forward pass; shared layers cannot be "
                       "pruned");
    GraphLayer l;
    l.name = name;
    l.module = c.module;
    l.kind = kind_of(c.module);
    l.input_shape = c.input.shape();
    l.output_shape = c.output.shape();
    l.in_channels = c.input.size(-1);
    l.out_channels = c.output.size(-1);
    const int idx = int(g.layers.size());
    g.layers.push_back(std::move(l));
    layer_inputs.push_back(c.input);
    const Key ko = key_of(c.output);
    if (ko.first) {
      w.source_of[ko] = idx;
      w.shape_of[ko] = c.output.shape();
    }
  }
}

// Shapes of every node output: gradient hooks during one backward pass from y.
void record_shapes(const Tensor& y, Walker& w) {
  auto shapes = std::make_shared<std::map<Key, Shape>>();
  std::vector<autograd::Node*> stack{y.grad_fn().get()};
  std::set<autograd::Node*> visited{y.grad_fn().get()};
  while (!stack.empty()) {
    autograd::Node* n = stack.back();
    stack.pop_back();
    for (int o = 0; o < std::max(1, n->num_outputs()); ++o) {
      n->add_output_hook(uint32_t(o), [shapes, n, o](const Tensor& grad) {
        (*shapes)[{n, uint32_t(o)}] = grad.shape();
        return Tensor();
      });
    }
    for (const auto& e : n->next_edges()) {
      if (e.fn && visited.insert(e.fn.get()).second) stack.push_back(e.fn.get());
    }
  }
  autograd::run_backward({y}, {ones_like(y)}, /*retain_graph=*/true);
  for (auto& [k, sh] : *shapes) w.shape_of.emplace(k, sh);
}

// Channel spaces: one per layer output plus the model input (index n), tied together by sums,
// per-channel layers and shifts; the ones that must keep their channels, and why.
struct Spaces {
  explicit Spaces(int layers) : n(layers), uf(layers + 1) {}
  int n;
  OffsetUnion uf;
  std::set<int> residual, fixed;
  std::map<int, std::string> fixed_why;
  int of(int source) const { return source < 0 ? n : source; }
  void fix(int sp, const std::string& why) {
    if (fixed_why.emplace(sp, why).second) fixed.insert(sp);
  }
  // Sums tie their operands: channel c of ins[0] meets channel c + off0 - offa of ins[a].
  void tie_sum(const std::vector<ChannelSource>& ins, const std::string& where) {
    for (size_t a = 1; a < ins.size(); ++a) {
      const int64_t delta = ins[0].offset - ins[a].offset;
      residual.insert(of(ins[0].source));
      residual.insert(of(ins[a].source));
      if (!uf.unite(of(ins[0].source), of(ins[a].source), delta) && !where.empty()) {
        fix(of(ins[0].source), "inconsistent channel offsets around " + where);
      }
    }
  }
};

Spaces tie_channel_spaces(ChannelGraph& g, const Walker& w,
                          const std::vector<ChannelSource>& output_sources) {
  const int n = int(g.layers.size());
  Spaces sp(n);
  for (int i = 0; i < n; ++i) {
    GraphLayer& l = g.layers[size_t(i)];
    const auto& ins = l.inputs;
    sp.tie_sum(ins, l.name);
    if (l.kind == LayerKind::batchnorm || l.kind == LayerKind::depthwise) {
      for (const auto& s : ins) {
        if (s.spatial != 1) {
          sp.fix(sp.of(s.source), l.name + " reads a flattened map");
          continue;
        }
        // Output channel j = input channel j = source channel j - offset.
        if (!sp.uf.unite(i, sp.of(s.source), -s.offset))
          sp.fix(i, "inconsistent offsets at " + l.name);
      }
    }
    if (l.kind == LayerKind::grouped) {
      for (const auto& s : ins) sp.fix(sp.of(s.source), "read by grouped conv " + l.name);
      sp.fix(i, "output of grouped conv " + l.name);
    }
    if (l.kind == LayerKind::linear) sp.fix(i, "Linear outputs are not pruned");
    // A per-channel layer behind an op the trace cannot follow: its channels are tied to
    // unknown ones (the sources upstream were fixed by the walk).
    if (ins.empty() && (l.kind == LayerKind::batchnorm || l.kind == LayerKind::depthwise)) {
      sp.fix(i, l.name + " reads its input through an op the trace cannot follow");
    }
  }
  sp.tie_sum(output_sources, "");
  for (const auto& s : output_sources) sp.fix(sp.of(s.source), "feeds the model output");
  sp.fix(n, "holds the model input");
  for (int src : w.opaque_sources) {
    std::string ops;
    for (const auto& o : w.opaque_ops) ops += (ops.empty() ? "" : ", ") + o;
    sp.fix(sp.of(src), "read through an op the trace cannot follow (" + ops + ")");
  }
  return sp;
}

// Groups in trace order (one per connected set of spaces), their members, roots and flags;
// returns the group of each union-find root.
std::map<int, int> number_groups(ChannelGraph& g, Spaces& sp) {
  const int n = sp.n;
  std::map<int, int> group_of_root;
  auto group_id = [&](int space) {
    const int r = sp.uf.find(space);
    auto it = group_of_root.find(r);
    if (it != group_of_root.end()) return it->second;
    const int id = int(g.groups.size());
    group_of_root[r] = id;
    ChannelGroup grp;
    grp.id = id;
    g.groups.push_back(grp);
    return id;
  };
  for (int i = 0; i < n; ++i) {
    GraphLayer& l = g.layers[size_t(i)];
    if (l.kind == LayerKind::linear) continue;
    l.group = group_id(i);
    l.offset = sp.uf.offset(i);
    ChannelGroup& grp = g.groups[size_t(l.group)];
    grp.members.push_back(i);
    if (l.kind == LayerKind::conv || l.kind == LayerKind::grouped) grp.roots.push_back(i);
  }
  // The input joins a group only when tied to a layer output (e.g. an input added to one).
  for (auto& [r, id] : group_of_root) {
    if (sp.uf.find(n) == r) g.groups[size_t(id)].has_input = true;
  }
  for (int space = 0; space <= n; ++space) {
    if (space < n && g.layers[size_t(space)].kind == LayerKind::linear) continue;
    auto it = group_of_root.find(sp.uf.find(space));
    if (it == group_of_root.end()) continue;
    ChannelGroup& grp = g.groups[size_t(it->second)];
    if (sp.residual.count(space)) grp.residual = true;
    if (sp.fixed.count(space) && grp.removable) {
      grp.removable = false;
      grp.why_fixed = sp.fixed_why.at(space);
    }
  }
  return group_of_root;
}

// Consumers: the dense convs and Linear layers that read a group.
void find_consumers(ChannelGraph& g, Spaces& sp, const std::map<int, int>& group_of_root) {
  for (int i = 0; i < sp.n; ++i) {
    const GraphLayer& l = g.layers[size_t(i)];
    if (l.kind != LayerKind::conv && l.kind != LayerKind::linear) continue;
    if (l.inputs.empty()) continue;
    const int sp0 = sp.of(l.inputs[0].source);
    auto it = group_of_root.find(sp.uf.find(sp0));
    if (it == group_of_root.end()) continue;  // reads only the model input
    Consumer c;
    c.layer = i;
    c.offset = l.inputs[0].offset - sp.uf.offset(sp0);
    c.spatial = l.inputs[0].spatial;
    if (l.inputs.size() == 1) {
      c.from = l.inputs[0].source;
      c.path = l.inputs[0].path;
    }
    g.groups[size_t(it->second)].consumers.push_back(c);
  }
}

// Widths and the remaining removability conditions of each group.
void finish_groups(ChannelGraph& g) {
  for (ChannelGroup& grp : g.groups) {
    int64_t lo = 0, hi = 0;
    bool first = true, aligned = true;
    for (int m : grp.members) {
      const GraphLayer& l = g.layers[size_t(m)];
      if (l.offset != 0) aligned = false;
      lo = first ? l.offset : std::min(lo, l.offset);
      hi = first ? l.offset + l.out_channels : std::max(hi, l.offset + l.out_channels);
      if (!first && l.out_channels != grp.channels) aligned = false;
      grp.channels = l.out_channels;
      first = false;
    }
    for (const Consumer& c : grp.consumers) {
      const GraphLayer& l = g.layers[size_t(c.layer)];
      if (c.offset != 0 ||
          l.in_channels != grp.channels * (l.kind == LayerKind::linear ? c.spatial : 1)) {
        aligned = false;
      }
    }
    grp.channels = hi - lo;
    if (grp.has_input && grp.removable) {
      grp.removable = false;
      grp.why_fixed = "holds the model input";
    }
    if (!aligned && grp.removable) {
      grp.removable = false;
      grp.why_fixed = "channels are shifted by pad_channels (option-A shortcut)";
    }
  }
}

}  // namespace

ChannelGraph trace_channel_graph(layers::Module& model, const Shape& sample_hwc) {
  LOWBIT_CHECK_INPUT(
      sample_hwc.size() == 3 && sample_hwc[0] > 0 && sample_hwc[1] > 0 && sample_hwc[2] > 0,
      "trace_channel_graph: the sample shape must be {H, W, C}, got ", shape_str(sample_hwc));
  TraceMode mode(model);
  // One forward of a zero sample, recording the layer calls.
  TraceRecorder rec;
  Tensor x = zeros({1, sample_hwc[0], sample_hwc[1], sample_hwc[2]},
                   TensorOptions(DType::f32, model.device()));
  x.requires_grad_(true);
  Tensor y;
  {
    layers::RecordForward guard(&rec);
    y = model.forward(x);
  }
  LOWBIT_CHECK_INPUT(y.defined() && y.requires_grad(),
                     "trace_channel_graph: the model output does not depend on its input");

  ChannelGraph g;
  g.sample_hwc = sample_hwc;
  Walker w;
  std::vector<Tensor> layer_inputs;
  collect_layers(model, rec, g, w, layer_inputs);
  const Key kx = key_of(x);
  w.source_of[kx] = -1;
  w.shape_of[kx] = x.shape();
  record_shapes(y, w);
  // Inputs of every layer and of the output, as paths back to their sources (forward order).
  for (size_t i = 0; i < g.layers.size(); ++i) g.layers[i].inputs = w.walk(key_of(layer_inputs[i]));
  const std::vector<ChannelSource> output_sources = w.walk(key_of(y));

  Spaces sp = tie_channel_spaces(g, w, output_sources);
  const std::map<int, int> group_of_root = number_groups(g, sp);
  find_consumers(g, sp, group_of_root);
  finish_groups(g);
  return g;
}

std::optional<double> constant_through(double v, const std::vector<std::string>& path) {
  for (size_t i = 0; i < path.size(); ++i) {
    const std::string& op = path[i];
    if (op == "relu") {
      v = std::max(v, 0.0);
    } else if (op == "relu6") {
      v = std::min(std::max(v, 0.0), 6.0);
    } else if (op == "sum") {
      // The mean of global average pooling: sum over H x W then a scale (checked as next op).
      if (i + 1 >= path.size() || path[i + 1] != "mul_scalar") return std::nullopt;
      ++i;
    } else if (op == "max_pool2d" || op == "avg_pool2d" || op == "view" || op == "clone" ||
               op == "to") {
      // A constant map stays constant (interior of padded average pools: docs/methods.md, "PfQ"
      // border).
    } else {
      return std::nullopt;
    }
  }
  return v;
}

Tensor activation_through(const Tensor& x, const std::vector<std::string>& path) {
  Tensor y = x;
  for (const std::string& op : path) {
    if (op == "relu")
      y = relu(y);
    else if (op == "relu6")
      y = layers::relu6(y);
  }
  return y;
}

}  // namespace lowbit::prune
