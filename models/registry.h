// Models by name: a registry filled by static registrars in each model's source file, so a
// config names a model ("resnet20", "mobilenet_v2") and the framework never switches on names.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/dispatch.h"
#include "layers/module.h"

namespace lowbit::models {

struct ModelOptions {
  int64_t num_classes = 10;
  int64_t in_channels = 3;
  int64_t input_size = 32;     // square inputs (H = W)
  double width_mult = 1.0;     // MobileNets
  std::string shortcut = "A";  // CIFAR ResNets: "A" (zero-pad identity) or "B" (1x1 projection)
  double dropout = 0.2;        // MobileNetV2's classifier
};

using ModelFactory = std::function<layers::ModulePtr(const ModelOptions&)>;

// Builds a registered model; throws InputError listing the known names otherwise.
layers::ModulePtr create_model(const std::string& name, const ModelOptions& opts);
std::vector<std::string> model_names();

struct ModelRegistrar {
  ModelRegistrar(const std::string& name, ModelFactory factory);
};

}  // namespace lowbit::models

#define LOWBIT_REGISTER_MODEL(name, factory)                                                 \
  static ::lowbit::models::ModelRegistrar LOWBIT_REGISTER_CAT(lowbit_model_, __LINE__)(name, \
                                                                                       factory)
