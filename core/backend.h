// The seam between core/ and cuda/. core/ sits above cuda/ in the layering, so it cannot call
// the CUDA runtime itself: cuda/ registers a DeviceBackend at static-initialisation time and
// core/ reaches device memory, copies and synchronisation through it. A CPU-only build has no
// backend registered, and every CUDA request throws "built without CUDA".
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/device.h"

namespace lowbit::core {

class DeviceBackend {
 public:
  virtual ~DeviceBackend() = default;
  virtual int device_count() = 0;
  // Device memory from the caching allocator, ordered on the device's current stream.
  virtual void* allocate(int device, size_t nbytes) = 0;
  virtual void deallocate(int device, void* ptr) = 0;
  // Pinned host memory (for H2D copies that overlap compute).
  virtual void* allocate_pinned(size_t nbytes) = 0;
  virtual void deallocate_pinned(void* ptr) = 0;
  // Copies nbytes between any two of host/device. Copies to the host synchronise the stream
  // (the caller reads the bytes next); others are asynchronous on the current stream.
  virtual void copy(void* dst, Device dst_device, const void* src, Device src_device,
                    size_t nbytes) = 0;
  virtual void memset_zero(int device, void* ptr, size_t nbytes) = 0;
  virtual void synchronize(int device) = 0;
};

// Registered by cuda/ (static registrar); null when lowbit was built without CUDA.
DeviceBackend* cuda_backend_or_null();
// Throws a clear error when there is no CUDA backend or the device index is out of range.
DeviceBackend& cuda_backend(int device = -1);
void register_cuda_backend(DeviceBackend* backend);
// Number of CUDA devices; 0 (not an error) without CUDA, driver or GPU.
int cuda_device_count();

}  // namespace lowbit::core
