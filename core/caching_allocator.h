// CachingAllocator: keeps freed blocks and hands them out again, so a training step allocates
// without cudaMalloc/cudaFree (both synchronise the device; it can be captured in a CUDA graph),
// and on the CPU without fresh pages from the kernel (page faults, zeroing, cold caches). Plain
// C++ over two raw functions, so its policy is tested on machines without a GPU. The instances:
// cpu_allocator() below, device_allocator() and pinned_host_allocator() in
// cuda/caching_allocator.h.
//
// Policy:
//  - Sizes are rounded up: to a multiple of 512 bytes up to 1 MiB, to a multiple of 2 MiB above.
//    allocate(0) returns nullptr; deallocate(nullptr) does nothing.
//  - A block belongs to the stream it was allocated on. Freed, it is cached for that stream only
//    and reused only by a later allocation on the same stream, whose work is ordered after the
//    freed block's last use. There is no cross-stream reuse; a block used on another stream
//    must have that use synchronised (or be recorded with record_use) before it is freed.
//  - An allocation of rounded size r takes the smallest cached block of its stream whose size s
//    satisfies r <= s <= 2r (best fit; blocks are not split, and the 2r bound keeps a big
//    cached block from being pinned by a small tensor). Only when none fits is the raw allocator
//    called.
//  - deallocate never calls the raw free; empty_cache() raw-frees every cached block.
//  - If the raw allocator fails (returns nullptr), the cache is emptied and the allocation
//    retried once; a second failure throws lowbit::Error naming the size and the stats.
//  - record_use(p, done) marks the block holding p as read by asynchronous work (a copy from
//    pinned memory on some stream): when freed, the block waits outside the cache until every
//    recorded done() returns true, so it cannot be handed out while that work still reads it.
// Thread-safe: one mutex guards all state (the raw functions are called under it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <vector>

namespace lowbit::core {

class CachingAllocator {
 public:
  using RawAlloc = std::function<void*(size_t)>;  // returns nullptr when out of memory
  using RawFree = std::function<void(void*)>;
  using DoneFn = std::function<bool()>;

  static constexpr size_t kSmallRound = 512;
  static constexpr size_t kSmallLimit = size_t(1) << 20;  // 1 MiB
  static constexpr size_t kLargeRound = size_t(2) << 20;  // 2 MiB

  struct Stats {
    int64_t allocated_bytes = 0;       // in blocks handed out (rounded sizes)
    int64_t reserved_bytes = 0;        // held from the raw allocator: in use + cached + pending
    int64_t peak_allocated_bytes = 0;  // max of allocated_bytes since creation or reset_peak()
    int64_t num_raw_allocs = 0;
    int64_t num_raw_frees = 0;
  };

  CachingAllocator(RawAlloc raw_alloc, RawFree raw_free, std::string name = "caching allocator");
  // Raw-frees the cached blocks. Blocks still in use are not freed (their owners may outlive
  // the allocator only if the allocator is leaked, which the device instances are).
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // The rounded size a request of nbytes occupies.
  static size_t round_size(size_t nbytes);

  void* allocate(size_t nbytes, void* stream);
  void deallocate(void* ptr);
  void empty_cache();
  // See the policy above. Returns false (and records nothing) when p is not inside a block in use.
  bool record_use(const void* p, DoneFn done);
  // True when p points into a block of this allocator that is in use.
  bool owns(const void* p) const;

  Stats stats() const;
  void reset_peak();
  const std::string& name() const { return name_; }

 private:
  struct Block {
    size_t size = 0;
    void* stream = nullptr;
    bool in_use = false;
    std::vector<DoneFn> pending;  // uses to wait for after it is freed
  };
  using FreeKey = std::tuple<uintptr_t, size_t, uintptr_t>;  // (stream, size, address)

  void* allocate_locked(size_t size, void* stream);
  void empty_cache_locked();
  void collect_pending_locked();
  std::map<uintptr_t, Block>::const_iterator find_in_use_locked(const void* p) const;
  std::string stats_str_locked() const;

  RawAlloc raw_alloc_;
  RawFree raw_free_;
  std::string name_;
  mutable std::mutex mu_;
  std::map<uintptr_t, Block> blocks_;  // every block held from raw, by address
  std::set<FreeKey> free_;             // cached blocks, ordered for best fit per stream
  std::vector<uintptr_t> pending_;     // freed blocks waiting for recorded uses
  Stats stats_;
};

// CPU tensor storage of at least kCpuCacheMin bytes (core/tensor.cpp): aligned_alloc(64)/free,
// cached with stream = nullptr. Smaller storage goes straight to malloc, whose bins already
// recycle it. LOWBIT_CPU_CACHE=0 in the environment turns the cache off (every block is freed at
// once), for comparison. Created on first use and never destroyed.
// The cache is bounded: when a free leaves more than max(kCpuCacheFloor, peak bytes in use)
// cached, every cached block is freed. A training loop, whose sizes repeat, keeps its blocks;
// memory held stays below twice the peak in use (or the peak plus 1 GiB) when sizes keep changing.
constexpr size_t kCpuCacheMin = size_t(64) << 10;
constexpr int64_t kCpuCacheFloor = int64_t(1) << 30;
CachingAllocator& cpu_allocator();
bool cpu_cache_enabled();
// Returns a block of cpu_allocator() and applies the bound above.
void cpu_deallocate(void* p);

}  // namespace lowbit::core
