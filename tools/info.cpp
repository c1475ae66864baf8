#include "tools/info.h"

#include <omp.h>

#include "core/random.h"
#include "cuda/runtime.h"
#include "dist/world.h"
#include "quant/accounting.h"
#include "quant/convert.h"
#include "train/config.h"
#include "train/trainer.h"

namespace lowbit::tools {

namespace {
std::string n_cuda_backend() {
#if defined(LOWBIT_WITH_CUDA)
  return ", nccl (CUDA)";
#else
  return "";
#endif
}
}  // namespace

int run_info(std::ostream& out) {
  out << "lowbit " << LOWBIT_VERSION << "\n";
#if defined(LOWBIT_WITH_CUDA)
  out << "build: CUDA backend compiled in\n";
#else
  out << "build: CPU only (configured without CUDA)\n";
#endif
  out << "cpu: " << omp_get_max_threads() << " OpenMP threads, OpenBLAS GEMM\n";
  const dist::WorldInfo& w = dist::world();
  out << "dist: rank " << w.rank << " of " << w.size << " (local rank " << w.local_rank << " of "
      << w.local_size << "), launcher " << w.launcher << ", backends "
      << (w.size > 1 ? str_cat("mpi (CPU)", n_cuda_backend())
                     : std::string("local (a world of one)"))
      << (dist::mpi_compiled() ? "" : "; built without MPI") << "\n";
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

int run_info_model(const std::string& config, const std::vector<std::string>& sets,
                   std::ostream& out) {
  const train::ExperimentConfig cfg = train::load_config(config, sets);
  manual_seed(cfg.seed);
  Shape sample;
  layers::ModulePtr model = train::build_model_offline(cfg, &sample);
  out << cfg.model.name << " for input " << sample[0] << "x" << sample[1] << "x" << sample[2]
      << " (" << config << ")\n\nfloat:\n"
      << quant::account_model(*model, sample).table();
  if (cfg.has_quant) {
    Tensor probe = randn({2, sample[0], sample[1], sample[2]});
    quant::quantize_model(*model, cfg.quant, probe);
    out << "\nquantized (quant: section of the config):\n"
        << quant::account_model(*model, sample).table();
  }
  return 0;
}

}  // namespace lowbit::tools
