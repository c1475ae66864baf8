// The local and mpi backends of ProcessGroup, the watchdog and the factory (process_group.h).
//
// The mpi backend owns one communication thread that makes every MPI call of the group, one job
// at a time in issue order (see the header for why the order matters). Synchronous collectives
// are jobs the caller waits for. The watchdog thread reads when the running job started and
// ends the job after timeout() seconds: a blocking MPI call cannot be cancelled, and a peer that
// died without MPI_Abort (kill -9 under srun) would otherwise leave every rank waiting forever.
#include "dist/process_group.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <thread>

#if defined(LOWBIT_WITH_MPI)
#include <mpi.h>
#endif

#include "core/error.h"
#include "core/ops.h"
#include "dist/world.h"

namespace lowbit::dist {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return "sum";
    case ReduceOp::mean:
      return "mean";
    case ReduceOp::min:
      return "min";
    case ReduceOp::max:
      return "max";
  }
  return "?";
}

namespace {

double initial_timeout() {
  const char* v = std::getenv("LOWBIT_DIST_TIMEOUT_S");
  if (!v || !*v) return 300.0;
  char* end = nullptr;
  const double t = std::strtod(v, &end);
  LOWBIT_CHECK_INPUT(end && *end == '\0' && t > 0, "LOWBIT_DIST_TIMEOUT_S='", v,
                     "': wants a number of seconds > 0");
  return t;
}

std::atomic<double>& timeout_slot() {
  static std::atomic<double> t{initial_timeout()};
  return t;
}

}  // namespace

void set_timeout(double seconds) {
  LOWBIT_CHECK_INPUT(seconds > 0, "dist.timeout_s must be > 0, got ", seconds);
  timeout_slot().store(seconds);
}

double timeout() { return timeout_slot().load(); }

namespace detail {

void check_tensor(const Tensor& t, const char* collective) {
  LOWBIT_CHECK(t.defined(), collective, ": undefined tensor");
  LOWBIT_CHECK(t.is_contiguous(), collective, ": wants a contiguous tensor, got shape ", t.shape(),
               " strides ", t.strides());
}

void check_reduce(const Tensor& t, ReduceOp op) {
  check_tensor(t, "all_reduce");
  LOWBIT_CHECK(op != ReduceOp::mean || is_floating(t.dtype()), "all_reduce: mean of a ",
               dtype_name(t.dtype()), " tensor; use sum");
}

}  // namespace detail

namespace {

// A finished collective.
class DoneWork : public Work {
 public:
  void wait() override {}
};

// A world of one: every collective is the identity.
class LocalGroup : public ProcessGroup {
 public:
  LocalGroup() : ProcessGroup(0, 1) {}
  const char* backend() const override { return "local"; }
  WorkPtr all_reduce_async(const Tensor& t, ReduceOp op) override {
    detail::check_reduce(t, op);
    return std::make_shared<DoneWork>();
  }
  void broadcast(const Tensor& t, int root) override {
    detail::check_tensor(t, "broadcast");
    LOWBIT_CHECK(root == 0, "broadcast: root ", root, " outside a world of 1");
  }
  Tensor all_gather(const Tensor& t) override {
    detail::check_tensor(t, "all_gather");
    Shape s{1};
    s.insert(s.end(), t.shape().begin(), t.shape().end());
    return t.clone().reshape(s);
  }
  void barrier() override {}
};

}  // namespace

namespace detail {
std::unique_ptr<ProcessGroup> make_local_group() { return std::make_unique<LocalGroup>(); }
}  // namespace detail

#if defined(LOWBIT_WITH_MPI)
namespace {

MPI_Datatype mpi_type(DType d, const char* collective) {
  switch (d) {
    case DType::f32:
      return MPI_FLOAT;
    case DType::f64:
      return MPI_DOUBLE;
    case DType::i32:
      return MPI_INT32_T;
    case DType::i64:
      return MPI_INT64_T;
    case DType::u8:
      return MPI_UINT8_T;
    default:
      break;
  }
  throw Error(str_cat(collective, ": the mpi backend takes f32, f64, i32, i64 and u8 tensors, got ",
                      dtype_name(d)));
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
    case ReduceOp::mean:
      return MPI_SUM;
    case ReduceOp::min:
      return MPI_MIN;
    case ReduceOp::max:
      return MPI_MAX;
  }
  return MPI_SUM;
}

