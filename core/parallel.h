// The CPU launch: runs f(i) for i in [0, n) on the OpenMP thread pool, serially when the work
// is too small to pay for the threads. The CUDA twin is cuda::launch_elementwise.
#pragma once

#include <cstdint>

namespace lowbit::core {

constexpr int64_t kParallelGrain = 32768;

template <typename F>
void for_each_index(int64_t n, const F& f, int64_t grain = kParallelGrain) {
  if (n <= 0) return;
  if (n < grain) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) f(i);
}

// Runs f(begin, end) over contiguous chunks of [0, n), at most one per thread.
template <typename F>
void for_each_chunk(int64_t n, const F& f, int64_t grain = kParallelGrain);

}  // namespace lowbit::core

#include <omp.h>

namespace lowbit::core {
template <typename F>
void for_each_chunk(int64_t n, const F& f, int64_t grain) {
  if (n <= 0) return;
  if (n < grain) {
    f(int64_t(0), n);
    return;
  }
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads();
    const int64_t t = omp_get_thread_num();
    const int64_t chunk = (n + threads - 1) / threads;
    const int64_t b = t * chunk;
    const int64_t e = b + chunk < n ? b + chunk : n;
    if (b < e) f(b, e);
  }
}
}  // namespace lowbit::core
