// Quantizers as plugins: the Quantizer interface (a layers::Module), its options, and the
// registry that finds a quantizer by name. A plugin is one header and one source file in quant/
// (the build picks them up and generates the CUDA registration of its kernels) plus its test in
// tests/quant/, and registers a name with LOWBIT_REGISTER_QUANTIZER; YAML and quantize_model pick
// quantizers by that name, and nothing in the framework switches on names. docs/quantizers.md,
// "Adding a quantizer", says what a plugin must keep true and builds a worked example.
//
// A quantizer owns its learned parameters (scale, offset, clip: registered parameters, so
// optimizers and state dicts see them) and its statistics (registered buffers). forward(x)
// returns the fake-quantized x through autograd. Modes:
//   - quantizing (default): fake quantization; observers keep updating in training unless frozen.
//   - calibrating (set_calibrating): observe x / initialise learned parameters from it (the
//     init rules) and return x unchanged.
//   - disabled (set_enabled(false)): return x unchanged.
// A layer such as QConv2d owns two quantizers as children and calls them in its forward:
//   w_q = weight_quantizer_->forward(weight_);   // role=weight, per-channel along axis 0
//   x_q = input_quantizer_->forward(x);          // role=activation, per-tensor
#pragma once

#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/dispatch.h"
#include "core/registry.h"
#include "core/tensor.h"
#include "layers/module.h"
#include "quant/fake_quant.h"
#include "quant/fused.h"

namespace lowbit::quant {

// Key/value options, as a YAML mapping gives them: every value is a string until a quantizer
// reads it with the type it wants.
class QuantizerOptions {
 public:
  QuantizerOptions() = default;
  QuantizerOptions(std::initializer_list<std::pair<const std::string, std::string>> init)
      : values_(init) {}
  QuantizerOptions& set(const std::string& key, const std::string& value);
  QuantizerOptions& set(const std::string& key, const char* value);
  QuantizerOptions& set(const std::string& key, bool value);
  QuantizerOptions& set(const std::string& key, int value);
  QuantizerOptions& set(const std::string& key, int64_t value);
  QuantizerOptions& set(const std::string& key, double value);
  bool has(const std::string& key) const { return values_.count(key) > 0; }
  const std::map<std::string, std::string>& values() const { return values_; }

 private:
  std::map<std::string, std::string> values_;
};

// What a quantizer read of one option: its kind, default and allowed values, as the OptionReader
// call gave them (`lowbit quantizers` prints them; docs/quantizers.md is checked against that).
struct OptionRead {
  std::string key;
  std::string kind;                  // int, number, bool, choice, string
  std::string default_value;         // as a string ("0.01", "true", "minmax")
  std::string allowed;               // "1 to 16", "(0, 1e+30]", "auto, elements, none", ...
  std::vector<std::string> choices;  // kind choice (bool: true, false)
};

// Reads typed options for one quantizer and remembers every key it was asked about, so finish()
// can reject the keys nobody read. Every error is an InputError naming the quantizer, the key,
// the value and what is allowed.
class OptionReader {
 public:
  OptionReader(std::string quantizer, QuantizerOptions options);
  const std::string& quantizer() const { return quantizer_; }
  bool has(const std::string& key);  // counts as asked about
  std::string get_string(const std::string& key, const std::string& def);
  std::string get_choice(const std::string& key, const std::string& def,
                         const std::vector<std::string>& allowed);
  bool get_bool(const std::string& key, bool def);
  int64_t get_int(const std::string& key, int64_t def, int64_t lo, int64_t hi);
  // A finite double in [lo, hi] (open at lo / hi when lo_open / hi_open).
  double get_double(const std::string& key, double def, double lo, double hi, bool lo_open = false,
                    bool hi_open = false);
  // Throws naming the first unread key and listing the keys this quantizer reads.
  void finish() const;
  bool was_asked(const std::string& key) const { return asked_.count(key) > 0; }
  // Every option read with a get_* call, in the order first read.
  const std::vector<OptionRead>& reads() const { return reads_; }
  // An InputError "quantizer '<name>': option <key> = '<value>' <what>".
  [[noreturn]] void fail(const std::string& key, const std::string& what) const;

 private:
  std::string quantizer_;
  void note(OptionRead read);  // records the first read of a key

