// libFuzzer target: the CIFAR-10 / CIFAR-100 binary reader (data/cifar.cpp, open_cifar).
// Input: one flag byte (bit 0: CIFAR-100, bit 1: the file sits in the archive's subfolder), then
// the test batch file (test_batch.bin / test.bin). Every sample of a file that opens is read.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "data/dataset.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lowbit;
  if (size < 1) return 0;
  const bool c100 = (data[0] & 1) != 0;
  const bool subdir = (data[0] & 2) != 0;
  const fuzz::ScratchDir& dir = fuzz::scratch();
  dir.clear();
  const std::string folder = subdir ? (c100 ? "cifar-100-binary/" : "cifar-10-batches-bin/") : "";
  dir.write(folder + (c100 ? "test.bin" : "test_batch.bin"), data + 1, size - 1);
  try {
    const data::DatasetPtr ds =
        data::open_cifar(dir.path(), c100 ? data::CifarKind::cifar100 : data::CifarKind::cifar10,
                         /*train=*/false);
    for (int64_t i = 0; i < ds->size(); ++i) {
      const data::Sample s = ds->get(i);
      if (s.label < 0 || s.label >= ds->num_classes()) __builtin_trap();
      if (s.image.size() != 32 * 32 * 3) __builtin_trap();
    }
  } catch (const InputError&) {
    // A refused file: the expected outcome for most inputs.
  }
  return 0;
}
