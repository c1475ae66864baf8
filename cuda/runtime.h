// CUDA devices, streams and events behind a plain C++ interface (no CUDA headers), so any folder
// may include it. Built without CUDA, device_count() is 0 and everything that needs a device
// throws "built without CUDA". Nothing here touches the driver before it is first called, so a
// binary built with CUDA starts (and answers device_count() == 0) on a machine without a GPU.
//
// Streams: each thread has a current stream per device. Unless a StreamGuard says otherwise it
// is a lowbit-created non-blocking stream of that device, shared by all threads; work is never
// issued on the legacy default stream, which would serialise against everything else.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace lowbit::cuda {

// Number of CUDA devices. 0, not an error, when built without CUDA or when the driver reports
// no driver / no device; the reason is then in no_device_reason().
int device_count();
// Why device_count() is 0 ("built without CUDA", the driver's message), or "" with devices.
std::string no_device_reason();

struct DeviceInfo {
  int index = 0;
  std::string name;
  int major = 0;  // compute capability
  int minor = 0;
  size_t total_memory = 0;  // bytes
  int sm_count = 0;
};
// Queried once per device, then cached. Throws for an index out of [0, device_count()).
const DeviceInfo& device_info(int device);
// Throws naming the index and the device count unless 0 <= device < device_count().
void check_device(int device);

// The calling thread's current device (cudaGetDevice) and a guard that switches it for a scope.
int current_device();
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

class Event;

// An owned cudaStream_t (created non-blocking). Move-only. Destroying it synchronises it first:
// memory freed on a stream is cached for that stream, and must be idle once the stream is gone.
class Stream {
 public:
  explicit Stream(int device);
  ~Stream();
  Stream(Stream&& other) noexcept;
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  void* handle() const { return handle_; }  // a cudaStream_t
  int device() const { return device_; }
  void synchronize() const;
  bool query() const;  // true when all work issued so far has finished
  // Work issued to this stream after the call waits for `event` (no host sync).
  void wait(const Event& event) const;

 private:
  void reset() noexcept;
  void* handle_ = nullptr;
  int device_ = -1;
};

// An owned cudaEvent_t, created on first record() on the recording stream's device. Move-only.
class Event {
 public:
  explicit Event(bool enable_timing = false) : timing_(enable_timing) {}
  ~Event();
  Event(Event&& other) noexcept;
  Event& operator=(Event&& other) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  void record(const Stream& stream);
  void synchronize() const;  // blocks the host until the recorded work is done
  bool query() const;        // true when done (or never recorded)
  bool recorded() const { return handle_ != nullptr; }
  // Milliseconds between this event and `end`; both recorded with enable_timing = true.
  float elapsed_ms(const Event& end) const;
  void* handle() const { return handle_; }  // a cudaEvent_t
  int device() const { return device_; }

 private:
  void reset() noexcept;
  void* handle_ = nullptr;
  int device_ = -1;
  bool timing_ = false;
};

// The calling thread's current stream on `device` (the default lowbit stream unless a
// StreamGuard is active).
Stream& current_stream(int device);
// Makes `stream` the calling thread's current stream of its device for the guard's scope.
// The stream must outlive the guard.
class StreamGuard {
 public:
  explicit StreamGuard(Stream& stream);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  int device_;
  Stream* previous_;
};

}  // namespace lowbit::cuda
