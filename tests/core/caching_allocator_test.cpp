// The caching allocator's policy, on the CPU: malloc/free stand in for cudaMalloc/cudaFree and
// the "streams" are fake pointers, so every rule in core/caching_allocator.h is checked on
// machines without a GPU. Then its CPU instance under tensor storage.
#include "core/caching_allocator.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <set>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/ops.h"
#include "core/tensor.h"

namespace lowbit::core {
namespace {

// Raw functions that count calls and can be told to fail.
struct RawCounter {
  int64_t allocs = 0;
  int64_t frees = 0;
  int fail_next = 0;  // number of upcoming raw allocations that return nullptr
  std::set<void*> live;
};

std::unique_ptr<CachingAllocator> make_allocator(RawCounter* c) {
  return std::make_unique<CachingAllocator>(
      [c](size_t n) -> void* {
        if (c->fail_next > 0) {
          --c->fail_next;
          return nullptr;
        }
        ++c->allocs;
        void* p = std::malloc(n);
        c->live.insert(p);
        return p;
      },
      [c](void* p) {
        ++c->frees;
        c->live.erase(p);
        std::free(p);
      },
      "test allocator");
}

void* const kStreamA = reinterpret_cast<void*>(0x1000);
void* const kStreamB = reinterpret_cast<void*>(0x2000);
constexpr size_t kMiB = size_t(1) << 20;

TEST(CachingAllocator, RoundsSmallTo512AndLargeTo2MiB) {
  EXPECT_EQ(CachingAllocator::round_size(1), 512u);
  EXPECT_EQ(CachingAllocator::round_size(512), 512u);
  EXPECT_EQ(CachingAllocator::round_size(513), 1024u);
  EXPECT_EQ(CachingAllocator::round_size(kMiB), kMiB);
  EXPECT_EQ(CachingAllocator::round_size(kMiB + 1), 2 * kMiB);
  EXPECT_EQ(CachingAllocator::round_size(2 * kMiB + 1), 4 * kMiB);
  EXPECT_EQ(CachingAllocator::round_size(5 * kMiB), 6 * kMiB);
}

TEST(CachingAllocator, ZeroBytesIsNullAndFreeingNullIsNoop) {
  RawCounter c;
  auto a = make_allocator(&c);
  EXPECT_EQ(a->allocate(0, kStreamA), nullptr);
  a->deallocate(nullptr);
  EXPECT_EQ(c.allocs, 0);
  EXPECT_EQ(a->stats().allocated_bytes, 0);
}

TEST(CachingAllocator, ReusesFreedBlockWithoutRawAlloc) {
  RawCounter c;
  auto a = make_allocator(&c);
  void* p = a->allocate(1000, kStreamA);
  ASSERT_NE(p, nullptr);
  a->deallocate(p);
  EXPECT_EQ(c.frees, 0) << "deallocate must cache, not raw-free";
  void* q = a->allocate(900, kStreamA);  // same rounded size (1024)
  EXPECT_EQ(q, p);
  EXPECT_EQ(c.allocs, 1);
  EXPECT_EQ(a->stats().num_raw_allocs, 1);
  a->deallocate(q);
}

TEST(CachingAllocator, BestFitPicksSmallestBlockThatFits) {
  RawCounter c;
  auto a = make_allocator(&c);
  void* big = a->allocate(4096, kStreamA);
  void* mid = a->allocate(2048, kStreamA);
  void* small = a->allocate(512, kStreamA);
  a->deallocate(big);
  a->deallocate(mid);
  a->deallocate(small);
  EXPECT_EQ(a->allocate(1500, kStreamA), mid);  // 1536 rounded: 2048 fits best
  EXPECT_EQ(a->allocate(3000, kStreamA), big);  // 3072: only 4096 fits
  EXPECT_EQ(a->allocate(100, kStreamA), small);
  EXPECT_EQ(c.allocs, 3);
  a->deallocate(big);
  a->deallocate(mid);
  a->deallocate(small);
}

TEST(CachingAllocator, DoesNotHandOutBlocksMoreThanTwiceTheRequest) {
  RawCounter c;
  auto a = make_allocator(&c);
  void* big = a->allocate(8 * kMiB, kStreamA);
  a->deallocate(big);
  void* p = a->allocate(2 * kMiB, kStreamA);  // 8 MiB > 2 * 2 MiB: not reused
  EXPECT_NE(p, big);
  EXPECT_EQ(c.allocs, 2);
  void* q = a->allocate(5 * kMiB, kStreamA);  // rounds to 6 MiB; 8 MiB <= 12 MiB: reused
  EXPECT_EQ(q, big);
  EXPECT_EQ(c.allocs, 2);
  a->deallocate(p);
  a->deallocate(q);
}

TEST(CachingAllocator, NoCrossStreamReuse) {
  RawCounter c;
  auto a = make_allocator(&c);
  void* p = a->allocate(1024, kStreamA);
  a->deallocate(p);
  void* q = a->allocate(1024, kStreamB);
  EXPECT_NE(q, p) << "a block freed on stream A must not be reused on stream B";
  EXPECT_EQ(c.allocs, 2);
  void* r = a->allocate(1024, kStreamA);
  EXPECT_EQ(r, p);
  EXPECT_EQ(c.allocs, 2);
  a->deallocate(q);
  a->deallocate(r);
}

TEST(CachingAllocator, StatsTrackAllocatedReservedAndPeak) {
  RawCounter c;
  auto a = make_allocator(&c);
  void* p = a->allocate(1000, kStreamA);      // 1024
  void* q = a->allocate(3 * kMiB, kStreamA);  // 4 MiB
  CachingAllocator::Stats s = a->stats();
  EXPECT_EQ(s.allocated_bytes, int64_t(1024 + 4 * kMiB));
  EXPECT_EQ(s.reserved_bytes, int64_t(1024 + 4 * kMiB));
  EXPECT_EQ(s.peak_allocated_bytes, int64_t(1024 + 4 * kMiB));
  EXPECT_EQ(s.num_raw_allocs, 2);
  EXPECT_EQ(s.num_raw_frees, 0);

  a->deallocate(q);
  s = a->stats();
  EXPECT_EQ(s.allocated_bytes, 1024);
  EXPECT_EQ(s.reserved_bytes, int64_t(1024 + 4 * kMiB)) << "freed blocks stay reserved";
  EXPECT_EQ(s.peak_allocated_bytes, int64_t(1024 + 4 * kMiB));

  a->reset_peak();
  EXPECT_EQ(a->stats().peak_allocated_bytes, 1024);
  void* r = a->allocate(512, kStreamA);
  EXPECT_EQ(a->stats().peak_allocated_bytes, 1024 + 512);
  a->deallocate(p);
  a->deallocate(r);
  EXPECT_EQ(a->stats().allocated_bytes, 0);
  EXPECT_EQ(a->stats().peak_allocated_bytes, 1024 + 512);
}

// A request served by a larger cached block counts that block's size, which is what its free
// subtracts: allocated bytes return to zero (they used to drift below it).
TEST(CachingAllocator, StatsCountTheSizeOfAReusedLargerBlock) {
  RawCounter c;
  auto a = make_allocator(&c);
  void* big = a->allocate(4096, kStreamA);
  a->deallocate(big);
  EXPECT_EQ(a->stats().allocated_bytes, 0);
  void* p = a->allocate(3000, kStreamA);  // 3072 rounded, served by the cached 4096 block
  EXPECT_EQ(p, big);
  EXPECT_EQ(a->stats().allocated_bytes, 4096);
  EXPECT_EQ(a->stats().peak_allocated_bytes, 4096);
  a->deallocate(p);
  EXPECT_EQ(a->stats().allocated_bytes, 0);
  EXPECT_EQ(a->stats().reserved_bytes, 4096);
}

TEST(CachingAllocator, EmptyCacheReleasesOnlyCachedBlocks) {
  RawCounter c;
  auto a = make_allocator(&c);
  void* used = a->allocate(1000, kStreamA);
  void* cached1 = a->allocate(2000, kStreamA);
  void* cached2 = a->allocate(3 * kMiB, kStreamB);
  a->deallocate(cached1);
  a->deallocate(cached2);
  a->empty_cache();
  EXPECT_EQ(c.frees, 2);
  EXPECT_EQ(c.live.size(), 1u);
  EXPECT_EQ(c.live.count(used), 1u);
  CachingAllocator::Stats s = a->stats();
  EXPECT_EQ(s.allocated_bytes, 1024);
  EXPECT_EQ(s.reserved_bytes, 1024);
  EXPECT_EQ(s.num_raw_frees, 2);
  a->deallocate(used);  // still a valid block after empty_cache
  EXPECT_EQ(a->stats().allocated_bytes, 0);
}

TEST(CachingAllocator, RejectsUnknownAndDoubleFree) {
  RawCounter c;
  auto a = make_allocator(&c);
  int on_stack = 0;
  EXPECT_THROW(a->deallocate(&on_stack), Error);
  void* p = a->allocate(64, kStreamA);
  a->deallocate(p);
  EXPECT_THROW(a->deallocate(p), Error);
  // An interior pointer is not a block either.
  void* q = a->allocate(1024, kStreamA);
  EXPECT_THROW(a->deallocate(static_cast<char*>(q) + 8), Error);
  a->deallocate(q);
}

TEST(CachingAllocator, RawFailureEmptiesCacheAndRetries) {
  RawCounter c;
  auto a = make_allocator(&c);
  void* cached = a->allocate(4096, kStreamB);
  a->deallocate(cached);
  c.fail_next = 1;  // the first raw attempt fails, the retry after empty_cache succeeds
  void* p = a->allocate(8192, kStreamA);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(c.frees, 1) << "the cached block should have been released before the retry";
  EXPECT_EQ(a->stats().reserved_bytes, 8192);
  a->deallocate(p);
}

TEST(CachingAllocator, RawFailureTwiceThrowsWithSizeAndStats) {
  RawCounter c;
  auto a = make_allocator(&c);
  c.fail_next = 2;
  try {
    a->allocate(12345, kStreamA);
    FAIL() << "expected an out-of-memory error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("12345"), std::string::npos) << msg;
    EXPECT_NE(msg.find("reserved"), std::string::npos) << msg;
    EXPECT_NE(msg.find("test allocator"), std::string::npos) << msg;
  }
  EXPECT_EQ(a->stats().allocated_bytes, 0);
  EXPECT_EQ(a->stats().num_raw_allocs, 0);
}

TEST(CachingAllocator, RecordedUseDelaysReuseUntilDone) {
  RawCounter c;
  auto a = make_allocator(&c);
  void* p = a->allocate(1024, nullptr);
  auto done = std::make_shared<bool>(false);
  EXPECT_TRUE(a->record_use(static_cast<char*>(p) + 100, [done] { return *done; }));
  EXPECT_TRUE(a->owns(static_cast<char*>(p) + 1023));
  EXPECT_FALSE(a->owns(static_cast<char*>(p) + 1024 + 4096));
  a->deallocate(p);
  void* q = a->allocate(1024, nullptr);
  EXPECT_NE(q, p) << "a block whose recorded use is pending must not be reused";
  *done = true;
  a->deallocate(q);
  void* r = a->allocate(1024, nullptr);
  // Both p and q are now cached; best fit by address tie-break returns one of them.
  EXPECT_TRUE(r == p || r == q);
  EXPECT_EQ(c.allocs, 2);
  a->deallocate(r);
  int on_stack = 0;
  EXPECT_FALSE(a->record_use(&on_stack, [] { return true; }));
}

TEST(CachingAllocator, DestructorReleasesCachedBlocks) {
  RawCounter c;
  {
    auto a = make_allocator(&c);
    a->deallocate(a->allocate(100, kStreamA));
    a->deallocate(a->allocate(3 * kMiB, kStreamB));
  }
  EXPECT_EQ(c.frees, 2);
  EXPECT_TRUE(c.live.empty());
}

TEST(CachingAllocator, ConcurrentUseKeepsStatsConsistent) {
  RawCounter c;  // not thread-safe itself: the allocator calls the raw functions under its lock
  auto a = make_allocator(&c);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&a, t] {
      void* stream = reinterpret_cast<void*>(uintptr_t(0x100 * (t + 1)));
      for (int i = 0; i < 200; ++i) {
        void* p = a->allocate(size_t(512 * (1 + i % 5)), stream);
        void* q = a->allocate(size_t(100 + i), stream);
        a->deallocate(p);
        a->deallocate(q);
      }
    });
  }
  for (auto& th : threads) th.join();
  CachingAllocator::Stats s = a->stats();
  EXPECT_EQ(s.allocated_bytes, 0);
  EXPECT_EQ(s.num_raw_allocs, c.allocs);
  EXPECT_LE(s.num_raw_allocs, 4 * 8) << "steady state should come from the cache";
}

