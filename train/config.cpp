// YAML experiment parsing with strict validation. A Section wraps one YAML map: every read
// names its key, and finish() rejects the keys nobody read, listing the allowed ones.
#include "train/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"
#include "train/registries.h"

namespace lowbit::train {

namespace {

std::string join(const std::vector<std::string>& v) {
  std::ostringstream os;
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  return os.str();
}

class Section {
 public:
  Section(const YAML::Node& node, std::string path, const std::string& file)
      : node_(node), path_(std::move(path)), file_(file) {
    if (node_ && !node_.IsNull() && !node_.IsMap()) fail("", "must be a mapping");
  }

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw InputError(str_cat(file_, ": ", key_path(key), ": ", what));
  }
  std::string key_path(const std::string& key) const {
    if (path_.empty()) return key.empty() ? "(top level)" : key;
    return key.empty() ? path_ : path_ + "." + key;
  }
  bool has(const std::string& key) const { return node_ && node_.IsMap() && get(key); }
  // Read-only lookup: operator[] on a non-const node would insert the key.
  YAML::Node get(const std::string& key) const {
    const YAML::Node& n = node_;
    return n[key];
  }
  YAML::Node raw(const std::string& key) {
    allowed_.push_back(key);
    return has(key) ? get(key) : YAML::Node();
  }

  template <typename T>
  T scalar(const std::string& key, T def, const char* type_name) {
    YAML::Node n = raw(key);
    if (!n || n.IsNull()) return def;
    if (!n.IsScalar())
      fail(key, str_cat("wants ", type_name, ", got a ", n.IsMap() ? "mapping" : "list"));
    try {
      return n.as<T>();
    } catch (const YAML::Exception&) {
      fail(key, str_cat("wants ", type_name, ", got '", n.Scalar(), "'"));
    }
  }
  std::string str(const std::string& key, const std::string& def,
                  const std::vector<std::string>& choices = {}) {
    std::string v = scalar<std::string>(key, def, "a string");
    if (!choices.empty() && std::find(choices.begin(), choices.end(), v) == choices.end()) {
      fail(key, str_cat("'", v, "' is not allowed; allowed: ", join(choices)));
    }
    return v;
  }
  double num(const std::string& key, double def, double lo, double hi) {
    double v = scalar<double>(key, def, "a number");
    if (!(v >= lo && v <= hi)) fail(key, str_cat(v, " is out of range [", lo, ", ", hi, "]"));
    return v;
  }
  int64_t integer(const std::string& key, int64_t def, int64_t lo, int64_t hi) {
    YAML::Node n = has(key) ? get(key) : YAML::Node();
    if (n && n.IsScalar()) {
      const std::string s = n.Scalar();
      if (s.find_first_of(".eE") != std::string::npos)
        fail(key, str_cat("wants an integer, got '", s, "'"));
    }
    int64_t v = scalar<int64_t>(key, def, "an integer");
    if (v < lo || v > hi) fail(key, str_cat(v, " is out of range [", lo, ", ", hi, "]"));
    return v;
  }
  bool boolean(const std::string& key, bool def) {
    return scalar<bool>(key, def, "a boolean (true/false)");
  }
  std::vector<double> numbers(const std::string& key) {
    YAML::Node n = raw(key);
    std::vector<double> out;
    if (!n || n.IsNull()) return out;
    if (!n.IsSequence()) fail(key, "wants a list of numbers");
    for (size_t i = 0; i < n.size(); ++i) {
      try {
        out.push_back(n[i].as<double>());
      } catch (const YAML::Exception&) {
        fail(key, str_cat("item ", i, " is not a number"));
      }
    }
    return out;
  }
  Section sub(const std::string& key) { return Section(raw(key), key_path(key), file_); }
  // Keys present but never read are errors.
  void finish() const {
    if (!node_ || !node_.IsMap()) return;
    std::set<std::string> ok(allowed_.begin(), allowed_.end());
    for (auto it = node_.begin(); it != node_.end(); ++it) {
      // A list or mapping as a key ({[a]: 1}) is valid YAML but names nothing here.
      if (!it->first.IsScalar()) fail("", "has a list or mapping as a key; keys are plain names");
      const std::string k = it->first.Scalar();
      if (!ok.count(k)) {
        std::vector<std::string> sorted(ok.begin(), ok.end());
        fail(k, str_cat("unknown key; allowed here: ", join(sorted)));
      }
    }
  }

