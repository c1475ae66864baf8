// The CUDA instances of the caching allocator (core/caching_allocator.h): one per device over
// cudaMalloc/cudaFree, one for pinned host memory.
#pragma once

#include "core/caching_allocator.h"

namespace lowbit::cuda {

using core::CachingAllocator;

// The device's caching allocator (cudaMalloc/cudaFree on that device). Created on first use and
// never destroyed. Throws "built without CUDA" in a CPU-only build, or for a bad index.
CachingAllocator& device_allocator(int device);
// Page-locked host memory (cudaHostAlloc/cudaFreeHost), cached with stream = nullptr. Callers
// that copy from it asynchronously record the copy with record_use (cuda/backend.cu does).
CachingAllocator& pinned_host_allocator();

}  // namespace lowbit::cuda