// MPI counts are ints: large tensors go in pieces of at most INT_MAX elements.
template <typename Fn>
void for_chunks(const Tensor& t, Fn fn) {
  const int64_t n = t.numel(), step = std::numeric_limits<int>::max();
  char* base = static_cast<char*>(t.raw_data());
  for (int64_t off = 0; off < n; off += step)
    fn(base + off * t.element_size(), int(std::min(step, n - off)));
}

void mpi_check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw Error(str_cat(what, " failed: ", std::string(msg, size_t(len))));
}

// A job's completion, shared by the caller (through Work) and the communication thread.
struct JobState {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::exception_ptr error;
};

class MpiWork : public Work {
 public:
  explicit MpiWork(std::shared_ptr<JobState> s) : s_(std::move(s)) {}
  void wait() override {
    std::unique_lock<std::mutex> lock(s_->mu);
    s_->cv.wait(lock, [&] { return s_->done; });
    if (s_->error) std::rethrow_exception(s_->error);
  }

 private:
  std::shared_ptr<JobState> s_;
};

class MpiGroup : public ProcessGroup {
 public:
  MpiGroup() : ProcessGroup(world().rank, world().size) {
    comm_thread_ = std::thread([this] { run_jobs(); });
    watchdog_ = std::thread([this] { watch(); });
  }
  // The communication thread finishes its queue first, still watched; then the watchdog stops.
  ~MpiGroup() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    comm_thread_.join();
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_watch_ = true;
    }
    cv_.notify_all();
    watchdog_.join();
  }

  const char* backend() const override { return "mpi"; }

  WorkPtr all_reduce_async(const Tensor& t, ReduceOp op) override {
    detail::check_reduce(t, op);
    check_host(t, "all_reduce");
    const MPI_Datatype type = mpi_type(t.dtype(), "all_reduce");
    return submit(str_cat("all_reduce(", reduce_op_name(op), ") of ", t.nbytes(), " bytes"),
                  [t, type, op, this] {
                    for_chunks(t, [&](void* p, int n) {
                      mpi_check(MPI_Allreduce(MPI_IN_PLACE, p, n, type, mpi_op(op), MPI_COMM_WORLD),
                                "MPI_Allreduce");
                    });
                    if (op == ReduceOp::mean) divide(t, double(size_));
                  });
  }

  void broadcast(const Tensor& t, int root) override {
    detail::check_tensor(t, "broadcast");
    check_host(t, "broadcast");
    LOWBIT_CHECK(root >= 0 && root < size_, "broadcast: root ", root, " outside [0, ", size_, ")");
    const MPI_Datatype type = mpi_type(t.dtype(), "broadcast");
    submit(str_cat("broadcast of ", t.nbytes(), " bytes from rank ", root), [t, type, root] {
      for_chunks(t, [&](void* p, int n) {
        mpi_check(MPI_Bcast(p, n, type, root, MPI_COMM_WORLD), "MPI_Bcast");
      });
    })->wait();
  }

  Tensor all_gather(const Tensor& t) override {
    detail::check_tensor(t, "all_gather");
    check_host(t, "all_gather");
    LOWBIT_CHECK(t.numel() <= std::numeric_limits<int>::max(), "all_gather: ", t.numel(),
                 " elements per rank; the mpi backend gathers at most INT_MAX");
    const MPI_Datatype type = mpi_type(t.dtype(), "all_gather");
    Shape s{size_};
    s.insert(s.end(), t.shape().begin(), t.shape().end());
    Tensor out = empty(s, TensorOptions(t.dtype(), t.device()));
    submit(str_cat("all_gather of ", t.nbytes(), " bytes"), [t, out, type] {
      mpi_check(MPI_Allgather(t.raw_data(), int(t.numel()), type, out.raw_data(), int(t.numel()),
                              type, MPI_COMM_WORLD),
                "MPI_Allgather");
    })->wait();
    return out;
  }

  void barrier() override {
    submit("barrier", [] { mpi_check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); })->wait();
  }

 private:
  struct Job {
    std::string what;
    std::function<void()> fn;
    std::shared_ptr<JobState> state;
  };

  static void check_host(const Tensor& t, const char* collective) {
    LOWBIT_CHECK(!t.is_cuda(), collective, ": the mpi backend takes CPU tensors, got one on ",
                 t.device().str());
  }

  static void divide(const Tensor& t, double n) {
    if (t.dtype() == DType::f32) {
      float* p = t.data<float>();
      for (int64_t i = 0; i < t.numel(); ++i) p[i] = float(double(p[i]) / n);
    } else {
      double* p = t.data<double>();
      for (int64_t i = 0; i < t.numel(); ++i) p[i] /= n;
    }
  }

  WorkPtr submit(std::string what, std::function<void()> fn) {
    auto state = std::make_shared<JobState>();
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back(Job{std::move(what), std::move(fn), state});
    }
    cv_.notify_all();
    return std::make_shared<MpiWork>(state);
  }

  void run_jobs() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
        running_ = job.what;
        ++count_;
        started_ = std::chrono::steady_clock::now();
        busy_ = true;
      }
      std::exception_ptr error;
      try {
        job.fn();
      } catch (...) {
        error = std::current_exception();  // handed to the waiter, who rethrows it
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        busy_ = false;
      }
      {
        std::lock_guard<std::mutex> lock(job.state->mu);
        job.state->done = true;
        job.state->error = error;
      }
      job.state->cv.notify_all();
    }
  }

  void watch() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_watch_) {
      cv_.wait_for(lock, std::chrono::milliseconds(100));
      if (!busy_) continue;
      const double waited =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
      if (waited > timeout()) {
        abort_job(1, str_cat("error: collective #", count_, " (", running_, ") has waited ",
                             int(waited), " s for the other ranks (dist.timeout_s = ", timeout(),
                             "): another rank has failed, was killed or is stuck; ending the job"));
      }
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  bool stop_ = false;        // the communication thread: finish the queue and return
  bool stop_watch_ = false;  // the watchdog
  bool busy_ = false;
  std::string running_;
  int64_t count_ = 0;
  std::chrono::steady_clock::time_point started_;
  std::thread comm_thread_;
  std::thread watchdog_;
};

}  // namespace

