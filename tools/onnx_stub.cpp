// `lowbit export --format onnx` in a build without ONNX (tools/onnx_export.h).
#include "core/error.h"
#include "tools/onnx_export.h"

namespace lowbit::tools {

void require_onnx_support() {
  throw InputError(
      "export: this lowbit was built without ONNX support (CMake found no libonnx-dev / "
      "libprotobuf-dev); run scripts/setup.sh, configure and build again, or use --format int");
}

void export_onnx(layers::Module&, train::DataSource&, const std::filesystem::path&, int64_t,
                 nlohmann::json&) {
  require_onnx_support();
}

}  // namespace lowbit::tools
