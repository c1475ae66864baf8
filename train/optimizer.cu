// The fused multi-tensor optimizer launch: one kernel updates every tensor of a bucket (a
// group's parameters of one dtype on one device) with the functor of optimizer.h.
// Each tensor is cut into chunks of kChunkElems elements; a table of the tensors' UpdateEntry
// (pointers, numel, per-tensor scalars) followed by one ChunkRef per chunk is written to pinned
// host memory and copied to the device in a single asynchronous H2D copy on the current
// stream. Block b takes chunks b, b + gridDim.x, ... and its threads stride through the chunk.
// The table is rebuilt every step: gradients are fresh tensors each backward (autograd
// accumulates out of place), so their addresses change. The pinned block is recorded against
// the copy before it is released (core/backend.h does this), and the device table comes from
// the stream-ordered caching allocator, so neither is reused while the kernel may read it.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/backend.h"
#include "cuda/check.h"
#include "cuda/launch.cuh"
#include "cuda/runtime.h"
#include "train/optimizer.h"

namespace lowbit::train::detail {

namespace {

constexpr int64_t kChunkElems = 16384;
constexpr int kUpdateBlock = 256;

struct ChunkRef {
  int32_t entry;  // index into the entry table
  int32_t chunk;  // chunk number within that tensor
};

template <typename T, typename Op>
__global__ void multi_tensor_update_kernel(const UpdateEntry<T, Op>* entries,
                                           const ChunkRef* chunks, int64_t num_chunks) {
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const ChunkRef ref = chunks[c];
    const UpdateEntry<T, Op> e = entries[ref.entry];
    const int64_t begin = int64_t(ref.chunk) * kChunkElems;
    const int64_t end = begin + kChunkElems < e.numel ? begin + kChunkElems : e.numel;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) update_element(e, i);
  }
}

// Pinned host staging from the CUDA backend's caching pinned allocator, released on scope exit.
class PinnedBuffer {
 public:
  PinnedBuffer(core::DeviceBackend& backend, size_t nbytes)
      : backend_(backend), ptr_(backend.allocate_pinned(nbytes)) {}
  ~PinnedBuffer() { backend_.deallocate_pinned(ptr_); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  char* data() const { return static_cast<char*>(ptr_); }

 private:
  core::DeviceBackend& backend_;
  void* ptr_;
};

// The CUDA slot of the update stubs (optimizer.h).
struct CudaUpdate {
  template <typename T, typename Op>
  static void run(Device d, const std::vector<UpdateEntry<T, Op>>& entries);
};

template <typename T, typename Op>
void CudaUpdate::run(Device d, const std::vector<UpdateEntry<T, Op>>& entries) {
  const int device = d.index;
  using Entry = UpdateEntry<T, Op>;
  static_assert(std::is_trivially_copyable<Entry>::value, "the table is copied bytewise");
  static_assert(sizeof(Entry) % alignof(ChunkRef) == 0, "chunk refs follow the entries");
  if (entries.empty()) return;
  LOWBIT_CHECK(entries.size() < size_t(INT32_MAX), "optimizer: ", entries.size(),
               " tensors in one launch");
  std::vector<ChunkRef> chunks;
  for (size_t e = 0; e < entries.size(); ++e) {
    const int64_t n = (entries[e].numel + kChunkElems - 1) / kChunkElems;
    LOWBIT_CHECK(n < int64_t(INT32_MAX), "optimizer: tensor of ", entries[e].numel,
                 " elements is too large for the chunk table");
    for (int64_t c = 0; c < n; ++c) chunks.push_back({int32_t(e), int32_t(c)});
  }
  if (chunks.empty()) return;
  const size_t entry_bytes = entries.size() * sizeof(Entry);
  const size_t table_bytes = entry_bytes + chunks.size() * sizeof(ChunkRef);

  cuda::DeviceGuard guard(device);
  core::DeviceBackend& backend = core::cuda_backend(device);
  PinnedBuffer staging(backend, table_bytes);
  std::memcpy(staging.data(), entries.data(), entry_bytes);
  std::memcpy(staging.data() + entry_bytes, chunks.data(), chunks.size() * sizeof(ChunkRef));
  // The device table lives until the end of this function; the caching allocator orders its
  // reuse after the kernel on this stream.
  Tensor table = empty({int64_t(table_bytes)}, TensorOptions(DType::u8, Device::cuda(device)));
  backend.copy(table.raw_data(), Device::cuda(device), staging.data(), Device::cpu(), table_bytes);

  const auto* d_entries = static_cast<const Entry*>(table.raw_data());
  const auto* d_chunks =
      reinterpret_cast<const ChunkRef*>(static_cast<const char*>(table.raw_data()) + entry_bytes);
  const int64_t num_chunks = int64_t(chunks.size());
  multi_tensor_update_kernel<T, Op>
      <<<cuda::grid_for(num_chunks * kUpdateBlock, kUpdateBlock), kUpdateBlock, 0,
         cuda::stream_of(device)>>>(d_entries, d_chunks, num_chunks);
  LOWBIT_LAUNCH_CHECK();
}

const UpdateRegistrar<CudaUpdate> register_cuda_updates(DeviceType::cuda);

}  // namespace

}  // namespace lowbit::train::detail
