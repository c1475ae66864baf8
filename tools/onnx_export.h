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
// Writes dir/model.onnx for `model` (eval mode, CPU) and its facts into `report`, and a sample
// for scripts/onnx_check.py: the first `samples` test images (dir/sample_input.npy, f32 NCHW),
// their labels (sample_labels.npy, i64) and lowbit's logits (sample_logits.npy, f32).
// InputError, naming the layer, for what ONNX cannot express.
void export_onnx(layers::Module& model, train::DataSource& data, const std::filesystem::path& dir,
                 int64_t samples, nlohmann::json& report);

}  // namespace lowbit::tools
