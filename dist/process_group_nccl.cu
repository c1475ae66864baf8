// The nccl backend of ProcessGroup (process_group.h), for CUDA tensors. Built only with CUDA;
// not yet run on a GPU (no session has had one): keep every call checked and the flow plain.
//
// One communicator per device, made by ncclCommInitRank from a unique id that rank 0 creates
// and broadcasts over the mpi group (the bootstrap). Collectives run on the group's own stream:
// it first waits for an event recorded on the caller's current stream (so the input is ready),
// the NCCL call is issued, and an event recorded after it is what Work::wait() makes the caller's
// current stream wait for. No host sync anywhere but barrier(). The Work keeps the tensor alive
// until wait() (its destructor waits when nobody did), so the caching allocator cannot hand its
// memory to the compute stream while NCCL still reads or writes it. A watchdog thread polls the
// collectives' events and NCCL's asynchronous errors (see watch()).
#include <nccl.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cuda/check.h"
#include "cuda/runtime.h"
#include "dist/process_group.h"
#include "dist/world.h"

namespace lowbit::dist {

namespace {

ncclDataType_t nccl_type(DType d, const char* collective) {
  switch (d) {
    case DType::f32:
      return ncclFloat32;
    case DType::f64:
      return ncclFloat64;
    case DType::bf16:
      return ncclBfloat16;
    case DType::f16:
      return ncclFloat16;
    case DType::i32:
      return ncclInt32;
    case DType::i64:
      return ncclInt64;
    case DType::u8:
      return ncclUint8;
    case DType::i8:
      return ncclInt8;
  }
  throw Error(
      str_cat(collective, ": dtype ", dtype_name(d), " is not supported by the nccl backend"));
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return ncclSum;
    case ReduceOp::mean:
      return ncclAvg;
    case ReduceOp::min:
      return ncclMin;
    case ReduceOp::max:
      return ncclMax;
  }
  return ncclSum;
}

// A collective in flight on the group's stream: the event after it, and the tensor it uses.
struct NcclPending {
  std::string what;
  std::chrono::steady_clock::time_point started;
  cuda::Event done;
};

class NcclWork : public Work {
 public:
  NcclWork(Tensor keep, int device, std::shared_ptr<NcclPending> pending)
      : keep_(std::move(keep)), device_(device), pending_(std::move(pending)) {}
  // A Work dropped without wait() still orders the caller's stream after the collective, so
  // the tensor's memory is not reused while NCCL uses it.
  ~NcclWork() override {
    if (keep_.defined()) {
      try {
        wait();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "lowbit: nccl: %s\n", e.what());
      }
    }
  }
  void wait() override {
    cuda::DeviceGuard guard(device_);
    cuda::current_stream(device_).wait(pending_->done);
    keep_ = Tensor();
  }

 private:
  Tensor keep_;
  int device_;
  std::shared_ptr<NcclPending> pending_;
};

class NcclGroup : public ProcessGroup {
 public:
  NcclGroup(int device, ProcessGroup& bootstrap)
      : ProcessGroup(bootstrap.rank(), bootstrap.size()), device_(device), stream_(device) {
    cuda::check_device(device);
    ncclUniqueId id;
    if (rank_ == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    Tensor bytes = empty({int64_t(sizeof(id))}, TensorOptions(DType::u8));
    std::memcpy(bytes.raw_data(), &id, sizeof(id));
    bootstrap.broadcast(bytes, 0);
    std::memcpy(&id, bytes.raw_data(), sizeof(id));
    cuda::DeviceGuard guard(device_);
    NCCL_CHECK(ncclCommInitRank(&comm_, size_, id, rank_));
    watchdog_ = std::thread([this] { watch(); });
  }
  ~NcclGroup() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    watchdog_.join();
    cuda::DeviceGuard guard(device_);
    stream_.synchronize();  // no NCCL kernel may run once the communicator is gone
    if (comm_ != nullptr) NCCL_CHECK_WARN(ncclCommDestroy(comm_));
  }

  const char* backend() const override { return "nccl"; }

  WorkPtr all_reduce_async(const Tensor& t, ReduceOp op) override {
    check(t, "all_reduce");
    detail::check_reduce(t, op);
    const ncclDataType_t type = nccl_type(t.dtype(), "all_reduce");
    return launch(t, str_cat("all_reduce(", reduce_op_name(op), ") of ", t.nbytes(), " bytes"),
                  [&](cudaStream_t s) {
                    NCCL_CHECK(ncclAllReduce(t.raw_data(), t.raw_data(), size_t(t.numel()), type,
                                             nccl_op(op), comm_, s));
                  });
  }

