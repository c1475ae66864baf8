// The caching allocator's CUDA instances: one per device over cudaMalloc/cudaFree, one for
// pinned host memory over cudaHostAlloc/cudaFreeHost. The instances are never destroyed: tensors
// held in statics may free into them during exit.
#include "cuda/caching_allocator.h"

#include <memory>
#include <vector>

#include "core/dispatch.h"
#include "core/error.h"
#include "cuda/runtime.h"

#if LOWBIT_WITH_CUDA
#include <cuda_runtime_api.h>

#include "cuda/check.h"
#endif

namespace lowbit::cuda {

// --- the CUDA instances ---

CachingAllocator& device_allocator(int device) {
  check_device(device);
#if LOWBIT_WITH_CUDA
  static std::vector<std::unique_ptr<CachingAllocator>>* allocators = [] {
    auto* v = new std::vector<std::unique_ptr<CachingAllocator>>();  // leaked on purpose
    for (int d = 0; d < device_count(); ++d) {
      auto raw_alloc = [d](size_t nbytes) -> void* {
        DeviceGuard guard(d);
        void* p = nullptr;
        cudaError_t malloc_status = cudaMalloc(&p, nbytes);
        if (malloc_status == cudaErrorMemoryAllocation) {
          (void)cudaGetLastError();  // not sticky: clear it, the allocator retries or throws
          return nullptr;
        }
        CUDA_CHECK(malloc_status);
        return p;
      };
      auto raw_free = [d](void* p) {
        DeviceGuard guard(d);
        CUDA_CHECK(cudaFree(p));
      };
      v->push_back(std::make_unique<CachingAllocator>(raw_alloc, raw_free,
                                                      str_cat("cuda:", d, " allocator")));
    }
    return v;
  }();
  return *(*allocators)[size_t(device)];
#else
  LOWBIT_FAIL("device_allocator: ", core::kBuiltWithoutCuda);
#endif
}

CachingAllocator& pinned_host_allocator() {
#if LOWBIT_WITH_CUDA
  LOWBIT_CHECK(device_count() > 0, "pinned host memory needs a CUDA device: ", no_device_reason());
  static CachingAllocator* allocator = new CachingAllocator(  // leaked on purpose
      [](size_t nbytes) -> void* {
        void* p = nullptr;
        cudaError_t alloc_status = cudaHostAlloc(&p, nbytes, cudaHostAllocPortable);
        if (alloc_status == cudaErrorMemoryAllocation) {
          (void)cudaGetLastError();
          return nullptr;
        }
        CUDA_CHECK(alloc_status);
        return p;
      },
      [](void* p) { CUDA_CHECK(cudaFreeHost(p)); }, "pinned host allocator");
  return *allocator;
#else
  LOWBIT_FAIL("pinned_host_allocator: ", core::kBuiltWithoutCuda);
#endif
}

}  // namespace lowbit::cuda