 private:
  YAML::Node node_;
  std::string path_;
  const std::string& file_;
  std::vector<std::string> allowed_;
};

const int64_t kBig = int64_t(1) << 40;

OptimizerConfig parse_optimizer(Section s, OptimizerConfig o = OptimizerConfig()) {
  o.name = s.str("name", o.name, optimizer_registry().names());
  o.lr = s.num("lr", o.lr, 0.0, 100.0);
  o.momentum = s.num("momentum", o.momentum, 0.0, 1.0);
  o.nesterov = s.boolean("nesterov", o.nesterov);
  o.weight_decay = s.num("weight_decay", o.weight_decay, 0.0, 10.0);
  o.no_decay_bn_bias = s.boolean("no_decay_bn_bias", o.no_decay_bn_bias);
  o.beta1 = s.num("beta1", o.beta1, 0.0, 1.0);
  o.beta2 = s.num("beta2", o.beta2, 0.0, 1.0);
  o.eps = s.num("eps", o.eps, 0.0, 1.0);
  if (o.nesterov && o.momentum <= 0.0) s.fail("nesterov", "needs momentum > 0");
  s.finish();
  return o;
}

ScheduleConfig parse_schedule(Section s) {
  ScheduleConfig c;
  c.name = s.str("name", c.name, schedule_registry().names());
  c.warmup_epochs = s.num("warmup_epochs", c.warmup_epochs, 0.0, 1e6);
  c.warmup_start_factor = s.num("warmup_start_factor", c.warmup_start_factor, 0.0, 1.0);
  c.step_epochs = s.num("step_epochs", c.step_epochs, 1e-6, 1e6);
  c.milestones = s.numbers("milestones");
  c.gamma = s.num("gamma", c.gamma, 0.0, 1.0);
  c.eta_min = s.num("eta_min", c.eta_min, 0.0, 100.0);
  c.pct_start = s.num("pct_start", c.pct_start, 0.0, 1.0);
  c.div_factor = s.num("div_factor", c.div_factor, 1.0, 1e9);
  c.final_div_factor = s.num("final_div_factor", c.final_div_factor, 1.0, 1e12);
  for (size_t i = 1; i < c.milestones.size(); ++i) {
    if (!(c.milestones[i] > c.milestones[i - 1])) s.fail("milestones", "must be increasing");
  }
  if (c.name == "multistep" && c.milestones.empty())
    s.fail("milestones", "multistep needs milestones");
  s.finish();
  return c;
}

StageConfig parse_stage(Section s, size_t index) {
  StageConfig st;
  st.name = s.str("name", "stage" + std::to_string(index));
  st.kind = s.str("kind", st.kind, stage_kind_registry().names());
  st.epochs = s.integer("epochs", st.epochs, 0, 100000);
  st.quantize = s.str("quantize", st.quantize, {"weights", "all"});
  if (!stage_kind_registry().get(st.kind).quantizes && s.has("quantize")) {
    s.fail("quantize", "applies to stage kinds that quantize (qat) only");
  }
  st.init = s.str("init", st.init);
  st.optimizer = parse_optimizer(s.sub("optimizer"));
  st.schedule = parse_schedule(s.sub("schedule"));
  st.label_smoothing = s.num("label_smoothing", st.label_smoothing, 0.0, 1.0);
  st.clip_grad_norm = s.num("clip_grad_norm", st.clip_grad_norm, 0.0, 1e9);
  st.accumulate_steps = s.integer("accumulate_steps", st.accumulate_steps, 1, 1 << 20);
  if (st.kind == "precrop") {
    Section p = s.sub("precrop");
    prune::PrecropOptions& o = st.precrop;
    o.method = p.str("method", o.method);
    o.score = p.str("score", o.score);
    o.budget_kind = p.str("budget_kind", o.budget_kind);
    o.budget = p.num("budget", o.budget, -1e300, 1e300);  // the range is validate()'s
    o.iterations = p.integer("iterations", o.iterations, -kBig, kBig);
    o.snip_batches = p.integer("snip_batches", o.snip_batches, -kBig, kBig);
    o.seed = uint64_t(p.integer("seed", 0, 0, kBig));
    p.finish();
    try {
      o.validate();
    } catch (const InputError& e) {  // "key: what" -> "file: stages.N.precrop.key: what"
      const std::string m = e.what();
      const size_t colon = m.find(": ");
      p.fail(m.substr(0, colon), colon == std::string::npos ? m : m.substr(colon + 2));
    }
  } else if (s.has("precrop")) {
    s.fail("precrop", "applies to kind: precrop only");
  }
  s.finish();
  return st;
}

// A quantizer choice: {quantizer: NAME, <option>: <value>, ...}. The options are validated by
// building the quantizer for `role` (InputError naming the key path otherwise).
quant::QuantizerChoice parse_quantizer_choice(const YAML::Node& n, const std::string& path,
                                              const std::string& file,
                                              const quant::QuantizerChoice& base, const char* role,
                                              bool validate) {
  quant::QuantizerChoice c = base;
  if (!n || n.IsNull()) return c;
  if (!n.IsMap())
    throw InputError(
        str_cat(file, ": ", path, ": must be a mapping like {quantizer: lsq, bits: 4}"));
  for (auto it = n.begin(); it != n.end(); ++it) {
    if (!it->first.IsScalar()) {
      throw InputError(
          str_cat(file, ": ", path, ": has a list or mapping as a key; keys are option names"));
    }
    const std::string k = it->first.Scalar();
    if (!it->second.IsScalar())
      throw InputError(str_cat(file, ": ", path, ".", k, ": wants a scalar value"));
    const std::string v = it->second.Scalar();
    if (k == "quantizer") {
      c.name = v;
    } else {
      if (k == "role" || k == "channels") {
        throw InputError(str_cat(file, ": ", path, ".", k,
                                 ": is set by the model conversion, not in the config"));
      }
      c.options.set(k, v);
    }
  }
  if (validate) {
    quant::QuantizerOptions o = c.options;
    o.set("role", role).set("channels", 1);  // channels: the conversion sets the real count
    try {
      quant::create_quantizer(c.name, o);
    } catch (const InputError& e) {
      throw InputError(str_cat(file, ": ", path, ": ", e.what()));
    }
  }
  return c;
}

quant::QuantConfig parse_quant(Section q, const std::string& file) {
  quant::QuantConfig c;
  c.weight =
      parse_quantizer_choice(q.raw("weight"), q.key_path("weight"), file, c.weight, "weight", true);
  c.activation = parse_quantizer_choice(q.raw("activation"), q.key_path("activation"), file,
                                        c.activation, "activation", true);
  c.first_last_bits = q.integer("first_last_bits", c.first_last_bits, 0, 16);
  c.fold_bn = q.boolean("fold_bn", c.fold_bn);
  c.freeze_bn_epoch = q.integer("freeze_bn_epoch", c.freeze_bn_epoch, -1, kBig);
  c.freeze_quantizers_epoch =
      q.integer("freeze_quantizers_epoch", c.freeze_quantizers_epoch, -1, kBig);
  c.calibration_batches = q.integer("calibration_batches", c.calibration_batches, 0, kBig);
  if (q.has("sat") && !q.get("sat").IsNull()) {  // docs/methods.md, "SAT"
    Section sat = q.sub("sat");
    c.sat = sat.boolean("enabled", true);
    c.sat_rescale_conv = sat.boolean("rescale_conv", c.sat_rescale_conv);
    if (c.sat_rescale_conv && !c.sat) sat.fail("rescale_conv", "needs sat.enabled: true");
    sat.finish();
  } else {
    q.raw("sat");
  }
  YAML::Node rules = q.raw("rules");
  if (rules && !rules.IsNull()) {
    if (!rules.IsSequence()) q.fail("rules", "wants a list of rules");
    for (size_t i = 0; i < rules.size(); ++i) {
      Section r(rules[i], q.key_path(str_cat("rules.", i)), file);
      quant::QuantRule rule;
      rule.match = r.str("match", "");
      rule.type = r.str("type", "", {"", "Conv2d", "Linear"});
      rule.skip = r.boolean("skip", false);
      rule.quantize_input = r.boolean("quantize_input", true);
      rule.replace = r.boolean("replace", false);
      // Rules hold option overrides; the quantizer is validated with the merged options later,
      // when the layer they apply to is converted (errors name the layer).
      quant::QuantizerChoice none;
      auto w = parse_quantizer_choice(r.raw("weight"), r.key_path("weight"), file, none, "weight",
                                      false);
      auto a = parse_quantizer_choice(r.raw("activation"), r.key_path("activation"), file, none,
                                      "activation", false);
      rule.weight_quantizer = w.name;
      rule.weight = w.options;
      rule.activation_quantizer = a.name;
      rule.activation = a.options;
      r.finish();
      c.rules.push_back(rule);
    }
  }
  q.finish();
  return c;
}

// YAML aliases (*name) make a document a graph: a node may contain itself (&a [*a]) or expand
// exponentially (nested lists of aliases, "billion laughs"). Configs need neither, and every walk
// over the tree (the checks here, --resume's config_differences) recurses, so a document deeper
// than kMaxYamlDepth or with more than kMaxYamlNodes nodes (aliases counted as expanded) is
// refused before a walk could overflow the stack or run for hours.
constexpr int kMaxYamlDepth = 64;
constexpr int64_t kMaxYamlNodes = int64_t(1) << 20;

// A key given twice in one mapping is refused (yaml-cpp keeps the first, PyYAML the last: either
// way one of the user's values would be silently ignored). Also enforces the limits above.
void refuse_duplicate_keys(const YAML::Node& node, const std::string& file, const std::string& path,
                           int depth = 0, int64_t* visited = nullptr) {
  int64_t count = 0;
  if (visited == nullptr) visited = &count;
  if (depth > kMaxYamlDepth || ++*visited > kMaxYamlNodes) {
    throw InputError(str_cat(file, ": ", path.empty() ? "(top level)" : path,
                             ": nested deeper than ", kMaxYamlDepth, " levels or more than ",
                             kMaxYamlNodes,
                             " values with aliases expanded (a recursive or exponential alias?)"));
  }
  if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) {
      refuse_duplicate_keys(node[i], file, str_cat(path, path.empty() ? "" : ".", i), depth + 1,
                            visited);
    }
    return;
  }
  if (!node.IsMap()) return;
  std::map<std::string, int> first_line;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const std::string key = it->first.Scalar();
    const int line = it->first.Mark().line + 1;
    const std::string where = path.empty() ? key : path + "." + key;
    auto [prev, fresh] = first_line.emplace(key, line);
    if (!fresh) {
      throw InputError(str_cat(file, ":", line, ": key '", where, "' appears twice (first at line ",
                               prev->second, "); remove one"));
    }
    refuse_duplicate_keys(it->first, file, where + " (key)", depth + 1, visited);
    refuse_duplicate_keys(it->second, file, where, depth + 1, visited);
  }
}

