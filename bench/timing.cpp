// Per-call timing for the benchmarks: CUDA events on the device's current stream (all of them
// recorded first, read after one final synchronisation, so calls run back to back as in a
// training step), steady_clock on the CPU, whose ops return when their work is done.
#include <algorithm>
#include <chrono>
#include <vector>

#include "bench/bench.h"
#include "core/error.h"
#include "cuda/runtime.h"

namespace lowbit::bench {

void synchronize(Device device) {
  if (device.is_cuda()) cuda::current_stream(device.index).synchronize();
}

Timing time_calls(Device device, int64_t warmup, int64_t iters, const std::function<void()>& fn) {
  LOWBIT_CHECK(iters >= 1 && warmup >= 0, "time_calls: iters ", iters, " must be >= 1 and warmup ",
               warmup, " >= 0");
  for (int64_t i = 0; i < warmup; ++i) fn();
  std::vector<double> ms(size_t(iters), 0.0);
  if (device.is_cuda()) {
    cuda::Stream& stream = cuda::current_stream(device.index);
    std::vector<cuda::Event> start, stop;
    start.reserve(size_t(iters));
    stop.reserve(size_t(iters));
    for (int64_t i = 0; i < iters; ++i) {
      start.emplace_back(true);
      stop.emplace_back(true);
      start.back().record(stream);
      fn();
      stop.back().record(stream);
    }
    stream.synchronize();
    for (size_t i = 0; i < ms.size(); ++i) ms[i] = double(start[i].elapsed_ms(stop[i]));
  } else {
    for (auto& m : ms) {
      const auto t0 = std::chrono::steady_clock::now();
      fn();
      m = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    }
  }
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  const size_t n = sorted.size();
  Timing t;
  t.iters = iters;
  t.min_ms = sorted.front();
  t.median_ms = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
  return t;
}

}  // namespace lowbit::bench
