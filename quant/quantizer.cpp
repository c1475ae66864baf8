// The Quantizer base (shared options, modes, forward), option parsing and the registry.
#include "quant/quantizer.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <set>
#include <sstream>

#include "core/autograd.h"
#include "core/error.h"

namespace lowbit::quant {

// --- QuantizerOptions ---------------------------------------------------------------------

QuantizerOptions& QuantizerOptions::set(const std::string& key, const std::string& value) {
  values_[key] = value;
  return *this;
}
QuantizerOptions& QuantizerOptions::set(const std::string& key, const char* value) {
  return set(key, std::string(value));
}
QuantizerOptions& QuantizerOptions::set(const std::string& key, bool value) {
  return set(key, std::string(value ? "true" : "false"));
}
QuantizerOptions& QuantizerOptions::set(const std::string& key, int value) {
  return set(key, int64_t(value));
}
QuantizerOptions& QuantizerOptions::set(const std::string& key, int64_t value) {
  return set(key, std::to_string(value));
}
QuantizerOptions& QuantizerOptions::set(const std::string& key, double value) {
  std::ostringstream os;
  os.precision(17);
  os << value;
  return set(key, os.str());
}

// --- OptionReader -------------------------------------------------------------------------

OptionReader::OptionReader(std::string quantizer, QuantizerOptions options)
    : quantizer_(std::move(quantizer)), options_(std::move(options)) {}

bool OptionReader::has(const std::string& key) {
  asked_.insert(key);
  return options_.has(key);
}

void OptionReader::note(OptionRead read) {
  for (const OptionRead& r : reads_) {
    if (r.key == read.key) return;
  }
  reads_.push_back(std::move(read));
}

namespace {
std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}
std::string number_str(double v) { return str_cat(v); }
}  // namespace

void OptionReader::fail(const std::string& key, const std::string& what) const {
  auto it = options_.values().find(key);
  const std::string value = it == options_.values().end() ? "" : it->second;
  throw InputError(
      str_cat("quantizer '", quantizer_, "': option ", key, " = '", value, "' ", what));
}

std::string OptionReader::get_string(const std::string& key, const std::string& def) {
  note({key, "string", def, "any", {}});
  if (!has(key)) return def;
  return options_.values().at(key);
}

std::string OptionReader::get_choice(const std::string& key, const std::string& def,
                                     const std::vector<std::string>& allowed) {
  note({key, "choice", def, joined(allowed), allowed});
  const std::string v = get_string(key, def);
  for (const auto& a : allowed) {
    if (a == v) return v;
  }
  fail(key, "is not allowed; allowed: " + joined(allowed));
}

bool OptionReader::get_bool(const std::string& key, bool def) {
  note({key, "bool", def ? "true" : "false", "true, false", {"true", "false"}});
  if (!has(key)) return def;
  std::string v = options_.values().at(key);
  for (char& ch : v) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  if (v == "true" || v == "1") return true;
  if (v == "false" || v == "0") return false;
  fail(key, "is not a bool; allowed: true, false");
}

int64_t OptionReader::get_int(const std::string& key, int64_t def, int64_t lo, int64_t hi) {
  note({key, "int", std::to_string(def), str_cat(lo, " to ", hi), {}});
  if (!has(key)) return def;
  const std::string& v = options_.values().at(key);
  char* end = nullptr;
  errno = 0;
  const long long parsed = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || end != v.c_str() + v.size() || errno != 0) {
    fail(key, str_cat("is not an integer; allowed: ", lo, " to ", hi));
  }
  if (parsed < lo || parsed > hi) fail(key, str_cat("is out of range; allowed: ", lo, " to ", hi));
  return int64_t(parsed);
}

double OptionReader::get_double(const std::string& key, double def, double lo, double hi,
                                bool lo_open, bool hi_open) {
  const std::string range = str_cat(lo_open ? "(" : "[", lo, ", ", hi, hi_open ? ")" : "]");
  note({key, "number", number_str(def), range, {}});
  if (!has(key)) return def;
  const std::string& v = options_.values().at(key);
  char* end = nullptr;
  const double parsed = std::strtod(v.c_str(), &end);
  if (v.empty() || end != v.c_str() + v.size() || !std::isfinite(parsed)) {
    fail(key, "is not a finite number; allowed: " + range);
  }
  if (parsed > hi || parsed < lo || (lo_open && parsed == lo) || (hi_open && parsed == hi)) {
    fail(key, "is out of range; allowed: " + range);
  }
  return parsed;
}