// parts[0..n) joined with dots ("(top level)" for none).
std::string join_path(const std::vector<std::string>& parts, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += (i ? "." : "") + parts[i];
  return s.empty() ? "(top level)" : s;
}

void apply_override(YAML::Node root, const std::string& file, const std::string& spec) {
  const size_t eq = spec.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw InputError(str_cat("--set '", spec, "': wants key.path=value"));
  }
  const std::string path = spec.substr(0, eq);
  YAML::Node value;
  try {
    value = YAML::Load(spec.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    throw InputError(str_cat("--set '", spec, "': the value is not valid YAML: ", e.what()));
  }
  std::vector<std::string> parts;
  std::stringstream ss(path);
  for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
  LOWBIT_CHECK_INPUT(!parts.empty(), file, ": --set '", spec, "': wants key.path=value");
  // The item a path part names in a list: a decimal index below its size.
  const auto list_index = [&](const YAML::Node& list, const std::string& p, size_t depth) {
    const std::string where = str_cat(file, ": --set ", path, ": ");
    const bool digits =
        !p.empty() && p.size() < 10 && p.find_first_not_of("0123456789") == std::string::npos;
    LOWBIT_CHECK_INPUT(digits, where, "'", join_path(parts, depth), "' is a list: '", p,
                       "' must be an item index (0 to ", list.size() == 0 ? 0 : list.size() - 1,
                       ")");
    const size_t idx = size_t(std::stoul(p));
    LOWBIT_CHECK_INPUT(idx < list.size(), where, "index ", idx, " is past the end of '",
                       join_path(parts, depth), "' (", list.size(), " items)");
    return idx;
  };
  // yaml-cpp nodes are handles: walk down by reassigning a handle, creating maps as needed.
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i < parts.size(); ++i) {
    YAML::Node cur = chain.back();
    const std::string& p = parts[i];
    LOWBIT_CHECK_INPUT(!cur.IsScalar(), file, ": --set ", path, ": '", join_path(parts, i),
                       "' is a value ('", cur.Scalar(), "'), not a mapping or list, so it has no '",
                       p, "'");
    const bool last = i + 1 == parts.size();
    if (cur.IsSequence()) {
      const size_t idx = list_index(cur, p, i);
      if (last) {
        cur[idx] = value;
      } else {
        chain.push_back(cur[idx]);
      }
    } else if (last) {
      cur[p] = value;
    } else {
      chain.push_back(cur[p]);
    }
  }
}

}  // namespace

