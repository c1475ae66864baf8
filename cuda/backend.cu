// The CUDA DeviceBackend (core/backend.h): device memory from the caching allocator on the
// device's current stream, pinned host memory, copies, memset and stream sync. Registered at
// static initialisation; nothing here calls the driver until core asks for something, so a
// CUDA build starts on a machine without a GPU (device_count() is then 0).
// Copies: host-to-host is memcpy; to the host, the copy runs on the source device's current
// stream, which is then synchronised (the caller reads the bytes next); host-to-device and
// device-to-device run asynchronously on the destination device's current stream. A copy from
// pinned memory of our pinned allocator is recorded on it (record_use), so the block is not
// handed out again while the copy may still read it. A copy between two devices waits for the
// source stream (event) and is synchronised, since the source's allocator cannot see the use.
#include <cuda_runtime.h>

#include <cstring>
#include <memory>

#include "core/backend.h"
#include "core/error.h"
#include "cuda/caching_allocator.h"
#include "cuda/check.h"
#include "cuda/runtime.h"

namespace lowbit::cuda {

namespace {

cudaStream_t as_stream(const Stream& s) { return static_cast<cudaStream_t>(s.handle()); }

class CudaBackend final : public core::DeviceBackend {
 public:
  int device_count() override { return cuda::device_count(); }

  void* allocate(int device, size_t nbytes) override {
    return device_allocator(device).allocate(nbytes, current_stream(device).handle());
  }

  void deallocate(int device, void* ptr) override { device_allocator(device).deallocate(ptr); }

  void* allocate_pinned(size_t nbytes) override {
    return pinned_host_allocator().allocate(nbytes, nullptr);
  }

  void deallocate_pinned(void* ptr) override { pinned_host_allocator().deallocate(ptr); }

  void copy(void* dst, Device dst_device, const void* src, Device src_device,
            size_t nbytes) override {
    if (nbytes == 0) return;
    if (dst_device.is_cpu() && src_device.is_cpu()) {
      std::memcpy(dst, src, nbytes);
      return;
    }
    if (dst_device.is_cpu()) {  // device to host
      const int d = src_device.index;
      DeviceGuard guard(d);
      const Stream& s = current_stream(d);
      CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, as_stream(s)));
      s.synchronize();
      return;
    }
    const int d = dst_device.index;
    DeviceGuard guard(d);
    const Stream& s = current_stream(d);
    if (src_device.is_cpu()) {  // host to device
      CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, as_stream(s)));
      record_pinned_use(src, s);
      return;
    }
    if (src_device.index == d) {  // same device
      CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, as_stream(s)));
      return;
    }
    // Between devices: order after the source's pending work, then finish before returning.
    Event ready;
    ready.record(current_stream(src_device.index));
    s.wait(ready);
    CUDA_CHECK(cudaMemcpyPeerAsync(dst, d, src, src_device.index, nbytes, as_stream(s)));
    s.synchronize();
  }

  void memset_zero(int device, void* ptr, size_t nbytes) override {
    if (nbytes == 0) return;
    DeviceGuard guard(device);
    CUDA_CHECK(cudaMemsetAsync(ptr, 0, nbytes, as_stream(current_stream(device))));
  }

  void synchronize(int device) override { current_stream(device).synchronize(); }

 private:
  // If src lies in a block of the pinned allocator, keep that block out of reuse until the copy
  // just issued on `s` has finished.
  static void record_pinned_use(const void* src, const Stream& s) {
    if (!pinned_host_allocator().owns(src)) return;
    auto done = std::make_shared<Event>();
    done->record(s);
    pinned_host_allocator().record_use(src, [done] { return done->query(); });
  }
};

// Registers the backend before main. Constructing CudaBackend touches no CUDA API. The object
// is never destroyed: storages released during static destruction still deallocate through it.
struct BackendRegistrar {
  BackendRegistrar() { core::register_cuda_backend(new CudaBackend()); }
};
BackendRegistrar registrar;

}  // namespace

}  // namespace lowbit::cuda
