// Per-device default generators and the CPU random kernel.
#include "core/random.h"

#include <map>
#include <memory>

#include "core/kernels.h"
#include "core/parallel.h"

namespace lowbit {

namespace {
std::mutex g_mu;
std::map<std::pair<int, int>, std::unique_ptr<Generator>>& generators() {
  static std::map<std::pair<int, int>, std::unique_ptr<Generator>> g;
  return g;
}
uint64_t g_default_seed = 0x1234abcdULL;
}  // namespace

Generator& default_generator(Device device) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto& slot = generators()[{int(device.type), device.index}];
  if (!slot) slot = std::make_unique<Generator>(g_default_seed);
  return *slot;
}

void manual_seed(uint64_t seed) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_default_seed = seed;
  for (auto& [key, gen] : generators()) gen->set_state(seed, 0);
}

namespace core {

LOWBIT_DEFINE_STUB(random_stub);

namespace {
void random_cpu(const Tensor& out, const RandomValue& rv) {
  LOWBIT_DISPATCH_ALL(out.dtype(), "random", [&] {
    scalar_t* p = static_cast<scalar_t*>(out.raw_data());
    for_each_index(out.numel(), [&](int64_t i) { p[i] = convert<scalar_t>(rv(uint64_t(i))); });
  });
}
}  // namespace
LOWBIT_REGISTER_KERNEL(random_stub, cpu, random_cpu);

}  // namespace core
}  // namespace lowbit
