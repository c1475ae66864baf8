// The world (world.h). MPI is touched only when a launcher started this process; the MPI calls
// live in this file and process_group.cpp, behind LOWBIT_WITH_MPI.
#include "dist/world.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#if defined(LOWBIT_WITH_MPI)
#include <mpi.h>
#endif

#include "core/error.h"

namespace lowbit::dist {

namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

int env_int(const char* name, int fallback) {
  const char* v = env(name);
  return v ? std::atoi(v) : fallback;
}

// Which launcher started us, from its environment ("none" when nothing says so).
std::string detect_launcher() {
  if (env("OMPI_COMM_WORLD_SIZE")) return "mpirun";
  if (env("PMIX_RANK") || env("PMI_RANK")) return env("SLURM_STEP_ID") ? "srun" : "mpi";
  return "none";
}

#if defined(LOWBIT_WITH_MPI)
void finalize_mpi() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}
#endif

WorldInfo init_world() {
  WorldInfo w;
  const char* mode = env("LOWBIT_DIST");
  const std::string forced = mode ? mode : "";
  LOWBIT_CHECK_INPUT(forced.empty() || forced == "none" || forced == "mpi", "LOWBIT_DIST='", forced,
                     "': allowed values are none (a world of one) and mpi");
  w.launcher = detect_launcher();
  const bool want_mpi = forced == "mpi" || (forced.empty() && w.launcher != "none");
  if (!want_mpi) {
    if (forced == "none") w.launcher = "none";
    return w;
  }
#if defined(LOWBIT_WITH_MPI)
  int provided = 0;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
    LOWBIT_CHECK(rc == MPI_SUCCESS, "MPI_Init_thread failed (", rc, ") under launcher ",
                 w.launcher);
    std::atexit(finalize_mpi);
  } else {
    MPI_Query_thread(&provided);
  }
  LOWBIT_CHECK(provided >= MPI_THREAD_MULTIPLE, "the MPI library gives thread level ", provided,
               ", lowbit needs MPI_THREAD_MULTIPLE (", MPI_THREAD_MULTIPLE,
               "): its communication thread and watchdog call MPI beside the main thread");
  // Errors come back as codes, which process_group.cpp turns into lowbit::Error.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm local;
  const bool ok = MPI_Comm_rank(MPI_COMM_WORLD, &w.rank) == MPI_SUCCESS &&
                  MPI_Comm_size(MPI_COMM_WORLD, &w.size) == MPI_SUCCESS &&
                  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, w.rank, MPI_INFO_NULL,
                                      &local) == MPI_SUCCESS;
  LOWBIT_CHECK(ok, "MPI could not tell this process's rank, world size or host (launcher ",
               w.launcher, ")");
  int local_rank = 0;
  MPI_Comm_rank(local, &local_rank);
  MPI_Comm_size(local, &w.local_size);
  MPI_Comm_free(&local);
  // The launcher's own numbering wins where it gives one (it is what users see in its docs);
  // SLURM_LOCALID only inside an srun step (an sbatch script's environment has it too).
  const int slurm_local = w.launcher == "srun" ? env_int("SLURM_LOCALID", local_rank) : local_rank;
  w.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", slurm_local);
  w.mpi = true;
  if (w.launcher == "none") w.launcher = "mpi";
#else
  // Started by a launcher with several ranks, but this binary cannot talk to them: refuse
  // rather than run N independent copies that each believe they are alone.
  const int n = env_int("OMPI_COMM_WORLD_SIZE", env_int("SLURM_NTASKS", 1));
  LOWBIT_CHECK_INPUT(n <= 1 && forced != "mpi", "started by ", w.launcher, " with ", n,
                     " ranks (or LOWBIT_DIST=mpi), but this lowbit was built without MPI; install"
                     " libopenmpi-dev (scripts/setup.sh) and rebuild, or run it alone");
  w.launcher = "none";
#endif
  return w;
}

}  // namespace

bool mpi_compiled() {
#if defined(LOWBIT_WITH_MPI)
  return true;
#else
  return false;
#endif
}

const WorldInfo& world() {
  static const WorldInfo w = init_world();
  return w;
}

std::string rank_prefix() {
  const WorldInfo& w = world();
  return w.size > 1 ? str_cat("rank ", w.rank, ": ") : std::string();
}

void abort_job(int code, const std::string& message) {
  // world() may be what failed (a bad LOWBIT_DIST); then there is no world to abort.
  bool several = false;
  std::string prefix;
  try {
    several = world().mpi && world().size > 1;
    prefix = rank_prefix();
  } catch (const std::exception&) {
  }
  std::string line = "lowbit: " + prefix + message;
  if (line.empty() || line.back() != '\n') line += '\n';
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
  std::fflush(stdout);
#if defined(LOWBIT_WITH_MPI)
  if (several) MPI_Abort(MPI_COMM_WORLD, code);
#else
  (void)several;
#endif
  std::_Exit(code);
}

}  // namespace lowbit::dist
