#include "models/registry.h"

#include <map>
#include <sstream>

#include "core/dispatch.h"
#include "core/error.h"

namespace lowbit::models {

namespace {
std::map<std::string, ModelFactory>& registry() {
  static std::map<std::string, ModelFactory> r;
  return r;
}
}  // namespace

ModelRegistrar::ModelRegistrar(const std::string& name, ModelFactory factory) {
  LOWBIT_CHECK(!registry().count(name), "model '", name, "' registered twice");
  registry()[name] = std::move(factory);
}

std::vector<std::string> model_names() {
  std::vector<std::string> out;
  for (auto& [k, v] : registry()) out.push_back(k);
  return out;
}

bool has_model(const std::string& name) { return registry().count(name) > 0; }

layers::ModulePtr create_model(const std::string& name, const ModelOptions& opts) {
  auto it = registry().find(name);
  if (it == registry().end()) {
    std::ostringstream os;
    for (auto& n : model_names()) os << " " << n;
    throw InputError(str_cat("unknown model '", name, "'; known models:", os.str()));
  }
  LOWBIT_CHECK_INPUT(opts.num_classes > 0 && opts.in_channels > 0 && opts.input_size > 0,
                     "model '", name, "': num_classes, in_channels and input_size must be positive");
  LOWBIT_CHECK_INPUT(opts.width_mult > 0, "model '", name, "': width_mult must be positive, got ",
                     opts.width_mult);
  return it->second(opts);
}

}  // namespace lowbit::models
