// Devices, streams and events (cuda/runtime.h). Compiled in both builds by the C++ compiler; the
// CUDA parts sit under LOWBIT_WITH_CUDA. The per-device default streams are deliberately never
// destroyed: static destructors run after the CUDA runtime has begun unloading at exit, when
// cudaStreamDestroy would fail (PyTorch leaks its streams for the same reason).
#include "cuda/runtime.h"

#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "core/dispatch.h"
#include "core/error.h"

#if LOWBIT_WITH_CUDA
#include <cuda_runtime_api.h>

#include "cuda/check.h"
#endif

namespace lowbit::cuda {

namespace {

#if LOWBIT_WITH_CUDA
cudaStream_t as_stream(void* h) { return static_cast<cudaStream_t>(h); }
cudaEvent_t as_event(void* h) { return static_cast<cudaEvent_t>(h); }
#endif

constexpr const char* kNoCuda = core::kBuiltWithoutCuda;

struct DeviceCountState {
  int count = 0;
  std::string reason;
};

const DeviceCountState& device_count_state() {
  static const DeviceCountState state = [] {
    DeviceCountState s;
#if LOWBIT_WITH_CUDA
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
      // No driver, no device, driver too old: a CPU machine, not an error. Clear the error so
      // the next launch check does not report it.
      (void)cudaGetLastError();
      s.reason = str_cat("CUDA runtime reports no usable device: ", cudaGetErrorName(err), ": ",
                         cudaGetErrorString(err));
      n = 0;
    } else if (n == 0) {
      s.reason = "CUDA runtime reports 0 devices";
    }
    s.count = n;
#else
    s.reason = kNoCuda;
#endif
    return s;
  }();
  return state;
}

// The lowbit-created default stream of each device, created on first use and never destroyed
// (see the top of the file).
struct DefaultStreams {
  std::mutex mu;
  std::vector<std::unique_ptr<Stream>> streams;
};
DefaultStreams& default_streams() {
  static DefaultStreams* d = new DefaultStreams();  // leaked on purpose
  return *d;
}

Stream& default_stream(int device) {
  DefaultStreams& d = default_streams();
  std::lock_guard<std::mutex> lock(d.mu);
  if (d.streams.empty()) d.streams.resize(size_t(device_count()));
  std::unique_ptr<Stream>& s = d.streams[size_t(device)];
  if (!s) s = std::make_unique<Stream>(device);
  return *s;
}

// Per thread: the StreamGuard-selected stream of each device (null = default) and a cache of
// the default streams, so current_stream() takes the lock once per thread and device.
thread_local std::vector<Stream*> t_current;
thread_local std::vector<Stream*> t_default;

}  // namespace

int device_count() { return device_count_state().count; }

std::string no_device_reason() { return device_count_state().reason; }

void check_device(int device) {
  int n = device_count();
  LOWBIT_CHECK(device >= 0 && device < n, "CUDA device index ", device, " is out of range: ", n,
               " device(s) available", n == 0 ? str_cat(" (", no_device_reason(), ")") : "");
}

const DeviceInfo& device_info(int device) {
  check_device(device);
#if LOWBIT_WITH_CUDA
  static const std::vector<DeviceInfo>* infos = [] {
    auto* v = new std::vector<DeviceInfo>();  // leaked on purpose: read after static teardown
    for (int d = 0; d < device_count(); ++d) {
      cudaDeviceProp prop{};
      CUDA_CHECK(cudaGetDeviceProperties(&prop, d));
      DeviceInfo info;
      info.index = d;
      info.name = prop.name;
      info.major = prop.major;
      info.minor = prop.minor;
      info.total_memory = prop.totalGlobalMem;
      info.sm_count = prop.multiProcessorCount;
      v->push_back(info);
    }
    return v;
  }();
  return (*infos)[size_t(device)];
#else
  LOWBIT_FAIL(kNoCuda);
#endif
}

int current_device() {
#if LOWBIT_WITH_CUDA
  int d = 0;
  CUDA_CHECK(cudaGetDevice(&d));
  return d;
#else
  LOWBIT_FAIL(kNoCuda);
#endif
}

DeviceGuard::DeviceGuard(int device) {
  check_device(device);
#if LOWBIT_WITH_CUDA
  int prev = 0;
  CUDA_CHECK(cudaGetDevice(&prev));
  if (prev != device) {
    CUDA_CHECK(cudaSetDevice(device));
    previous_ = prev;
  }
#endif
}

DeviceGuard::~DeviceGuard() {
#if LOWBIT_WITH_CUDA
  if (previous_ >= 0) CUDA_CHECK_WARN(cudaSetDevice(previous_));
#endif
}

// --- Stream ---

Stream::Stream(int device) : device_(device) {
  check_device(device);
#if LOWBIT_WITH_CUDA
  DeviceGuard guard(device);
  cudaStream_t s = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  handle_ = s;
#endif
}

Stream::~Stream() { reset(); }