// data: (the dataset's name from its registry; every other key range-checked).
DataConfig parse_data(Section d) {
  DataConfig dc;
  dc.dataset = d.str("dataset", dc.dataset, dataset_registry().names());
  dc.root = d.str("root", dc.root);
  dc.batch_size = d.integer("batch_size", dc.batch_size, 1, 1 << 20);
  dc.eval_batch_size = d.integer("eval_batch_size", dc.eval_batch_size, 1, 1 << 20);
  dc.num_workers = d.integer("num_workers", dc.num_workers, 0, 256);
  dc.max_train_samples = d.integer("max_train_samples", dc.max_train_samples, 0, kBig);
  dc.max_test_samples = d.integer("max_test_samples", dc.max_test_samples, 0, kBig);
  dc.random_crop_padding = d.integer("random_crop_padding", dc.random_crop_padding, 0, 1024);
  dc.hflip = d.boolean("hflip", dc.hflip);
  dc.random_resized_crop = d.boolean("random_resized_crop", dc.random_resized_crop);
  dc.scaled_decode = d.boolean("scaled_decode", dc.scaled_decode);
  dc.image_size = d.integer("image_size", dc.image_size, 0, 1 << 16);
  dc.resize = d.integer("resize", dc.resize, 0, 1 << 16);
  dc.mean = d.numbers("mean");
  dc.std = d.numbers("std");
  if (dc.mean.size() != dc.std.size())
    d.fail("std", str_cat("has ", dc.std.size(), " values but mean has ", dc.mean.size()));
  for (double v : dc.std) {
    if (!(v > 0)) d.fail("std", "values must be positive");
  }
  dc.synthetic_size = d.integer("synthetic_size", dc.synthetic_size, 1, kBig);
  dc.synthetic_hw = d.integer("synthetic_hw", dc.synthetic_hw, 1, 1 << 16);
  dc.synthetic_channels = d.integer("synthetic_channels", dc.synthetic_channels, 1, 1 << 16);
  dc.synthetic_classes = d.integer("synthetic_classes", dc.synthetic_classes, 1, 1 << 20);
  d.finish();
  return dc;
}

