// The global Philox generators, one per device. A draw uses (seed, offset) and advances the
// offset by one, so the n-th random tensor of a run is the same on every backend and a
// checkpoint can save and restore the state (seed, offset) exactly.
#pragma once

#include <cstdint>
#include <mutex>

#include "core/device.h"

namespace lowbit {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0x1234abcdULL) : seed_(seed) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  void set_state(uint64_t seed, uint64_t offset) {
    std::lock_guard<std::mutex> lock(mu_);
    seed_ = seed;
    offset_ = offset;
  }
  // Reserves one draw: returns the offset to use and advances.
  uint64_t next_offset() {
    std::lock_guard<std::mutex> lock(mu_);
    return offset_++;
  }

 private:
  std::mutex mu_;
  uint64_t seed_;
  uint64_t offset_ = 0;
};

Generator& default_generator(Device device);
// Seeds every device's generator and resets its offset.
void manual_seed(uint64_t seed);

}  // namespace lowbit
