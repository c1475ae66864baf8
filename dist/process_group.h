// Collectives on tensors across the ranks of the world (dist/world.h), PyTorch's ProcessGroup in
// miniature. Backends: "mpi" for CPU tensors (Open MPI), "nccl" for CUDA tensors (NCCL, its
// unique id broadcast over MPI), "local" for a world of one (every collective is the identity
// and makes no library call).
//
// Order. Every rank must issue the same collectives in the same order. The mpi backend runs all
// of its collectives, synchronous and asynchronous, on one communication thread in the order
// they were issued, so a data-parallel reducer's bucket all-reduces (issued from autograd hooks
// during backward) and SyncBN's reductions (issued by BatchNorm's backward) interleave the same
// way on every rank. The nccl backend issues them, in order, on its own stream of the tensor's
// device, which waits (an event) for the work already issued on the current compute stream;
// Work::wait() makes the caller's current stream wait for the collective, with no host sync.
//
// Failure. A collective that has not finished after timeout_s (set_timeout, dist.timeout_s in
// configs, default 300 s or LOWBIT_DIST_TIMEOUT_S) means a peer rank died or hangs: the
// watchdog prints which collective waited on which rank and ends the whole job (abort_job), so
// a job never hangs. A rank that throws ends the job through the CLI's abort_job as well.
//
// Tensors are contiguous and stay where they are (in place). dtypes: f32, f64, i32, i64 and u8
// (mpi; mean only for floating types), plus i8, bf16 and f16 (nccl).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/device.h"
#include "core/tensor.h"

namespace lowbit::dist {

enum class ReduceOp { sum, mean, min, max };
const char* reduce_op_name(ReduceOp op);

// A collective in flight. wait() returns once its result may be used by the caller (CPU: the
// data is there; CUDA: the caller's current stream is ordered after it) and rethrows its error.
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
};
using WorkPtr = std::shared_ptr<Work>;

class ProcessGroup {
 public:
  ProcessGroup(int rank, int size) : rank_(rank), size_(size) {}
  virtual ~ProcessGroup() = default;
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  virtual const char* backend() const = 0;
  int rank() const { return rank_; }
  int size() const { return size_; }

  // In place: every rank ends with op over the ranks' tensors (mean = sum / size).
  virtual WorkPtr all_reduce_async(const Tensor& t, ReduceOp op) = 0;
  void all_reduce(const Tensor& t, ReduceOp op = ReduceOp::sum) { all_reduce_async(t, op)->wait(); }
  // In place: every rank ends with root's tensor.
  virtual void broadcast(const Tensor& t, int root = 0) = 0;
  // The ranks' tensors stacked: shape (size, *t.shape), on t's device; all shapes must match.
  virtual Tensor all_gather(const Tensor& t) = 0;
  // Returns once every rank has called it.
  virtual void barrier() = 0;

 protected:
  int rank_;
  int size_;
};

// The world's group for tensors on `device` (created on first use): local in a world of one,
// else mpi for the CPU and nccl for a CUDA device.
ProcessGroup& process_group(Device device);

// Destroys the groups (nccl before mpi) while the CUDA runtime and MPI are still up; the CLI calls
// it before returning from main. Later process_group() calls create them again.
void shutdown();

// Seconds a collective may wait for its peers before the watchdog ends the job.
void set_timeout(double seconds);
double timeout();

namespace detail {
// Checks what every backend wants of a tensor argument, naming the collective.
void check_tensor(const Tensor& t, const char* collective);
void check_reduce(const Tensor& t, ReduceOp op);
// Backend constructors (process_group.cpp, process_group_nccl.cu). Tests build a one-rank nccl
// group on a local bootstrap.
std::unique_ptr<ProcessGroup> make_local_group();
std::unique_ptr<ProcessGroup> make_mpi_group();
std::unique_ptr<ProcessGroup> make_nccl_group(int device, ProcessGroup& bootstrap);
}  // namespace detail

}  // namespace lowbit::dist
