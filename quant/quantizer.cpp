// The Quantizer base (shared options, modes, forward), option parsing and the registry.
#include "quant/quantizer.h"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
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

void OptionReader::fail(const std::string& key, const std::string& what) const {
  auto it = options_.values().find(key);
  const std::string value = it == options_.values().end() ? "" : it->second;
  throw InputError(
      str_cat("quantizer '", quantizer_, "': option ", key, " = '", value, "' ", what));
}

std::string OptionReader::get_string(const std::string& key, const std::string& def) {
  if (!has(key)) return def;
  return options_.values().at(key);
}

std::string OptionReader::get_choice(const std::string& key, const std::string& def,
                                     const std::vector<std::string>& allowed) {
  const std::string v = get_string(key, def);
  for (const auto& a : allowed) {
    if (a == v) return v;
  }
  std::ostringstream os;
  for (size_t i = 0; i < allowed.size(); ++i) os << (i ? ", " : "") << allowed[i];
  fail(key, "is not allowed; allowed: " + os.str());
}

bool OptionReader::get_bool(const std::string& key, bool def) {
  if (!has(key)) return def;
  std::string v = options_.values().at(key);
  for (char& ch : v) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  if (v == "true" || v == "1") return true;
  if (v == "false" || v == "0") return false;
  fail(key, "is not a bool; allowed: true, false");
}

int64_t OptionReader::get_int(const std::string& key, int64_t def, int64_t lo, int64_t hi) {
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
                                bool lo_open) {
  if (!has(key)) return def;
  const std::string& v = options_.values().at(key);
  char* end = nullptr;
  const double parsed = std::strtod(v.c_str(), &end);
  const std::string range = str_cat(lo_open ? "(" : "[", lo, ", ", hi, "]");
  if (v.empty() || end != v.c_str() + v.size() || !std::isfinite(parsed)) {
    fail(key, "is not a finite number; allowed: " + range);
  }
  if (parsed > hi || parsed < lo || (lo_open && parsed == lo)) {
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
        r.fail("per_channel", "applies to weights only (METHODS 1: activations are per-tensor)");
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
std::map<std::string, QuantizerFactory>& registry() {
  static std::map<std::string, QuantizerFactory> r;
  return r;
}
}  // namespace

QuantizerRegistrar::QuantizerRegistrar(const std::string& name, QuantizerFactory factory) {
  LOWBIT_CHECK(!registry().count(name), "quantizer '", name, "' registered twice");
  registry()[name] = std::move(factory);
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
  QuantizerPtr q = it->second(reader);
  reader.finish();
  return q;
}

bool quantizer_reads_option(const std::string& name, const QuantizerOptions& options,
                            const std::string& key) {
  auto it = registry().find(name);
  if (it == registry().end()) create_quantizer(name, options);  // throws naming the known ones
  OptionReader reader(name, options);
  it->second(reader);
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
