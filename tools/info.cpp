#include "tools/info.h"

#include <omp.h>

#include "cuda/runtime.h"

namespace lowbit::tools {

int run_info(std::ostream& out) {
  out << "lowbit " << LOWBIT_VERSION << "\n";
#if defined(LOWBIT_WITH_CUDA)
  out << "build: CUDA backend compiled in\n";
#else
  out << "build: CPU only (configured without CUDA)\n";
#endif
  out << "cpu: " << omp_get_max_threads() << " OpenMP threads, OpenBLAS GEMM\n";
  const int n = cuda::device_count();
  out << "cuda devices: " << n;
  if (n == 0) out << " (" << cuda::no_device_reason() << ")";
  out << "\n";
  for (int i = 0; i < n; ++i) {
    const cuda::DeviceInfo& d = cuda::device_info(i);
    out << "  cuda:" << i << "  " << d.name << "  sm_" << d.major << d.minor << "  "
        << d.total_memory / (1024 * 1024) << " MiB  " << d.sm_count << " SMs\n";
  }
  return 0;
}

}  // namespace lowbit::tools
