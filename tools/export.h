// `lowbit export CONFIG --checkpoint F --format int|onnx [--out DIR]`: writes a trained model in
// a deployable form and checks it against lowbit's own (fake-quant) evaluation (docs/export.md).
#pragma once

#include <ostream>

namespace lowbit::tools {

extern const char* const kExportHelp;

// argv[1] is "export". Throws InputError for bad arguments, configs, checkpoints, models without
// the requested form and unwritable outputs; writes nothing at DIR unless it succeeds.
int run_export(int argc, char** argv, std::ostream& out);

}  // namespace lowbit::tools
