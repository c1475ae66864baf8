#include "tools/quantizers.h"

#include <algorithm>

#include "core/error.h"
#include "quant/quantizer.h"

namespace lowbit::tools {

const char* const kQuantizersHelp =
    "usage: lowbit quantizers [NAME] [--markdown]\n"
    "\n"
    "Lists every registered quantizer (or NAME only): its summary, the roles it quantizes, and\n"
    "each option it reads with the values allowed, the default (per role where they differ),\n"
    "the option value it is read under (an observer's options) and what it means. Options go in\n"
    "a config's quant.weight / quant.activation mapping next to quantizer: NAME, in rules, or\n"
    "with --set (docs/config.md). --markdown prints the same as the reference section of\n"
    "docs/quantizers.md (a test checks that the doc holds exactly this).\n";

namespace {

struct Row {
  std::string key, values, def, meaning;
};

std::string values_of(const quant::OptionRead& r) {
  if (r.kind == "int") return "integer " + r.allowed;
  if (r.kind == "number") return "number in " + r.allowed;
  return r.allowed;
}

// "4", or "weight: true, activation: false", or "(weights only)" style notes.
std::string default_of(const quant::QuantizerInfo& q, const quant::QuantizerOptionInfo& o) {
  const bool w = std::count(q.roles.begin(), q.roles.end(), "weight") > 0;
  const bool a = std::count(q.roles.begin(), q.roles.end(), "activation") > 0;
  if (w && a && o.default_weight != o.default_activation) {
    if (o.default_weight.empty()) return o.default_activation + " (activations only)";
    if (o.default_activation.empty()) return o.default_weight + " (weights only)";
    return "weight " + o.default_weight + ", activation " + o.default_activation;
  }
  return o.default_weight.empty() ? o.default_activation : o.default_weight;
}

std::vector<Row> rows_of(const quant::QuantizerInfo& q) {
  std::vector<Row> rows;
  for (const auto& o : q.options) {
    Row r{o.read.key, values_of(o.read), default_of(q, o), o.help};
    if (!o.condition.empty())
      r.meaning += std::string(r.meaning.empty() ? "" : "; ") + "with " + o.condition;
    rows.push_back(r);
  }
  return rows;
}

std::string roles_of(const quant::QuantizerInfo& q) {
  std::string s;
  for (const auto& r : q.roles) s += (s.empty() ? "" : ", ") + r;
  return s;
}

void print_text(const quant::QuantizerInfo& q, std::ostream& out) {
  out << q.name << ": " << q.summary << "\n  roles: " << roles_of(q) << "\n";
  const std::vector<Row> rows = rows_of(q);
  size_t w = 0;
  for (const Row& r : rows) w = std::max(w, r.key.size());
  for (const Row& r : rows) {
    out << "  " << r.key << std::string(w - r.key.size() + 2, ' ') << r.values << "; default "
        << r.def << "\n";
    if (!r.meaning.empty()) out << "  " << std::string(w + 2, ' ') << r.meaning << "\n";
  }
}

void print_markdown(const quant::QuantizerInfo& q, std::ostream& out) {
  out << "### `" << q.name << "`\n\n" << q.summary << ". Roles: " << roles_of(q) << ".\n\n";
  out << "| option | values | default | meaning |\n| --- | --- | --- | --- |\n";
  for (const Row& r : rows_of(q)) {
    std::string meaning = r.meaning;
    // A '|' inside a cell ends it in markdown.
    for (size_t i = 0; (i = meaning.find('|', i)) != std::string::npos; i += 2) {
      meaning.replace(i, 1, "\\|");
    }
    out << "| `" << r.key << "` | " << r.values << " | " << r.def << " | " << meaning << " |\n";
  }
}

}  // namespace

int run_quantizers(const std::vector<std::string>& args, std::ostream& out) {
  bool markdown = false;
  std::vector<std::string> names;
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      out << kQuantizersHelp;
      return 0;
    }
    if (a == "--markdown") {
      markdown = true;
    } else if (!a.empty() && a[0] == '-') {
      throw InputError("quantizers: unknown option '" + a + "'; see lowbit quantizers --help");
    } else if (names.empty()) {
      names.push_back(a);
    } else {
      throw InputError("quantizers: unexpected argument '" + a + "'; give one NAME at most");
    }
  }
  if (names.empty()) names = quant::quantizer_names();
  for (size_t i = 0; i < names.size(); ++i) {
    const quant::QuantizerInfo q = quant::describe_quantizer(names[i]);  // unknown: InputError
    if (i > 0) out << "\n";
    if (markdown) {
      print_markdown(q, out);
    } else {
      print_text(q, out);
    }
  }
  return 0;
}

}  // namespace lowbit::tools
