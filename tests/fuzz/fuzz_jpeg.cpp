// libFuzzer target: JPEG decoding as the image-folder reader does it (data/jpeg.cpp,
// decode_jpeg on one file's bytes, and the scaled window decode of random_resized_crop on a
// window taken from the header's size). A decoded image must have the size it claims.
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
    // The lower right quarter at the smallest scale that keeps 8 x 8 pixels.
    const int64_t top = img.height / 2, left = img.width / 2;
    const data::DecodedWindow w = data::decode_jpeg_window(
        data, size, "fuzz.jpg", top, left, img.height - top, img.width - left, 8, 8);
    if (int64_t(w.image.pixels.size()) != w.image.height * w.image.width * 3) __builtin_trap();
    if (w.top < 0 || w.left < 0 || w.top + w.height > double(w.image.height) + 1e-9 ||
        w.left + w.width > double(w.image.width) + 1e-9) {
      __builtin_trap();
    }
  } catch (const InputError&) {
    // Not a JPEG, or a corrupt or truncated one: the expected outcome for most inputs.
  }
  return 0;
}
