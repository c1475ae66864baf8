// The caching allocator's policy (see caching_allocator.h) and its CPU instance. The instances
// are never destroyed: tensors held in statics may free into them during exit.
#include "core/caching_allocator.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <utility>

#include "core/error.h"

namespace lowbit::core {

namespace {
uintptr_t addr(const void* p) { return reinterpret_cast<uintptr_t>(p); }
}  // namespace

CachingAllocator::CachingAllocator(RawAlloc raw_alloc, RawFree raw_free, std::string name)
    : raw_alloc_(std::move(raw_alloc)), raw_free_(std::move(raw_free)), name_(std::move(name)) {
  LOWBIT_CHECK(raw_alloc_ && raw_free_, name_, ": raw alloc and free functions are required");
}

CachingAllocator::~CachingAllocator() {
  std::lock_guard<std::mutex> lock(mu_);
  try {
    empty_cache_locked();
  } catch (const std::exception& e) {
    // A destructor cannot throw; the memory is lost either way, so say so and go on.
    std::fprintf(stderr, "lowbit warning: %s: releasing cached blocks failed: %s\n", name_.c_str(),
                 e.what());
  }
}

size_t CachingAllocator::round_size(size_t nbytes) {
  if (nbytes <= kSmallLimit) {
    size_t r = (nbytes + kSmallRound - 1) / kSmallRound * kSmallRound;
    return r == 0 ? kSmallRound : r;
  }
  LOWBIT_CHECK(nbytes <= std::numeric_limits<size_t>::max() - kLargeRound, "allocation of ", nbytes,
               " bytes is too large");
  return (nbytes + kLargeRound - 1) / kLargeRound * kLargeRound;
}

void* CachingAllocator::allocate(size_t nbytes, void* stream) {
  if (nbytes == 0) return nullptr;
  size_t size = round_size(nbytes);
  std::lock_guard<std::mutex> lock(mu_);
  collect_pending_locked();
  void* p = allocate_locked(size, stream);
  if (p == nullptr) {
    LOWBIT_FAIL(name_, ": out of memory allocating ", nbytes, " bytes (", size,
                " rounded) after releasing the cache; ", stats_str_locked());
  }
  // The block handed out may be up to twice the rounded request (a reused cached block):
  // count what deallocate() will subtract, the block's size.
  stats_.allocated_bytes += int64_t(blocks_.at(addr(p)).size);
  if (stats_.allocated_bytes > stats_.peak_allocated_bytes) {
    stats_.peak_allocated_bytes = stats_.allocated_bytes;
  }
  return p;
}

void* CachingAllocator::allocate_locked(size_t size, void* stream) {
  // Best fit among this stream's cached blocks of size in [size, 2 * size].
  auto it = free_.lower_bound(FreeKey(addr(stream), size, 0));
  if (it != free_.end() && std::get<0>(*it) == addr(stream) && std::get<1>(*it) <= 2 * size) {
    uintptr_t a = std::get<2>(*it);
    free_.erase(it);
    blocks_.at(a).in_use = true;
    return reinterpret_cast<void*>(a);
  }
  void* p = raw_alloc_(size);
  if (p == nullptr) {
    empty_cache_locked();
    p = raw_alloc_(size);
    if (p == nullptr) return nullptr;
  }
  Block b;
  b.size = size;
  b.stream = stream;
  b.in_use = true;
  bool inserted = blocks_.emplace(addr(p), std::move(b)).second;
  LOWBIT_CHECK(inserted, name_, ": raw allocator returned ", p, ", which is already held");
  stats_.reserved_bytes += int64_t(size);
  stats_.num_raw_allocs += 1;
  return p;
}

void CachingAllocator::deallocate(void* ptr) {
  if (ptr == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = blocks_.find(addr(ptr));
  LOWBIT_CHECK(it != blocks_.end(), name_, ": deallocate(", ptr,
               ") of a pointer this allocator did not hand out");
  Block& b = it->second;
  LOWBIT_CHECK(b.in_use, name_, ": deallocate(", ptr, ") of a block that is already free");
  b.in_use = false;
  stats_.allocated_bytes -= int64_t(b.size);
  if (b.pending.empty()) {
    free_.insert(FreeKey(addr(b.stream), b.size, it->first));
  } else {
    pending_.push_back(it->first);
  }
}

void CachingAllocator::collect_pending_locked() {
  size_t kept = 0;
  for (uintptr_t a : pending_) {
    Block& b = blocks_.at(a);
    std::vector<DoneFn> still;
    for (DoneFn& done : b.pending) {
      if (!done()) still.push_back(std::move(done));
    }
    b.pending = std::move(still);
    if (b.pending.empty()) {
      free_.insert(FreeKey(addr(b.stream), b.size, a));
    } else {
      pending_[kept++] = a;
    }
  }
  pending_.resize(kept);
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  collect_pending_locked();
  empty_cache_locked();
}

void CachingAllocator::empty_cache_locked() {
  while (!free_.empty()) {
    uintptr_t a = std::get<2>(*free_.begin());
    size_t size = std::get<1>(*free_.begin());
    free_.erase(free_.begin());
    blocks_.erase(a);
    stats_.reserved_bytes -= int64_t(size);
    stats_.num_raw_frees += 1;
    raw_free_(reinterpret_cast<void*>(a));  // state is consistent even if this throws
  }
}

std::map<uintptr_t, CachingAllocator::Block>::const_iterator CachingAllocator::find_in_use_locked(
    const void* p) const {
  auto it = blocks_.upper_bound(addr(p));
  if (it == blocks_.begin()) return blocks_.end();
  --it;
  if (addr(p) < it->first + it->second.size && it->second.in_use) return it;
  return blocks_.end();
}

bool CachingAllocator::record_use(const void* p, DoneFn done) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = find_in_use_locked(p);
  if (it == blocks_.end()) return false;
  blocks_.at(it->first).pending.push_back(std::move(done));
  return true;
}

bool CachingAllocator::owns(const void* p) const {
  std::lock_guard<std::mutex> lock(mu_);
  return find_in_use_locked(p) != blocks_.end();
}

CachingAllocator::Stats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void CachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.peak_allocated_bytes = stats_.allocated_bytes;
}

std::string CachingAllocator::stats_str_locked() const {
  return str_cat("allocated ", stats_.allocated_bytes, " B, reserved ", stats_.reserved_bytes,
                 " B, peak allocated ", stats_.peak_allocated_bytes, " B, raw allocs ",
                 stats_.num_raw_allocs, ", raw frees ", stats_.num_raw_frees);
}

// --- the CPU instance ---

bool cpu_cache_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("LOWBIT_CPU_CACHE");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return on;
}

CachingAllocator& cpu_allocator() {
  static CachingAllocator* allocator = new CachingAllocator(         // leaked on purpose
      [](size_t nbytes) { return std::aligned_alloc(64, nbytes); },  // sizes are 512-multiples
      [](void* p) { std::free(p); }, "cpu allocator");
  return *allocator;
}

void cpu_deallocate(void* p) {
  CachingAllocator& a = cpu_allocator();
  a.deallocate(p);
  const CachingAllocator::Stats s = a.stats();
  if (s.reserved_bytes - s.allocated_bytes > std::max(kCpuCacheFloor, s.peak_allocated_bytes)) {
    a.empty_cache();
  }
}

}  // namespace lowbit::core
