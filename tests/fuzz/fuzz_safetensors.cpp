// libFuzzer target: the safetensors reader (train/safetensors.cpp, load_safetensors). The input
// is the file. Every tensor of a file that loads is read to the last byte (ASan checks the
// sizes), and its byte size must be what its dtype and shape say.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "tests/fuzz/fuzz_util.h"
#include "train/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lowbit;
  const std::string path = fuzz::scratch().write("fuzz.safetensors", data, size);
  try {
    const train::SafetensorsFile f = train::load_safetensors(path);
    volatile uint8_t sink = 0;
    for (const auto& [name, t] : f.tensors) {
      if (name.empty() || name == "__metadata__") __builtin_trap();
      if (t.nbytes() != t.numel() * int64_t(dtype_size(t.dtype()))) __builtin_trap();
      const auto* bytes = static_cast<const uint8_t*>(t.raw_data());
      for (int64_t i = 0; i < t.nbytes(); ++i) sink = sink ^ bytes[i];
    }
    (void)sink;
  } catch (const InputError&) {
    // A refused file: the expected outcome for most inputs.
  }
  return 0;
}
