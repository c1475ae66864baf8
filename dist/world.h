// The world of processes a run belongs to: rank, size and local rank, read from the launcher
// (Open MPI's mpirun, Slurm's srun with PMIx) and from MPI itself. A process started without a
// launcher is a world of one and makes no MPI call at all, so single-process runs work exactly
// as before and on machines without MPI.
//
// MPI is initialised (MPI_Init_thread, MPI_THREAD_MULTIPLE) on the first call to world() when
// the environment says a launcher started this process (OMPI_COMM_WORLD_SIZE, PMIX_RANK or
// PMI_RANK), or when LOWBIT_DIST=mpi; LOWBIT_DIST=none forces a world of one. It is finalised
// at exit. The local rank (which GPU a rank takes) comes from OMPI_COMM_WORLD_LOCAL_RANK or
// SLURM_LOCALID, else from the ranks sharing this host (MPI_Comm_split_type).
#pragma once

#include <cstdint>
#include <string>

namespace lowbit::dist {

struct WorldInfo {
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  int local_size = 1;
  std::string launcher = "none";  // none | mpirun | srun | mpi (MPI without a known launcher)
  bool mpi = false;               // MPI was initialised (size may still be 1)
};

// The process's world, initialised on the first call (thread-safe).
const WorldInfo& world();
inline int rank() { return world().rank; }
inline int world_size() { return world().size; }
inline bool is_distributed() { return world().size > 1; }
inline bool is_root() { return world().rank == 0; }

// Whether this build can run more than one process (compiled with MPI).
bool mpi_compiled();

// "rank R: " in a world of several processes, "" alone: the prefix of every message a rank
// prints on stderr.
std::string rank_prefix();

// Ends the whole job with `code` after printing `message` (prefixed with the rank) on stderr:
// MPI_Abort in a world of several processes (the launcher then stops every rank), std::_Exit
// alone (no destructors: other threads may be inside collectives). For the CLI's main and the
// collective watchdog, never for library errors.
[[noreturn]] void abort_job(int code, const std::string& message);

}  // namespace lowbit::dist
