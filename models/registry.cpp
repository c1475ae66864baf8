#include "models/registry.h"

#include "core/dispatch.h"
#include "core/error.h"
#include "core/registry.h"

namespace lowbit::models {

namespace {
Registry<ModelFactory>& registry() {
  static Registry<ModelFactory> r("model");
  return r;
}
}  // namespace

ModelRegistrar::ModelRegistrar(const std::string& name, ModelFactory factory) {
  registry().add(name, std::move(factory));
}

std::vector<std::string> model_names() { return registry().names(); }

layers::ModulePtr create_model(const std::string& name, const ModelOptions& opts) {
  const ModelFactory& factory = registry().get(name);
  LOWBIT_CHECK_INPUT(opts.num_classes > 0 && opts.in_channels > 0 && opts.input_size > 0, "model '",
                     name, "': num_classes, in_channels and input_size must be positive");
  LOWBIT_CHECK_INPUT(opts.width_mult > 0, "model '", name, "': width_mult must be positive, got ",
                     opts.width_mult);
  return factory(opts);
}

}  // namespace lowbit::models
