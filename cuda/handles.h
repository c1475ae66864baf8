// cuBLAS and cuDNN handles for cuda/ sources (includes the libraries' headers). A handle is
// created lazily per (thread, device) -- a handle must not be used by two threads at once -- and
// bound to the calling thread's current stream each time it is fetched. cuBLAS gets a workspace
// per (thread, device, stream) from the device's caching allocator, so two streams never share
// scratch and cuBLAS never calls cudaMalloc itself.
#pragma once

#include <cublas_v2.h>
#include <cudnn.h>

namespace lowbit::cuda {

// Move-only owners of a library handle, created on the given device.
class CublasHandle {
 public:
  explicit CublasHandle(int device);
  ~CublasHandle();
  CublasHandle(CublasHandle&& other) noexcept;
  CublasHandle& operator=(CublasHandle&& other) noexcept;
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
};

class CudnnHandle {
 public:
  explicit CudnnHandle(int device);
  ~CudnnHandle();
  CudnnHandle(CudnnHandle&& other) noexcept;
  CudnnHandle& operator=(CudnnHandle&& other) noexcept;
  CudnnHandle(const CudnnHandle&) = delete;
  CudnnHandle& operator=(const CudnnHandle&) = delete;
  cudnnHandle_t get() const { return handle_; }

 private:
  cudnnHandle_t handle_ = nullptr;
};

// The calling thread's handle for `device`, set to the device's current stream (and, for
// cuBLAS, that stream's workspace). Call it right before the library call; the caller keeps the
// device current (DeviceGuard) for the call.
cublasHandle_t cublas_handle(int device);
cudnnHandle_t cudnn_handle(int device);

// Bytes of cuBLAS workspace per stream: 32 MiB on sm_90 and newer, 4 MiB before (the sizes the
// cuBLAS documentation recommends).
size_t cublas_workspace_bytes(int device);

}  // namespace lowbit::cuda