ModelConfig parse_model(Section m) {
  ModelConfig mc;
  mc.name = m.str("name", mc.name);
  mc.num_classes = m.integer("num_classes", mc.num_classes, 0, 1 << 24);
  mc.in_channels = m.integer("in_channels", mc.in_channels, 0, 1 << 16);
  mc.input_size = m.integer("input_size", mc.input_size, 0, 1 << 16);
  mc.width_mult = m.num("width_mult", mc.width_mult, 0.01, 16.0);
  mc.shortcut = m.str("shortcut", mc.shortcut, {"A", "B"});
  mc.dropout = m.num("dropout", mc.dropout, 0.0, 1.0);
  m.finish();
  return mc;
}

DistConfig parse_dist(Section ds) {
  DistConfig dc;
  dc.bucket_mb = ds.num("bucket_mb", dc.bucket_mb, 1e-6, 1 << 20);
  dc.timeout_s = ds.num("timeout_s", dc.timeout_s, 0.0, 1e7);
  dc.sync_bn = ds.boolean("sync_bn", dc.sync_bn);
  ds.finish();
  return dc;
}

// prune: (validated by PruneOptions::validate, messages prefixed with the file).
void parse_prune(Section p, ExperimentConfig& c) {
  prune::PruneOptions& o = c.prune;
  o.method = p.str("method", o.method);
  o.ratio = p.num("ratio", o.ratio, 0.0, 1.0);
  o.scope = p.str("scope", o.scope, {"layer", "global"});
  o.var_threshold = p.num("var_threshold", o.var_threshold, -1.0, 1e9);
  o.out_std_threshold = p.num("out_std_threshold", o.out_std_threshold, 0.0, 1e9);
  o.border = p.str("border", o.border, {"full", "exact"});
  o.constant = p.str("constant", o.constant, {"beta", "data_mean"});
  o.mode = p.str("mode", o.mode, {"structural", "mask"});
  o.residual = p.str("residual", o.residual, {"mask", "skip"});
  c.prune_calibration_batches =
      p.integer("calibration_batches", c.prune_calibration_batches, 1, kBig);
  try {
    o.validate();
  } catch (const InputError& e) {
    throw InputError(str_cat(c.file, ": prune: ", e.what()));
  }
  p.finish();
}

// ptq: (docs/config.md, docs/ptq.md).
void parse_ptq(Section p, ExperimentConfig& c) {
  PtqConfig& o = c.ptq;
  o.calibration = p.str("calibration", o.calibration, {"train", "zeroq", "noise"});
  o.calibration_images = p.integer("calibration_images", o.calibration_images, 1, kBig);
  o.weight_bits = p.integer("weight_bits", o.weight_bits, 2, 16);
  o.activation_bits = p.integer("activation_bits", o.activation_bits, 2, 16);
  o.weight_observer =
      p.str("weight_observer", o.weight_observer, {"minmax", "percentile", "mse", "kl"});
  o.activation_observer = p.str("activation_observer", o.activation_observer,
                                {"minmax", "ema", "percentile", "mse", "kl"});
  o.scheme = p.str("scheme", o.scheme, {"asymmetric", "symmetric", "symmetric_unsigned", "pow2"});
  o.per_channel = p.boolean("per_channel", o.per_channel);
  o.first_last = p.str("first_last", o.first_last, {"8bit", "float", "same"});
  o.budget = p.str("budget", o.budget);
  if (p.has("mp_bits")) {
    o.mp_bits.clear();
    for (double b : p.numbers("mp_bits")) {
      if (!(b >= 2 && b <= 16 && b == std::floor(b)))
        p.fail("mp_bits", str_cat(b, " is not a bit width in 2..16"));
      o.mp_bits.push_back(int64_t(b));
    }
    if (o.mp_bits.empty()) p.fail("mp_bits", "wants at least one bit width");
  } else {
    p.raw("mp_bits");
  }
  o.search = p.str("search", o.search, {"none", "quantune", "grid", "random"});
  o.search_budget = p.integer("search_budget", o.search_budget, 0, kBig);
  o.search_images = p.integer("search_images", o.search_images, 1, kBig);
  o.fix = p.str("fix", o.fix);
  Section z = p.sub("zeroq");
  o.zeroq.iterations = z.integer("iterations", o.zeroq.iterations, 1, 1000000);
  o.zeroq.batch_size = z.integer("batch_size", o.zeroq.batch_size, 1, 1 << 20);
  o.zeroq.batches = z.integer("batches", o.zeroq.batches, 1, 1 << 20);
  o.zeroq.lr = z.num("lr", o.zeroq.lr, 1e-12, 1e6);
  o.zeroq.init = z.str("init", o.zeroq.init, {"gaussian", "code"});
  z.finish();
  p.finish();
}

