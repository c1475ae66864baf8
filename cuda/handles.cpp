// Per-thread, per-device cuBLAS and cuDNN handles and the cuBLAS workspaces (cuda/handles.h).
// Thread-local state is destroyed at thread exit, before the CUDA runtime unloads at process
// exit (thread-storage objects are destroyed before static ones).
#include "cuda/handles.h"

#include <cstdio>
#include <exception>
#include <memory>
#include <utility>
#include <vector>

#include "cuda/caching_allocator.h"
#include "cuda/check.h"
#include "cuda/runtime.h"

namespace lowbit::cuda {

CublasHandle::CublasHandle(int device) {
  DeviceGuard guard(device);
  CUBLAS_CHECK(cublasCreate(&handle_));
}
CublasHandle::~CublasHandle() {
  if (handle_) CUBLAS_CHECK_WARN(cublasDestroy(handle_));
}
CublasHandle::CublasHandle(CublasHandle&& other) noexcept
    : handle_(std::exchange(other.handle_, nullptr)) {}
CublasHandle& CublasHandle::operator=(CublasHandle&& other) noexcept {
  if (this != &other) {
    if (handle_) CUBLAS_CHECK_WARN(cublasDestroy(handle_));
    handle_ = std::exchange(other.handle_, nullptr);
  }
  return *this;
}

CudnnHandle::CudnnHandle(int device) {
  DeviceGuard guard(device);
  CUDNN_CHECK(cudnnCreate(&handle_));
}
CudnnHandle::~CudnnHandle() {
  if (handle_) CUDNN_CHECK_WARN(cudnnDestroy(handle_));
}
CudnnHandle::CudnnHandle(CudnnHandle&& other) noexcept
    : handle_(std::exchange(other.handle_, nullptr)) {}
CudnnHandle& CudnnHandle::operator=(CudnnHandle&& other) noexcept {
  if (this != &other) {
    if (handle_) CUDNN_CHECK_WARN(cudnnDestroy(handle_));
    handle_ = std::exchange(other.handle_, nullptr);
  }
  return *this;
}

size_t cublas_workspace_bytes(int device) {
  return device_info(device).major >= 9 ? (size_t(32) << 20) : (size_t(4) << 20);
}

namespace {

struct Workspace {
  int device;
  void* stream;
  void* ptr;
};

struct ThreadHandles {
  std::vector<std::unique_ptr<CublasHandle>> cublas;  // by device
  std::vector<std::unique_ptr<CudnnHandle>> cudnn;    // by device
  std::vector<Workspace> workspaces;

  ~ThreadHandles() {
    // Back to the cache of their stream: work still queued on it stays ordered before reuse.
    for (const Workspace& w : workspaces) {
      try {
        device_allocator(w.device).deallocate(w.ptr);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "lowbit warning: releasing a cuBLAS workspace failed: %s\n", e.what());
      }
    }
  }

  void* workspace(int device, void* stream, size_t bytes) {
    for (const Workspace& w : workspaces) {
      if (w.device == device && w.stream == stream) return w.ptr;
    }
    void* p = device_allocator(device).allocate(bytes, stream);
    workspaces.push_back({device, stream, p});
    return p;
  }
};

thread_local ThreadHandles t_handles;

template <typename H>
H& slot(std::vector<std::unique_ptr<H>>& v, int device) {
  if (v.size() <= size_t(device)) v.resize(size_t(device) + 1);
  if (!v[size_t(device)]) v[size_t(device)] = std::make_unique<H>(device);
  return *v[size_t(device)];
}

}  // namespace

cublasHandle_t cublas_handle(int device) {
  check_device(device);
  cublasHandle_t h = slot(t_handles.cublas, device).get();
  void* stream = current_stream(device).handle();
  // cublasSetStream resets the workspace to cuBLAS's own pool, so set ours after it each time.
  CUBLAS_CHECK(cublasSetStream(h, static_cast<cudaStream_t>(stream)));
  const size_t bytes = cublas_workspace_bytes(device);
  CUBLAS_CHECK(cublasSetWorkspace(h, t_handles.workspace(device, stream, bytes), bytes));
  return h;
}

cudnnHandle_t cudnn_handle(int device) {
  check_device(device);
  cudnnHandle_t h = slot(t_handles.cudnn, device).get();
  CUDNN_CHECK(cudnnSetStream(h, static_cast<cudaStream_t>(current_stream(device).handle())));
  return h;
}

}  // namespace lowbit::cuda