void OptionReader::finish() const {
  for (const auto& [key, value] : options_.values()) {
    if (asked_.count(key)) continue;
    std::ostringstream os;
    bool first = true;
    for (const auto& a : asked_) {
      os << (first ? "" : ", ") << a;
      first = false;
    }
    throw InputError(str_cat("quantizer '", quantizer_, "': unknown option '", key, "' = '", value,
                             "'; allowed options: ", os.str()));
  }
}

const char* role_name(QuantRole r) { return r == QuantRole::weight ? "weight" : "activation"; }

// --- Quantizer ----------------------------------------------------------------------------

Quantizer::Quantizer(OptionReader& r, const QuantizerTraits& traits) {
  spec_.name = r.quantizer();
  std::vector<std::string> roles;
  if (traits.allows_weight) roles.push_back("weight");
  if (traits.allows_activation) roles.push_back("activation");
  const std::string role = r.get_choice("role", role_name(traits.default_role), roles);
  spec_.role = role == "weight" ? QuantRole::weight : QuantRole::activation;
  spec_.bits = r.get_int("bits", traits.default_bits, traits.min_bits, traits.max_bits);
  if (traits.reads_signed) {
    spec_.is_signed = r.get_bool("signed", spec_.role == QuantRole::weight);
    spec_.narrow_range = r.get_bool("narrow_range", false);
  }
  // Every quantizer accepts channels (a layer may always pass its channel count); only
  // per-channel quantization uses it.
  const bool has_channels = r.has("channels");
  const int64_t channels = r.get_int("channels", 1, 1, int64_t(1) << 40);
  if (traits.allows_per_channel) {
    spec_.per_channel =
        r.get_bool("per_channel", traits.default_per_channel && spec_.role == QuantRole::weight);
    spec_.axis = r.get_int("axis", 0, -8, 7);
    if (spec_.per_channel) {
      if (spec_.role != QuantRole::weight) {
        r.fail("per_channel",
               "applies to weights only (docs/methods.md, 'Notation': activations are per-tensor)");
      }
      if (!has_channels && traits.per_channel_needs_channels) {
        r.fail("per_channel",
               "needs the option channels (the size of the channel axis, which "
               "sizes the per-channel parameters)");
      }
      spec_.channels = has_channels ? channels : 0;
    }
  }
  try {
    spec_.range = quant_range(spec_.bits, spec_.is_signed, spec_.narrow_range);
  } catch (const InputError& e) {
    throw InputError(str_cat("quantizer '", spec_.name, "': ", e.what()));
  }
}

void Quantizer::calibrate(const Tensor&) {}

Tensor Quantizer::forward(const Tensor& x) {
  LOWBIT_CHECK(x.defined(), "quantizer '", spec_.name, "': input is undefined");
  LOWBIT_CHECK(is_floating(x.dtype()), "quantizer '", spec_.name, "': input must be floating, got ",
               x.dtype());
  (void)layout_of(x);  // checks the channel axis
  if (calibrating_) {
    autograd::NoGradGuard guard;
    calibrate(x.detach());
    return x;
  }
  if (!enabled_) return x;
  return quantize(x);
}

void Quantizer::set_calibrating(bool on) {
  const bool was = calibrating_;
  calibrating_ = on;
  if (was && !on) end_calibration();
}

ChannelLayout Quantizer::layout_of(const Tensor& x) const {
  const std::string op = str_cat("quantizer '", spec_.name, "'");
  int64_t c = 1;
  if (spec_.per_channel) {
    c = spec_.channels;
    if (c == 0) {  // sized by the input
      const int64_t d = x.dim();
      LOWBIT_CHECK(spec_.axis >= -d && spec_.axis < d, op, ": axis ", spec_.axis,
                   " is out of range for an input of shape ", x.shape());
      c = x.size(spec_.axis);
    }
  }
  return channel_layout(x.shape(), spec_.axis, c, op.c_str());
}

int64_t Quantizer::lsq_count(const Tensor& x) const {
  const int64_t n = std::max<int64_t>(x.numel(), 1);
  if (spec_.role == QuantRole::weight) return std::max<int64_t>(n / layout_of(x).channels, 1);
  if (x.dim() >= 2 && x.size(0) > 0) return std::max<int64_t>(n / x.size(0), 1);
  return n;
}

std::string Quantizer::extra_repr() const {
  std::ostringstream os;
  os << spec_.name << ", role=" << role_name(spec_.role) << ", bits=" << spec_.bits << ", range=["
     << spec_.range.qmin << ", " << spec_.range.qmax << "]";
  if (spec_.per_channel) {
    os << ", per_channel, axis=" << spec_.axis;
    if (spec_.channels > 0) os << ", channels=" << spec_.channels;
  }
  const std::string extra = options_repr();
  if (!extra.empty()) os << ", " << extra;
  if (!enabled_) os << ", disabled";
  if (calibrating_) os << ", calibrating";
  if (frozen_) os << ", frozen";
  return os.str();
}