  QuantizerOptions options_;
  std::set<std::string> asked_;
  std::vector<OptionRead> reads_;
};

enum class QuantRole { weight, activation };
const char* role_name(QuantRole r);

// What a quantizer accepts for the options every quantizer shares; a plugin passes its own to
// the Quantizer constructor. Options that do not apply (signed for PACT) are not read, so giving
// them is an "unknown option" error.
struct QuantizerTraits {
  QuantRole default_role = QuantRole::activation;
  bool allows_weight = true;
  bool allows_activation = true;
  int64_t default_bits = 8;
  int64_t min_bits = 1;
  int64_t max_bits = 16;
  bool reads_signed = true;        // signed, narrow_range
  bool allows_per_channel = true;  // per_channel, axis (weights only); channels is always read
  bool default_per_channel = false;
  // Per-channel parameters or buffers are sized at construction, so per_channel needs the
  // channels option; quantizers without per-channel state take the size from the input.
  bool per_channel_needs_channels = true;
};

// The options every quantizer shares, after parsing.
struct QuantizerSpec {
  std::string name;  // the registry name ("lsq")
  QuantRole role = QuantRole::activation;
  int64_t bits = 8;
  bool is_signed = false;
  bool narrow_range = false;
  bool per_channel = false;
  int64_t axis = 0;      // channel axis of per-channel quantization (negative from the end)
  int64_t channels = 1;  // size of that axis (parameters have this many elements), 1 per-tensor;
                         // 0: per-channel, sized by the input (no per-channel state)
  QuantRange range;      // quant_range(bits, is_signed, narrow_range), or the quantizer's own
};

// A quantizer's integer form: scales (f32 values, held in double), zero points and code range.
struct IntegerForm {
  std::vector<double> scale;
  std::vector<int64_t> zero_point;
  QuantRange range;
};

class Quantizer : public layers::Module {
 public:
  // The fake-quantized x (its dtype and shape), differentiable, or x itself when calibrating or
  // disabled. Checks x: floating, on the quantizer's device, of `channels` along the axis.
  Tensor forward(const Tensor& x) final;
  std::string extra_repr() const override;

  const QuantizerSpec& spec() const { return spec_; }
  const std::string& name() const { return spec_.name; }
  QuantRole role() const { return spec_.role; }
  int64_t bits() const { return spec_.bits; }

  // Calibration: forward observes x (observers) or initialises learned parameters from it
  // (each quantizer's init rule in docs/methods.md, accumulated over every calibration batch) and
  // returns x unchanged.
  void set_calibrating(bool on);
  bool calibrating() const { return calibrating_; }
  // Disabled: forward returns x unchanged (a float stage of a QAT schedule).
  void set_enabled(bool on) { enabled_ = on; }
  bool enabled() const { return enabled_; }
  // Frozen ranges (docs/methods.md, "BN folding for QAT": freeze observers after some epochs):
  // observers stop updating and learned range parameters get no gradient.
  void set_frozen(bool on) { frozen_ = on; }
  bool frozen() const { return frozen_; }
  // Keeps learned parameters valid; call after every optimizer step (LSQ: s >= 1e-8, DSQ:
  // alpha in [1e-4, 0.5]). No-op for quantizers without learned parameters.
  virtual void clamp_parameters() {}
  // How many fp32 values inference needs besides the integer weights (docs/methods.md,
  // "Accounting": scales, zero-points of asymmetric quantizers, learned clip values). Default: one
  // scale per channel.
  virtual int64_t inference_scalars() const { return spec_.channels > 0 ? spec_.channels : 1; }
  // The integer form for export (docs/methods.md, "Integer inference"; docs/export.md): codes
  // q = clamp(round(x * (1/s)) + z, qmin, qmax) with one (s, z) per channel (one entry when
  // per-tensor), such that the fake-quantized value is (q - z) * s. nullopt for quantizers
  // without one (DSQ, DoReFa, PACT, ...), and while disabled or calibrating.
  virtual std::optional<IntegerForm> integer_form() { return std::nullopt; }

 protected:
  // Parses the shared options (role, bits, signed, narrow_range, per_channel, axis, channels)
  // from `r` according to `traits`; channels is accepted by every quantizer and used only for
  // per-channel quantization. Subclasses read their own options after this and must not
  // call r.finish() (the registry does).
  Quantizer(OptionReader& r, const QuantizerTraits& traits);

  // x: floating, checked against the spec. Returns the fake-quantized tensor through autograd.
  virtual Tensor quantize(const Tensor& x) = 0;
  // Called for each calibration batch (grad mode off, x detached). Default: nothing to observe.
  virtual void calibrate(const Tensor& x);
  // Called when calibration ends (set_calibrating(false) after it was on).
  virtual void end_calibration() {}
  // One line of the subclass's own options for extra_repr ("observer=ema").
  virtual std::string options_repr() const { return ""; }

  // The (outer, channels, inner) view of x for this quantizer's granularity.
  ChannelLayout layout_of(const Tensor& x) const;
  // Parameter shape: {channels} ({1} per-tensor).
  Shape param_shape() const { return {spec_.channels}; }
  // Weights: elements per parameter; activations: features per sample (numel / size(0)).
  int64_t lsq_count(const Tensor& x) const;
  // Replaces the range (quantizers with their own code range, e.g. PACT's unsigned levels).
  void set_range(QuantRange r) { spec_.range = r; }