void Stream::reset() noexcept {
#if LOWBIT_WITH_CUDA
  if (handle_) {
    // cudaStreamDestroy does not wait for queued work, and blocks freed on this stream stay
    // cached under its handle, which a new stream may get again: finish the work first.
    CUDA_CHECK_WARN(cudaStreamSynchronize(as_stream(handle_)));
    CUDA_CHECK_WARN(cudaStreamDestroy(as_stream(handle_)));
  }
#endif
  handle_ = nullptr;
}

Stream::Stream(Stream&& other) noexcept
    : handle_(std::exchange(other.handle_, nullptr)), device_(other.device_) {}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    reset();
    handle_ = std::exchange(other.handle_, nullptr);
    device_ = other.device_;
  }
  return *this;
}

void Stream::synchronize() const {
  LOWBIT_CHECK(handle_ != nullptr, "synchronize() on a moved-from Stream");
#if LOWBIT_WITH_CUDA
  CUDA_CHECK(cudaStreamSynchronize(as_stream(handle_)));
#endif
}

bool Stream::query() const {
  LOWBIT_CHECK(handle_ != nullptr, "query() on a moved-from Stream");
#if LOWBIT_WITH_CUDA
  cudaError_t err = cudaStreamQuery(as_stream(handle_));
  if (err == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  CUDA_CHECK(err);
#endif
  return true;
}

void Stream::wait(const Event& event) const {
  LOWBIT_CHECK(handle_ != nullptr, "wait() on a moved-from Stream");
  if (!event.recorded()) return;
#if LOWBIT_WITH_CUDA
  CUDA_CHECK(cudaStreamWaitEvent(as_stream(handle_), as_event(event.handle()), 0));
#endif
}

// --- Event ---

Event::~Event() { reset(); }

void Event::reset() noexcept {
#if LOWBIT_WITH_CUDA
  if (handle_) CUDA_CHECK_WARN(cudaEventDestroy(as_event(handle_)));
#endif
  handle_ = nullptr;
}

Event::Event(Event&& other) noexcept
    : handle_(std::exchange(other.handle_, nullptr)),
      device_(other.device_),
      timing_(other.timing_) {}

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    reset();
    handle_ = std::exchange(other.handle_, nullptr);
    device_ = other.device_;
    timing_ = other.timing_;
  }
  return *this;
}

void Event::record(const Stream& stream) {
  LOWBIT_CHECK(stream.handle() != nullptr, "Event::record on a moved-from Stream");
#if LOWBIT_WITH_CUDA
  if (handle_ == nullptr) {
    DeviceGuard guard(stream.device());
    cudaEvent_t e = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&e, timing_ ? cudaEventDefault : cudaEventDisableTiming));
    handle_ = e;
    device_ = stream.device();
  }
  LOWBIT_CHECK(device_ == stream.device(), "Event created on cuda:", device_,
               " cannot be recorded on a stream of cuda:", stream.device());
  CUDA_CHECK(cudaEventRecord(as_event(handle_), as_stream(stream.handle())));
#else
  LOWBIT_FAIL(kNoCuda);
#endif
}

void Event::synchronize() const {
#if LOWBIT_WITH_CUDA
  if (handle_) CUDA_CHECK(cudaEventSynchronize(as_event(handle_)));
#endif
}

bool Event::query() const {
#if LOWBIT_WITH_CUDA
  if (!handle_) return true;
  cudaError_t err = cudaEventQuery(as_event(handle_));
  if (err == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  CUDA_CHECK(err);
#endif
  return true;
}

float Event::elapsed_ms(const Event& end) const {
  LOWBIT_CHECK(handle_ != nullptr && end.handle_ != nullptr,
               "elapsed_ms needs two recorded events");
  LOWBIT_CHECK(timing_ && end.timing_, "elapsed_ms needs events created with enable_timing");
  float ms = 0.0f;
#if LOWBIT_WITH_CUDA
  CUDA_CHECK(cudaEventElapsedTime(&ms, as_event(handle_), as_event(end.handle_)));
#endif
  return ms;
}

// --- current stream ---

Stream& current_stream(int device) {
  check_device(device);
  size_t d = size_t(device);
  if (t_current.size() <= d) t_current.resize(d + 1, nullptr);
  if (t_current[d]) return *t_current[d];
  if (t_default.size() <= d) t_default.resize(d + 1, nullptr);
  if (!t_default[d]) t_default[d] = &default_stream(device);
  return *t_default[d];
}

StreamGuard::StreamGuard(Stream& stream) : device_(stream.device()) {
  LOWBIT_CHECK(stream.handle() != nullptr, "StreamGuard on a moved-from Stream");
  check_device(device_);
  size_t d = size_t(device_);
  if (t_current.size() <= d) t_current.resize(d + 1, nullptr);
  previous_ = t_current[d];
  t_current[d] = &stream;
}

StreamGuard::~StreamGuard() { t_current[size_t(device_)] = previous_; }

}  // namespace lowbit::cuda
