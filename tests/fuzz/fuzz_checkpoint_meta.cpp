// libFuzzer target: the position and RNG metadata --resume reads from a checkpoint
// (train/checkpoint_meta.cpp, parse_checkpoint_meta). Input: lines "key=value", the metadata
// strings of the checkpoint's safetensors header (the last value of a key wins). What parses must
// be a position the Trainer can use: counts >= 0, finite sums >= 0, world_size >= 1.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "core/error.h"
#include "train/checkpoint_meta.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lowbit;
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::map<std::string, std::string> meta;
  for (size_t begin = 0; begin < text.size();) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(begin, end - begin);
    const size_t eq = line.find('=');
    if (eq != std::string::npos) meta[line.substr(0, eq)] = line.substr(eq + 1);
    begin = end + 1;
  }
  try {
    const train::CheckpointMeta c = train::parse_checkpoint_meta(meta, "fuzz.safetensors");
    if (c.stage < 0 || c.epoch < 0 || c.global_epoch < 0 || c.batch < 0) __builtin_trap();
    if (c.mid_epoch && c.last_step < 0) __builtin_trap();
    for (double v : {c.loss_sum, c.correct, c.seen, c.elapsed_s}) {
      if (!std::isfinite(v) || v < 0) __builtin_trap();
    }
    if (c.world_size < 1) __builtin_trap();
  } catch (const InputError&) {
    // Refused metadata: the expected outcome for most inputs.
  }
  return 0;
}
