// The CPU thread count of the benchmarks. oneDNN and lowbit's loops use OpenMP; OpenBLAS (the
// Linear layers' GEMM) has its own pool, set here too so --threads means one thing.
#include <cblas.h>
#include <omp.h>

#include "bench/bench.h"
#include "core/error.h"

namespace lowbit::bench {

void set_threads(int n) {
  LOWBIT_CHECK_INPUT(n >= 1, "--threads must be at least 1, got ", n);
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int threads() { return omp_get_max_threads(); }

}  // namespace lowbit::bench