// search: (docs/config.md, "search").
SearchConfig parse_search(Section q, const std::string& file) {
  SearchConfig c;
  YAML::Node cands = q.raw("candidates");
  if (cands && !cands.IsNull()) {
    if (!cands.IsSequence() || cands.size() == 0)
      q.fail("candidates",
             "wants a non-empty list like [{quantizer: binary}, {quantizer: uniform, bits: 8}]");
    c.spec.candidates.clear();
    for (size_t i = 0; i < cands.size(); ++i) {
      const std::string path = q.key_path(str_cat("candidates.", i));
      quant::QuantizerChoice none;
      none.name = "";
      quant::QuantizerChoice ch =
          parse_quantizer_choice(cands[i], path, file, none, "weight", false);
      if (ch.name.empty()) throw InputError(str_cat(file, ": ", path, ": names no quantizer"));
      // Validated as a weight quantizer of some layer (the plan checks the real channel count).
      quant::QuantizerOptions o = ch.options;
      o.set("role", "weight").set("channels", 1);
      try {
        quant::create_quantizer(ch.name, o);
      } catch (const InputError& e) {
        throw InputError(str_cat(file, ": ", path, ": ", e.what()));
      }
      c.spec.candidates.push_back(ch);
    }
  }
  c.spec.shared_bn = q.boolean("shared_bn", c.spec.shared_bn);
  YAML::Node skip = q.raw("skip");
  if (skip && !skip.IsNull()) {
    if (!skip.IsSequence()) q.fail("skip", "wants a list of layer-name globs");
    for (size_t i = 0; i < skip.size(); ++i) c.spec.skip.push_back(skip[i].as<std::string>());
  }
  // theta: an absolute loss (0.35) or a factor of the widest model's loss ("1.1x").
  const std::string theta = q.str("theta", "1.1x");
  {
    std::string num = theta;
    const bool factor = !num.empty() && (num.back() == 'x' || num.back() == 'X');
    if (factor) num.pop_back();
    char* end = nullptr;
    const double v = std::strtod(num.c_str(), &end);
    if (num.empty() || end == nullptr || *end != '\0' || !std::isfinite(v) || !(v > 0))
      q.fail("theta", str_cat("'", theta,
                              "': wants a loss > 0 (0.35) or a factor > 0 of the "
                              "widest model's validation loss (\"1.1x\")"));
    if (factor) {
      c.theta_factor = v;
    } else {
      c.theta = v;
    }
  }
  c.theta_batches = q.integer("theta_batches", c.theta_batches, 1, kBig);
  c.val_fraction = q.num("val_fraction", c.val_fraction, 0.0, 1.0);
  if (!(c.val_fraction > 0.0 && c.val_fraction < 1.0))
    q.fail("val_fraction",
           str_cat(c.val_fraction, " leaves no ", c.val_fraction <= 0.0 ? "validation" : "training",
                   " split; wants a fraction strictly between 0 and 1"));
  c.max_samples = q.integer("max_samples", c.max_samples, 0, kBig);
  c.stable_epochs = q.integer("stable_epochs", c.stable_epochs, 1, kBig);
  c.alpha_optimizer = parse_optimizer(q.sub("alpha_optimizer"), c.alpha_optimizer);
  q.finish();
  return c;
}