 private:
  QuantizerSpec spec_;
  bool calibrating_ = false;
  bool enabled_ = true;
  bool frozen_ = false;
};

// An IntegerForm from a scale tensor (f32, any device) and a zero-point tensor (integer, or
// undefined for zero), with `range`.
IntegerForm make_integer_form(const Tensor& scale, const Tensor& zero_point, QuantRange range);

using QuantizerPtr = std::shared_ptr<Quantizer>;
using QuantizerFactory = std::function<QuantizerPtr(OptionReader& options)>;

// What `lowbit quantizers` prints of one quantizer: found by constructing it with each role it
// allows and with each other value of its choice and bool options (so options read only under
// some value, e.g. an observer's, are listed with that condition), and the help texts of its
// registration and of the shared options (LOWBIT_OPTION_HELP).
struct QuantizerOptionInfo {
  OptionRead read;             // kind, allowed values; default_value unused (see below)
  std::string default_weight;  // the default for role weight ("" when not read for weights)
  std::string default_activation;
  std::string condition;  // "" (always read) or "observer: ema, percentile"
  std::string help;       // "" when neither the registration nor LOWBIT_OPTION_HELP has it
};
struct QuantizerInfo {
  std::string name;
  std::string summary;  // the registration's one-line description
  std::vector<std::string> roles;
  std::vector<QuantizerOptionInfo> options;  // in the order the quantizer reads them
};
QuantizerInfo describe_quantizer(const std::string& name);

// Help texts of options that many quantizers read (role, bits, the observers' options), by key:
// registered with LOWBIT_OPTION_HELP next to the code that reads them.
Registry<std::string>& shared_option_help();
struct OptionHelpRegistrar {
  OptionHelpRegistrar(const std::string& key, const std::string& help) {
    shared_option_help().add(key, help);
  }
};

// InputError unless q's codes (spec().range) fit in its bits: the size accounting stores `bits`
// per value. create_quantizer checks every quantizer it builds.
void check_code_range(const Quantizer& q);

// Builds a registered quantizer. InputError for an unknown name (listing the known names), an
// unknown option (listing the allowed ones) or a bad value (naming key, value and what is
// allowed).
QuantizerPtr create_quantizer(const std::string& name, const QuantizerOptions& options = {});
std::vector<std::string> quantizer_names();
// Whether quantizer `name`, built with `options`, reads option `key` (e.g. PACT does not read
// "signed"); model conversion uses it to add derived options only where they are understood.
bool quantizer_reads_option(const std::string& name, const QuantizerOptions& options,
                            const std::string& key);
bool has_quantizer(const std::string& name);

// A registration: the factory, a one-line summary and the help of the quantizer's own options.
struct QuantizerRegistration {
  QuantizerRegistration(QuantizerFactory f, std::string s,
                        std::map<std::string, std::string> help = {})
      : factory(std::move(f)), summary(std::move(s)), option_help(std::move(help)) {}
  QuantizerFactory factory;
  std::string summary;
  std::map<std::string, std::string> option_help;
};
struct QuantizerRegistrar {
  QuantizerRegistrar(const std::string& name, QuantizerRegistration registration);
};

// Every quantizer in a module tree (children walked recursively; the root included).
std::vector<std::pair<std::string, QuantizerPtr>> find_quantizers(layers::Module& root);
// Mode switches and upkeep for every quantizer of a tree.
void set_calibrating(layers::Module& root, bool on);
void set_quantization_enabled(layers::Module& root, bool on);
void set_quantizers_frozen(layers::Module& root, bool on);
void clamp_quantizer_parameters(layers::Module& root);

}  // namespace lowbit::quant

// In a plugin's .cpp, with Type constructible from OptionReader&: the name, the type, a one-line
// summary and, optionally, {key, help} of each option its own code reads (options read by shared
// code, the base class or an observer, have theirs from LOWBIT_OPTION_HELP):
//   LOWBIT_REGISTER_QUANTIZER("pact", PactQuantizer, "PACT: learned clip of activations",
//                             {{"alpha", "initial clip"}, {"alpha_decay", "L2 on alpha"}});
#define LOWBIT_REGISTER_QUANTIZER(name, Type, ...)                                             \
  static ::lowbit::quant::QuantizerRegistrar LOWBIT_REGISTER_CAT(lowbit_quantizer_, __LINE__)( \
      name, ::lowbit::quant::QuantizerRegistration{                                            \
                [](::lowbit::quant::OptionReader& r) -> ::lowbit::quant::QuantizerPtr {        \
                  return std::make_shared<Type>(r);                                            \
                },                                                                             \
                __VA_ARGS__})
// Next to the code that reads a shared option: LOWBIT_OPTION_HELP("ema_constant", "...").
#define LOWBIT_OPTION_HELP(key, help)                                                             \
  static ::lowbit::quant::OptionHelpRegistrar LOWBIT_REGISTER_CAT(lowbit_option_help_, __LINE__)( \
      key, help)
