// libFuzzer target: JPEG decoding as the image-folder reader does it (data/jpeg.cpp,
// decode_jpeg on one file's bytes). A decoded image must have the size it claims.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "data/jpeg.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lowbit;
  try {
    const data::DecodedImage img = data::decode_jpeg(data, size, "fuzz.jpg");
    if (img.height < 1 || img.width < 1) __builtin_trap();
    if (int64_t(img.pixels.size()) != img.height * img.width * 3) __builtin_trap();
  } catch (const InputError&) {
    // Not a JPEG, or a corrupt or truncated one: the expected outcome for most inputs.
  }
  return 0;
}