// include: [files] (paths relative to the including file): each file's mapping is merged under
// the config, key by key; the config's own values win, except that quant.rules lists are joined
// with the included rules last (a mixed-precision search's choices, quant/mixed.h, win as they
// do in the config that ran the search). Included files may not include others.
YAML::Node merge_yaml(const YAML::Node& base, const YAML::Node& over, const std::string& path) {
  if (!base || base.IsNull()) return YAML::Clone(over);
  if (!over || over.IsNull()) return YAML::Clone(base);
  if (base.IsMap() && over.IsMap()) {
    YAML::Node out = YAML::Clone(base);
    for (auto it = over.begin(); it != over.end(); ++it) {
      const std::string k = it->first.Scalar();
      const YAML::Node& b = base;
      out[k] = merge_yaml(b[k], it->second, path.empty() ? k : path + "." + k);
    }
    return out;
  }
  if (path == "quant.rules" && base.IsSequence() && over.IsSequence()) {
    YAML::Node out(YAML::NodeType::Sequence);
    for (const auto& n : over) out.push_back(YAML::Clone(n));  // the config's own
    for (const auto& n : base) out.push_back(YAML::Clone(n));  // then the included
    return out;
  }
  return YAML::Clone(over);
}

void apply_includes(YAML::Node& root, const std::string& file) {
  if (!root.IsMap() || !root["include"]) return;
  YAML::Node inc = root["include"];
  if (inc.IsScalar()) {
    YAML::Node seq(YAML::NodeType::Sequence);
    seq.push_back(inc);
    inc = seq;
  }
  if (!inc.IsSequence())
    throw InputError(str_cat(file, ": include: wants a file or a list of files"));
  const std::string dir = [&] {
    const size_t slash = file.find_last_of('/');
    return slash == std::string::npos ? std::string() : file.substr(0, slash + 1);
  }();
  YAML::Node merged(YAML::NodeType::Map);
  for (size_t i = 0; i < inc.size(); ++i) {
    const std::string rel = inc[i].IsScalar() ? inc[i].Scalar() : "";
    const std::string path = !rel.empty() && rel[0] != '/' ? dir + rel : rel;
    std::ifstream in(path);
    if (rel.empty() || !in)
      throw InputError(str_cat(file, ": include.", i, ": '", rel,
                               "' cannot be opened (paths are relative to ",
                               dir.empty() ? "." : dir, ")"));
    std::stringstream ss;
    ss << in.rdbuf();
    YAML::Node n;
    try {
      n = YAML::Load(ss.str());
    } catch (const YAML::Exception& e) {
      throw InputError(str_cat(path, ": not valid YAML: ", e.what()));
    }
    if (!n || n.IsNull()) continue;
    if (!n.IsMap()) throw InputError(str_cat(path, ": an included file must be a mapping"));
    if (n["include"]) throw InputError(str_cat(path, ": an included file may not include others"));
    merged = merge_yaml(merged, n, "");
  }
  root.remove("include");
  root = merge_yaml(merged, root, "");
}

// checkpoint_every: N | "N steps" | "M min" | "M minutes" (0 = off).
void parse_checkpoint_every(Section& top, ExperimentConfig& c) {
  const std::string v = top.str("checkpoint_every", "0");
  std::istringstream in(v);
  double n = 0;
  std::string unit, rest;
  in >> n >> unit >> rest;
  const bool steps = unit.empty() || unit == "steps" || unit == "step";
  const bool minutes = unit == "min" || unit == "minutes" || unit == "minute";
  if (in.fail() && !in.eof())
    top.fail("checkpoint_every", str_cat("'", v, "': wants N, \"N steps\" or \"M min\""));
  // The bound keeps int64_t(n) defined (a UBSan report for 1e300 steps otherwise).
  if (!(n >= 0 && n <= double(kBig)) || !rest.empty() || !(steps || minutes) ||
      (steps && n != std::floor(n))) {
    top.fail("checkpoint_every",
             str_cat("'", v, "': wants N, \"N steps\" (whole steps) or \"M min\" (0 <= N, M <= ",
                     kBig, ")"));
  }
  if (steps) c.checkpoint_every_steps = int64_t(n);
  if (minutes) c.checkpoint_every_minutes = n;
}

// Every stage's kind finds the top-level section it needs.
void check_stage_sections(const ExperimentConfig& c) {
  for (size_t i = 0; i < c.stages.size(); ++i) {
    const StageKind& k = stage_kind_registry().get(c.stages[i].kind);
    if (k.needs_quant && !c.has_quant) {
      throw InputError(str_cat(c.file, ": stages.", i, ".kind: ", c.stages[i].kind,
                               " needs a top-level quant: section"));
    }
    if (k.needs_prune && !c.has_prune) {
      throw InputError(str_cat(c.file, ": stages.", i, ".kind: ", c.stages[i].kind,
                               " needs a top-level prune: section"));
    }
  }
}

