// libFuzzer target: the MNIST / Fashion-MNIST IDX reader (data/idx.cpp, open_idx), raw and gzip.
// Input: u32 little-endian length L, then L bytes of the image file, then the label file (L is
// clamped to what is there). Every sample of a file that opens is read back.
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "data/dataset.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lowbit;
  const fuzz::ScratchDir& dir = fuzz::scratch();
  const size_t images_size = std::min<size_t>(fuzz::take_u32(data, size), size);
  const std::string images = dir.write("images-idx3-ubyte", data, images_size);
  const std::string labels = dir.write("labels-idx1-ubyte", data + images_size, size - images_size);
  try {
    const data::DatasetPtr ds = data::open_idx(images, labels);
    const Shape shape = ds->image_shape();
    if (ds->num_classes() < 1 || shape.size() != 3) __builtin_trap();
    for (int64_t i = 0; i < ds->size(); ++i) {
      const data::Sample s = ds->get(i);
      if (s.label < 0 || s.label >= ds->num_classes()) __builtin_trap();
      if (int64_t(s.image.size()) != shape[0] * shape[1] * shape[2]) __builtin_trap();
      if (ds->label(i) != s.label) __builtin_trap();
    }
  } catch (const InputError&) {
    // A refused file: the expected outcome for most inputs.
  }
  return 0;
}