  void broadcast(const Tensor& t, int root) override {
    check(t, "broadcast");
    LOWBIT_CHECK(root >= 0 && root < size_, "broadcast: root ", root, " outside [0, ", size_, ")");
    const ncclDataType_t type = nccl_type(t.dtype(), "broadcast");
    launch(t, str_cat("broadcast of ", t.nbytes(), " bytes"), [&](cudaStream_t s) {
      NCCL_CHECK(
          ncclBroadcast(t.raw_data(), t.raw_data(), size_t(t.numel()), type, root, comm_, s));
    })->wait();
  }

  Tensor all_gather(const Tensor& t) override {
    check(t, "all_gather");
    const ncclDataType_t type = nccl_type(t.dtype(), "all_gather");
    Shape s{size_};
    s.insert(s.end(), t.shape().begin(), t.shape().end());
    Tensor out = empty(s, TensorOptions(t.dtype(), t.device()));
    auto work = launch(out, str_cat("all_gather of ", t.nbytes(), " bytes"), [&](cudaStream_t st) {
      NCCL_CHECK(ncclAllGather(t.raw_data(), out.raw_data(), size_t(t.numel()), type, comm_, st));
    });
    work->wait();
    return out;
  }

  void barrier() override {
    // An all-reduce of one value, waited for on the host: every rank has reached this point.
    Tensor one = zeros({1}, TensorOptions(DType::f32, Device::cuda(device_)));
    all_reduce_async(one, ReduceOp::sum)->wait();
    cuda::current_stream(device_).synchronize();
  }

 private:
  void check(const Tensor& t, const char* collective) const {
    detail::check_tensor(t, collective);
    LOWBIT_CHECK(t.is_cuda() && t.device().index == device_, collective,
                 ": the nccl group of cuda:", device_, " got a tensor on ", t.device().str());
  }

  template <typename Issue>
  WorkPtr launch(const Tensor& keep, const std::string& what, Issue issue) {
    cuda::DeviceGuard guard(device_);
    cuda::Event ready;
    ready.record(cuda::current_stream(device_));
    stream_.wait(ready);
    auto pending = std::make_shared<NcclPending>();
    pending->what = what;
    pending->started = std::chrono::steady_clock::now();
    issue(static_cast<cudaStream_t>(stream_.handle()));
    pending->done.record(stream_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_.push_back(pending);
    }
    return std::make_shared<NcclWork>(keep, device_, pending);
  }

  // The watchdog: every 100 ms, drops the finished collectives, and ends the job when the oldest
  // unfinished one has waited longer than timeout() or NCCL reports an asynchronous error (a
  // peer died: NCCL's kernels would otherwise spin forever and the next host sync hang).
  void watch() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      cv_.wait_for(lock, std::chrono::milliseconds(100));
      while (!pending_.empty() && pending_.front()->done.query()) pending_.pop_front();
      ncclResult_t async = ncclSuccess;
      const bool failed =
          ncclCommGetAsyncError(comm_, &async) != ncclSuccess || async != ncclSuccess;
      if (pending_.empty() && !failed) continue;
      const double waited = pending_.empty()
                                ? 0.0
                                : std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                                pending_.front()->started)
                                      .count();
      if (!failed && waited <= timeout()) continue;
      const std::string what =
          pending_.empty() ? std::string("a collective") : pending_.front()->what;
      ncclCommAbort(comm_);
      comm_ = nullptr;
      abort_job(
          1, failed
                 ? str_cat("error: nccl reports ", ncclGetErrorString(async), " during ", what,
                           " on cuda:", device_, "; ending the job")
                 : str_cat("error: nccl ", what, " on cuda:", device_, " has waited ", int(waited),
                           " s for the other ranks (dist.timeout_s = ", timeout(),
                           "): another rank has failed, was killed or is stuck; ending the job"));
    }
  }

  int device_;
  cuda::Stream stream_;
  ncclComm_t comm_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<NcclPending>> pending_;  // in issue order (one stream)
  bool stop_ = false;
  std::thread watchdog_;
};

}  // namespace

namespace detail {
std::unique_ptr<ProcessGroup> make_nccl_group(int device, ProcessGroup& bootstrap) {
  return std::make_unique<NcclGroup>(device, bootstrap);
}
}  // namespace detail

}  // namespace lowbit::dist