// --- registry -----------------------------------------------------------------------------

namespace {
std::map<std::string, QuantizerRegistration>& registry() {
  static std::map<std::string, QuantizerRegistration> r;
  return r;
}
}  // namespace

QuantizerRegistrar::QuantizerRegistrar(const std::string& name,
                                       QuantizerRegistration registration) {
  LOWBIT_CHECK(!registry().count(name), "quantizer '", name, "' registered twice");
  registry().emplace(name, std::move(registration));
}

Registry<std::string>& shared_option_help() {
  static Registry<std::string> r("option help");
  return r;
}

LOWBIT_OPTION_HELP("role",
                   "what the quantizer quantizes (layers set it: weight for weights, "
                   "activation for inputs)");
LOWBIT_OPTION_HELP("bits", "bits per value; the codes (levels) fit in them");
LOWBIT_OPTION_HELP("signed", "signed codes -2^(b-1)..2^(b-1)-1, else unsigned 0..2^b-1");
LOWBIT_OPTION_HELP("narrow_range", "signed only: drop the code -2^(b-1) (a symmetric range)");
LOWBIT_OPTION_HELP("channels",
                   "size of the channel axis (layers pass it); sizes per-channel "
                   "parameters, unused per-tensor");
LOWBIT_OPTION_HELP("per_channel", "weights only: one scale (parameter) per channel along axis");
LOWBIT_OPTION_HELP("axis",
                   "the channel axis of per_channel, negative from the end (0: KRSC "
                   "output channel)");

namespace {

// Builds quantizer `name` with `options` and returns what it read; nullopt when the options are
// refused (a probe of describe_quantizer).
std::optional<std::vector<OptionRead>> probe(const std::string& name,
                                             const QuantizerOptions& options) {
  OptionReader reader(name, options);
  try {
    registry().at(name).factory(reader);
  } catch (const InputError&) {
    return std::nullopt;
  }
  return reader.reads();
}

}  // namespace

QuantizerInfo describe_quantizer(const std::string& name) {
  if (!registry().count(name)) create_quantizer(name);  // throws naming the known ones
  const QuantizerRegistration& reg = registry().at(name);
  QuantizerInfo info;
  info.name = name;
  info.summary = reg.summary;
  auto base = probe(name, {});
  LOWBIT_CHECK(base.has_value(), "quantizer '", name, "' refuses its default options");
  for (const OptionRead& r : *base) {
    if (r.key == "role") info.roles = r.choices;
  }
  std::map<std::string, size_t> index;  // key -> position in info.options
  // key -> (choice key -> the values under which it is read), for keys not always read
  std::map<std::string, std::map<std::string, std::set<std::string>>> only_with;
  auto add = [&](const OptionRead& r, const std::string& role) {
    auto it = index.find(r.key);
    if (it == index.end()) {
      QuantizerOptionInfo o;
      o.read = r;
      o.read.default_value.clear();
      auto own = reg.option_help.find(r.key);
      if (own != reg.option_help.end()) {
        o.help = own->second;
      } else if (shared_option_help().has(r.key)) {
        o.help = shared_option_help().get(r.key);
      }
      it = index.emplace(r.key, info.options.size()).first;
      info.options.push_back(o);
    }
    std::string& def = role == "weight" ? info.options[it->second].default_weight
                                        : info.options[it->second].default_activation;
    if (def.empty()) def = r.default_value;
  };
  for (const std::string& role : info.roles) {
    auto reads = probe(name, {{"role", role}});
    if (!reads) continue;
    for (const OptionRead& r : *reads) add(r, role);
    // Options read under some values of a choice or bool option only (an observer's options).
    for (const OptionRead& c : *reads) {
      if (c.key == "role" || c.choices.empty()) continue;
      std::map<std::string, std::set<std::string>> read_with;  // key -> values of c
      size_t probes = 0;
      for (const std::string& v : c.choices) {
        auto more = probe(name, {{"role", role}, {c.key, v}});
        if (!more) continue;
        ++probes;
        for (const OptionRead& m : *more) {
          read_with[m.key].insert(v);
          add(m, role);
        }
      }
      for (const auto& [key, values] : read_with) {
        if (values.size() < probes) {
          only_with[key][c.key].insert(values.begin(), values.end());
        }
      }
    }
  }
  for (QuantizerOptionInfo& o : info.options) {
    auto it = only_with.find(o.read.key);
    if (it == only_with.end()) continue;
    for (const auto& [choice, values] : it->second) {
      // In the order the choice lists its values.
      std::vector<std::string> ordered;
      for (const QuantizerOptionInfo& c : info.options) {
        if (c.read.key != choice) continue;
        for (const std::string& v : c.read.choices) {
          if (values.count(v)) ordered.push_back(v);
        }
      }
      o.condition += (o.condition.empty() ? "" : "; ") + choice + ": " + joined(ordered);
    }
  }
  return info;
}