// CPU tensors of at least kCpuCacheMin bytes come from cpu_allocator(): a freed tensor's block
// is handed to the next tensor of its size without a new raw allocation; smaller tensors do not
// touch it. (LOWBIT_CPU_CACHE=0 turns the cache off; then there is nothing to check.)
TEST(CpuAllocator, LargeTensorsReuseFreedBlocks) {
  if (!cpu_cache_enabled()) GTEST_SKIP() << "LOWBIT_CPU_CACHE=0";
  CachingAllocator& a = cpu_allocator();
  const int64_t n = int64_t(kCpuCacheMin / 4) * 3;  // f32 elements: 3x the threshold
  const void* first = nullptr;
  {
    Tensor t = empty({n});
    first = t.raw_data();
    EXPECT_TRUE(a.owns(first));
  }
  const CachingAllocator::Stats before = a.stats();
  {
    Tensor t = ones({n});
    EXPECT_EQ(t.raw_data(), first) << "the freed block is reused";
    EXPECT_EQ(sum(t).item(), double(n)) << "and fully usable";
  }
  Tensor small = empty({int64_t(kCpuCacheMin / 4) - 16});
  EXPECT_FALSE(a.owns(small.raw_data()));
  EXPECT_EQ(a.stats().num_raw_allocs, before.num_raw_allocs);
}

// The CPU cache is bounded: once the cached blocks exceed max(1 GiB, the peak in use) they are
// all freed. Two tensors too different in size to share a block (400 MiB, then 900 MiB, never
// touched, so no memory is committed) leave 1.3 GiB cached, more than both: the cache empties.
TEST(CpuAllocator, CacheBeyondPeakAndFloorIsReleased) {
  if (!cpu_cache_enabled()) GTEST_SKIP() << "LOWBIT_CPU_CACHE=0";
  CachingAllocator& a = cpu_allocator();
  const int64_t frees_before = a.stats().num_raw_frees;
  { Tensor t = empty({int64_t(400) << 18}); }  // 400 MiB of f32
  CachingAllocator::Stats s = a.stats();
  EXPECT_GE(s.reserved_bytes - s.allocated_bytes, int64_t(400) << 20) << "kept: under the bound";
  { Tensor t = empty({int64_t(900) << 18}); }
  s = a.stats();
  EXPECT_EQ(s.reserved_bytes - s.allocated_bytes, 0) << "1.3 GiB cached > max(1 GiB, 900 MiB peak)";
  EXPECT_GE(s.num_raw_frees - frees_before, 2);
}

}  // namespace
}  // namespace lowbit::core