ExperimentConfig parse_config(const std::string& yaml_text, const std::string& file,
                              const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    throw InputError(str_cat(file, ": not valid YAML: ", e.what()));
  }
  if (!root || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  refuse_duplicate_keys(root, file, "");
  apply_includes(root, file);
  for (const auto& o : overrides) apply_override(root, file, o);
  // An override's value may hold aliases of its own.
  if (!overrides.empty()) refuse_duplicate_keys(root, file, "");

  ExperimentConfig c;
  c.file = file;
  Section top(root, "", c.file);
  c.name = top.str("name", c.name);
  c.seed = uint64_t(top.integer("seed", 0, 0, kBig));
  c.device = top.str("device", c.device);
  if (c.device != "auto" && c.device != "cpu" && c.device != "cuda" &&
      c.device.rfind("cuda:", 0) != 0) {
    top.fail("device",
             str_cat("'", c.device, "' is not allowed; allowed: auto, cpu, cuda, cuda:N"));
  }
  c.log_interval = top.integer("log_interval", c.log_interval, 1, kBig);
  c.tensorboard = top.boolean("tensorboard", c.tensorboard);
  c.threads = top.integer("threads", c.threads, 0, 1024);
  c.amp = top.str("amp", c.amp, {"off", "bf16", "f16"});
  c.cpu_conv =
      top.str("cpu_conv", c.cpu_conv, {"auto", "direct", "winograd", "winograd_f2", "winograd_f4"});
  parse_checkpoint_every(top, c);

  c.data = parse_data(top.sub("data"));

  c.dist = parse_dist(top.sub("dist"));

  c.model = parse_model(top.sub("model"));

  YAML::Node stages = top.raw("stages");
  if (!stages || !stages.IsSequence() || stages.size() == 0) {
    top.fail("stages", "wants a non-empty list of stages");
  }
  for (size_t i = 0; i < stages.size(); ++i) {
    c.stages.push_back(parse_stage(Section(stages[i], str_cat("stages.", i), c.file), i));
  }
  if (top.has("quant") && !top.get("quant").IsNull()) {
    c.has_quant = true;
    c.quant = parse_quant(top.sub("quant"), c.file);
  } else {
    top.raw("quant");
  }
  if (top.has("prune") && !top.get("prune").IsNull()) {
    c.has_prune = true;
    parse_prune(top.sub("prune"), c);
  } else {
    top.raw("prune");
  }
  if (top.has("ptq") && !top.get("ptq").IsNull()) {
    parse_ptq(top.sub("ptq"), c);
  } else {
    top.raw("ptq");
  }
  c.search = parse_search(top.sub("search"), c.file);
  check_stage_sections(c);
  top.finish();
  YAML::Emitter out;
  out << root;
  c.raw_yaml = out.c_str();
  return c;
}

ExperimentConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  if (!in) throw InputError(str_cat(path, ": cannot open the config file"));
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str(), path, overrides);
}

namespace {

// Every leaf of a YAML tree as "key.path" -> its text (flow style for non-scalars' leaves). The
// text may come from a corrupt checkpoint: the alias limits of refuse_duplicate_keys apply, and a
// tree past them compares as "(too deep or too large)".
void flatten(const YAML::Node& n, const std::string& path, std::map<std::string, std::string>& out,
             int depth, int64_t* visited) {
  if (depth > kMaxYamlDepth || ++*visited > kMaxYamlNodes) {
    out["(config)"] = "(too deep or too large to compare)";
    return;
  }
  if (n.IsMap()) {
    for (auto it = n.begin(); it != n.end(); ++it) {
      flatten(it->second, path.empty() ? it->first.Scalar() : path + "." + it->first.Scalar(), out,
              depth + 1, visited);
    }
  } else if (n.IsSequence()) {
    for (size_t i = 0; i < n.size(); ++i) {
      flatten(n[i], str_cat(path, path.empty() ? "" : ".", i), out, depth + 1, visited);
    }
  } else {
    out[path] = n.IsNull() ? "null" : n.Scalar();
  }
}

std::map<std::string, std::string> flatten_text(const std::string& text) {
  std::map<std::string, std::string> out;
  try {
    int64_t visited = 0;
    flatten(YAML::Load(text), "", out, 0, &visited);
  } catch (const YAML::Exception&) {
    out["(config)"] = "(not valid YAML)";
  }
  return out;
}

}  // namespace

std::vector<std::string> config_differences(const std::string& before, const std::string& after) {
  const auto a = flatten_text(before), b = flatten_text(after);
  std::vector<std::string> out;
  for (const auto& [k, v] : a) {
    auto it = b.find(k);
    if (it == b.end()) {
      out.push_back(str_cat(k, ": ", v, " -> (absent)"));
    } else if (it->second != v) {
      out.push_back(str_cat(k, ": ", v, " -> ", it->second));
    }
  }
  for (const auto& [k, v] : b) {
    if (!a.count(k)) out.push_back(str_cat(k, ": (absent) -> ", v));
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace lowbit::train