std::vector<std::string> quantizer_names() {
  std::vector<std::string> out;
  for (const auto& kv : registry()) out.push_back(kv.first);
  return out;
}

bool has_quantizer(const std::string& name) { return registry().count(name) > 0; }

QuantizerPtr create_quantizer(const std::string& name, const QuantizerOptions& options) {
  auto it = registry().find(name);
  if (it == registry().end()) {
    std::ostringstream os;
    bool first = true;
    for (const auto& n : quantizer_names()) {
      os << (first ? "" : ", ") << n;
      first = false;
    }
    throw InputError(str_cat("unknown quantizer '", name, "'; known quantizers: ", os.str()));
  }
  OptionReader reader(name, options);
  QuantizerPtr q = it->second.factory(reader);
  reader.finish();
  check_code_range(*q);
  return q;
}

void check_code_range(const Quantizer& q) {
  const QuantRange r = q.spec().range;
  const int64_t levels = r.qmax - r.qmin + 1;
  if (levels > (int64_t(1) << q.bits())) {
    throw InputError(str_cat("quantizer '", q.name(), "': its codes ", r.qmin, "..", r.qmax,
                             " are ", levels, " levels, more than bits = ", q.bits(), " can hold (",
                             int64_t(1) << q.bits(),
                             "): the size accounting stores bits per value; the quantizer must "
                             "set a code range (set_range) that fits its bits"));
  }
}

bool quantizer_reads_option(const std::string& name, const QuantizerOptions& options,
                            const std::string& key) {
  auto it = registry().find(name);
  if (it == registry().end()) create_quantizer(name, options);  // throws naming the known ones
  OptionReader reader(name, options);
  it->second.factory(reader);
  return reader.was_asked(key);
}

// --- tree helpers -------------------------------------------------------------------------

namespace {
void collect_quantizers(const std::string& prefix, const layers::Module& m,
                        std::vector<std::pair<std::string, QuantizerPtr>>* out) {
  for (const auto& [name, child] : m.named_children()) {
    const std::string full = prefix.empty() ? name : prefix + "." + name;
    if (auto q = std::dynamic_pointer_cast<Quantizer>(child)) out->emplace_back(full, q);
    collect_quantizers(full, *child, out);
  }
}
}  // namespace

std::vector<std::pair<std::string, QuantizerPtr>> find_quantizers(layers::Module& root) {
  std::vector<std::pair<std::string, QuantizerPtr>> out;
  if (auto self = std::dynamic_pointer_cast<Quantizer>(root.weak_from_this().lock())) {
    out.emplace_back("", self);
  }
  collect_quantizers("", root, &out);
  return out;
}

void set_calibrating(layers::Module& root, bool on) {
  for (auto& [name, q] : find_quantizers(root)) q->set_calibrating(on);
}
void set_quantization_enabled(layers::Module& root, bool on) {
  for (auto& [name, q] : find_quantizers(root)) q->set_enabled(on);
}
void set_quantizers_frozen(layers::Module& root, bool on) {
  for (auto& [name, q] : find_quantizers(root)) q->set_frozen(on);
}
void clamp_quantizer_parameters(layers::Module& root) {
  for (auto& [name, q] : find_quantizers(root)) q->clamp_parameters();
}

IntegerForm make_integer_form(const Tensor& scale, const Tensor& zero_point, QuantRange range) {
  IntegerForm f;
  f.range = range;
  const Tensor s = scale.detach().to(Device::cpu(), DType::f64).contiguous();
  f.scale.assign(s.data<double>(), s.data<double>() + s.numel());
  if (zero_point.defined()) {
    const Tensor z = zero_point.detach().to(Device::cpu(), DType::i64).contiguous();
    f.zero_point.assign(z.data<int64_t>(), z.data<int64_t>() + z.numel());
  } else {
    f.zero_point.assign(f.scale.size(), 0);
  }
  return f;
}

}  // namespace lowbit::quant
