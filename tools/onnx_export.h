// ONNX export (`lowbit export --format onnx`, docs/export.md): a float model as plain ONNX, a
// quantized one with QuantizeLinear / DequantizeLinear pairs. Built when CMake finds Debian's
// libonnx-dev and libprotobuf-dev (LOWBIT_WITH_ONNX); otherwise the format is refused.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>

#include "layers/module.h"
#include "train/data_setup.h"

namespace lowbit::tools {

// InputError unless this lowbit was built with ONNX support.
void require_onnx_support();
// Writes dir/model.onnx for `model` (eval mode, CPU) and its facts into `report`.
void export_onnx(layers::Module& model, train::DataSource& data, const std::filesystem::path& dir,
                 nlohmann::json& report);

}  // namespace lowbit::tools