namespace detail {
std::unique_ptr<ProcessGroup> make_mpi_group() { return std::make_unique<MpiGroup>(); }
}  // namespace detail
#else
namespace detail {
std::unique_ptr<ProcessGroup> make_mpi_group() {
  throw Error("the mpi backend needs a lowbit built with MPI (libopenmpi-dev)");
}
}  // namespace detail
#endif

#if !defined(LOWBIT_WITH_CUDA)
namespace detail {
std::unique_ptr<ProcessGroup> make_nccl_group(int, ProcessGroup&) {
  throw Error("the nccl backend needs a lowbit built with CUDA");
}
}  // namespace detail
#endif

namespace {

// The groups by device, created on first use. world() is initialised before this map exists, so
// MPI_Finalize (registered with atexit by world()) runs after the map's destructor at exit.
struct Groups {
  std::mutex mu;
  std::map<std::string, std::unique_ptr<ProcessGroup>> by_device;
};

Groups& groups() {
  (void)world();
  static Groups g;
  return g;
}

}  // namespace

void shutdown() {
  Groups& g = groups();
  std::lock_guard<std::mutex> lock(g.mu);
  // CUDA groups first: their communicators were bootstrapped over the mpi group.
  for (auto it = g.by_device.begin(); it != g.by_device.end();) {
    it = it->first == "cpu" || it->first == "local" ? std::next(it) : g.by_device.erase(it);
  }
  g.by_device.clear();
}

ProcessGroup& process_group(Device device) {
  Groups& all = groups();
  std::lock_guard<std::mutex> lock(all.mu);
  auto& groups = all.by_device;
  const WorldInfo& w = world();
  const std::string key = w.size == 1 ? "local" : device.is_cuda() ? device.str() : "cpu";
  auto it = groups.find(key);
  if (it != groups.end()) return *it->second;
  std::unique_ptr<ProcessGroup> g;
  if (w.size == 1) {
    g = detail::make_local_group();
  } else if (!device.is_cuda()) {
    g = detail::make_mpi_group();
  } else {
    auto cpu = groups.find("cpu");
    if (cpu == groups.end()) cpu = groups.emplace("cpu", detail::make_mpi_group()).first;
    g = detail::make_nccl_group(device.index, *cpu->second);
  }
  return *groups.emplace(key, std::move(g)).first->second;
}

}  // namespace lowbit::dist
