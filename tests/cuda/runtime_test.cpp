// cuda/runtime.h and the device allocators: the no-GPU behaviour everywhere (device_count() is 0,
// not an error; anything needing a device throws clearly), and on a GPU (suites ending in Gpu)
// streams, events, the device caching allocator and pinned memory.
#include "cuda/runtime.h"

#include <gtest/gtest.h>

#include <cstring>
#include <thread>
#include <vector>

#include "core/backend.h"
#include "core/ops.h"
#include "core/tensor.h"
#include "cuda/caching_allocator.h"
#include "tests/common/test_util.h"

namespace lowbit::cuda {
namespace {

TEST(Runtime, DeviceCountNeverThrows) {
  int n = -1;
  EXPECT_NO_THROW(n = device_count());
  EXPECT_GE(n, 0);
  EXPECT_EQ(device_count(), n) << "the count is cached and stable";
#if LOWBIT_WITH_CUDA
  EXPECT_EQ(core::cuda_device_count(), n) << "core sees the registered CUDA backend";
  EXPECT_NE(core::cuda_backend_or_null(), nullptr);
#else
  EXPECT_EQ(core::cuda_backend_or_null(), nullptr);
#endif
}

TEST(Runtime, WithoutGpuCountIsZeroAndDeviceUseThrows) {
  if (device_count() > 0) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_EQ(core::cuda_device_count(), 0);
  EXPECT_FALSE(no_device_reason().empty());
#if !LOWBIT_WITH_CUDA
  EXPECT_NE(no_device_reason().find("without CUDA"), std::string::npos) << no_device_reason();
#endif
  EXPECT_THROW(current_stream(0), Error);
  EXPECT_THROW(Stream(0), Error);
  EXPECT_THROW(device_info(0), Error);
  EXPECT_THROW(DeviceGuard(0), Error);
  try {
    check_device(0);
    FAIL() << "check_device(0) should throw without a device";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("out of range"), std::string::npos) << e.what();
  }
  EXPECT_THROW(zeros({4}, TensorOptions(DType::f32, Device::cuda(0))), Error);
}

TEST(Runtime, CpuTensorsWorkInEveryBuild) {
  // A CUDA build on a machine without a GPU must still run CPU work.
  Tensor a = arange(0.0, 6.0, 1.0, DType::f32).reshape({2, 3});
  Tensor b = (a * 2.0).sum();
  EXPECT_DOUBLE_EQ(b.item(), 30.0);
}

TEST(Runtime, UnrecordedEventIsDoneAndMoveOnly) {
  Event e;
  EXPECT_FALSE(e.recorded());
  EXPECT_TRUE(e.query());
  EXPECT_NO_THROW(e.synchronize());
  Event moved(std::move(e));
  EXPECT_FALSE(moved.recorded());
  static_assert(!std::is_copy_constructible_v<Event>, "Event is move-only");
  static_assert(!std::is_copy_constructible_v<Stream>, "Stream is move-only");
  static_assert(std::is_move_constructible_v<Stream>, "Stream is movable");
}

// --------------------------------------------------------------------------------- GPU only

TEST(RuntimeGpu, DeviceInfoIsPlausible) {
  LOWBIT_SKIP_WITHOUT_GPU();
  const DeviceInfo& info = device_info(0);
  EXPECT_EQ(info.index, 0);
  EXPECT_FALSE(info.name.empty());
  EXPECT_GE(info.major, 7);
  EXPECT_GT(info.sm_count, 0);
  EXPECT_GT(info.total_memory, size_t(1) << 30);
  EXPECT_TRUE(no_device_reason().empty());
  EXPECT_THROW(device_info(device_count()), Error);
}

TEST(RuntimeGpu, DefaultStreamIsLowbitsOwnAndShared) {
  LOWBIT_SKIP_WITHOUT_GPU();
  Stream& s = current_stream(0);
  EXPECT_NE(s.handle(), nullptr) << "never the legacy default stream (handle 0)";
  EXPECT_EQ(s.device(), 0);
  EXPECT_EQ(&current_stream(0), &s);
  void* other_thread_stream = nullptr;
  std::thread t([&] { other_thread_stream = current_stream(0).handle(); });
  t.join();
  EXPECT_EQ(other_thread_stream, s.handle());
}

TEST(RuntimeGpu, StreamGuardSetsAndRestoresPerThread) {
  LOWBIT_SKIP_WITHOUT_GPU();
  void* before = current_stream(0).handle();
  Stream mine(0);
  EXPECT_NE(mine.handle(), before);
  {
    StreamGuard guard(mine);
    EXPECT_EQ(current_stream(0).handle(), mine.handle());
    void* seen_by_other = nullptr;
    std::thread t([&] { seen_by_other = current_stream(0).handle(); });
    t.join();
    EXPECT_EQ(seen_by_other, before) << "a guard changes only its own thread";
    {
      Stream inner(0);
      StreamGuard guard2(inner);
      EXPECT_EQ(current_stream(0).handle(), inner.handle());
    }
    EXPECT_EQ(current_stream(0).handle(), mine.handle());
  }
  EXPECT_EQ(current_stream(0).handle(), before);
}

TEST(RuntimeGpu, StreamMoveTransfersOwnership) {
  LOWBIT_SKIP_WITHOUT_GPU();
  Stream a(0);
  void* h = a.handle();
  Stream b(std::move(a));
  EXPECT_EQ(b.handle(), h);
  EXPECT_EQ(a.handle(), nullptr);  // NOLINT(bugprone-use-after-move): checking the moved-from state
  Stream c(0);
  c = std::move(b);
  EXPECT_EQ(c.handle(), h);
  EXPECT_THROW(b.synchronize(), Error);
  c.synchronize();
  EXPECT_TRUE(c.query());
}

TEST(RuntimeGpu, EventsOrderWorkAndTime) {
  LOWBIT_SKIP_WITHOUT_GPU();
  Event start(true), end(true);
  Stream& s = current_stream(0);
  start.record(s);
  Tensor x = ones({1 << 20}, TensorOptions(DType::f32, Device::cuda()));
  Tensor y = (x * 3.0).sum();
  end.record(s);
  end.synchronize();
  EXPECT_TRUE(end.query());
  EXPECT_GE(start.elapsed_ms(end), 0.0f);
  EXPECT_DOUBLE_EQ(y.item(), 3.0 * (1 << 20));
  Event untimed;
  untimed.record(s);
  EXPECT_THROW(untimed.elapsed_ms(end), Error);
}

TEST(RuntimeGpu, StreamWaitOrdersAcrossStreams) {
  LOWBIT_SKIP_WITHOUT_GPU();
  Stream side(0);
  Tensor x;
  {
    StreamGuard guard(side);
    x = full({1 << 16}, 2.0, TensorOptions(DType::f32, Device::cuda()));
  }
  Event ready;
  ready.record(side);
  current_stream(0).wait(ready);
  Tensor y = x * 2.0;  // on the default stream, after the fill on `side`
  EXPECT_DOUBLE_EQ(y.sum().item(), 4.0 * (1 << 16));
}

TEST(RuntimeGpu, OpsOnAGuardedStreamMatchTheDefault) {
  LOWBIT_SKIP_WITHOUT_GPU();
  Tensor a = arange(0.0, 1000.0, 1.0, TensorOptions(DType::f32, Device::cuda()));
  Tensor expect = (a * a).sum();
  Stream mine(0);
  current_stream(0).synchronize();  // `a` was written on the default stream
  Tensor got;
  {
    StreamGuard guard(mine);
    got = (a * a).sum();
    mine.synchronize();
  }
  EXPECT_TENSOR_NEAR(got, expect, 0.0, 0.0);
}

TEST(DeviceAllocatorGpu, ReusesBlocksAndTracksStats) {
  LOWBIT_SKIP_WITHOUT_GPU();
  CachingAllocator& a = device_allocator(0);
  void* stream = current_stream(0).handle();
  const auto before = a.stats();
  void* p = a.allocate(3000, stream);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(a.stats().allocated_bytes, before.allocated_bytes + 3072);
  a.deallocate(p);
  const auto mid = a.stats();
  void* q = a.allocate(3000, stream);
  EXPECT_EQ(q, p);
  EXPECT_EQ(a.stats().num_raw_allocs, mid.num_raw_allocs);
  a.deallocate(q);
  EXPECT_EQ(a.stats().allocated_bytes, before.allocated_bytes);
}

TEST(DeviceAllocatorGpu, SteadyStateTensorLoopMakesNoRawAllocations) {
  LOWBIT_SKIP_WITHOUT_GPU();
  const TensorOptions o(DType::f32, Device::cuda());
  auto step = [&] {
    Tensor x = randn({256, 128}, o);
    Tensor w = randn({128, 64}, o);
    Tensor y = relu(matmul(x, w));
    return y.sum();
  };
  step().item();  // warm up: fills the cache (and the cuBLAS workspace)
  const int64_t raw = device_allocator(0).stats().num_raw_allocs;
  for (int i = 0; i < 10; ++i) step().item();
  EXPECT_EQ(device_allocator(0).stats().num_raw_allocs, raw);
}

TEST(DeviceAllocatorGpu, EmptyCacheReturnsMemory) {
  LOWBIT_SKIP_WITHOUT_GPU();
  CachingAllocator& a = device_allocator(0);
  { Tensor big = empty({64 << 20}, TensorOptions(DType::u8, Device::cuda())); }
  current_stream(0).synchronize();
  const auto cached = a.stats();
  EXPECT_GE(cached.reserved_bytes - cached.allocated_bytes, int64_t(64) << 20);
  a.empty_cache();
  const auto after = a.stats();
  EXPECT_EQ(after.reserved_bytes, after.allocated_bytes);
  EXPECT_GT(after.num_raw_frees, cached.num_raw_frees);
}

TEST(DeviceAllocatorGpu, HugeAllocationFailsWithAClearError) {
  LOWBIT_SKIP_WITHOUT_GPU();
  const size_t too_big = device_info(0).total_memory * 4;
  try {
    device_allocator(0).allocate(too_big, current_stream(0).handle());
    FAIL() << "expected out of memory";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("out of memory"), std::string::npos) << e.what();
  }
  // The failed cudaMalloc must not leak into the next launch check.
  Tensor x = ones({16}, TensorOptions(DType::f32, Device::cuda()));
  EXPECT_DOUBLE_EQ((x + x).sum().item(), 32.0);
}

TEST(PinnedGpu, RoundTripThroughPinnedMemory) {
  LOWBIT_SKIP_WITHOUT_GPU();
  core::DeviceBackend& b = core::cuda_backend(0);
  const size_t n = 1 << 16;
  auto* host = static_cast<float*>(b.allocate_pinned(n * sizeof(float)));
  ASSERT_NE(host, nullptr);
  EXPECT_TRUE(pinned_host_allocator().owns(host));
  for (size_t i = 0; i < n; ++i) host[i] = float(i) * 0.5f;
  void* dev = b.allocate(0, n * sizeof(float));
  b.copy(dev, Device::cuda(0), host, Device::cpu(), n * sizeof(float));
  // Freed right after the async copy: the block must not be reused until the copy is done.
  b.deallocate_pinned(host);
  auto* again = static_cast<float*>(b.allocate_pinned(n * sizeof(float)));
  std::memset(again, 0, n * sizeof(float));
  std::vector<float> back(n);
  b.copy(back.data(), Device::cpu(), dev, Device::cuda(0), n * sizeof(float));
  for (size_t i = 0; i < n; i += 997) EXPECT_EQ(back[i], float(i) * 0.5f) << i;
  b.deallocate_pinned(again);
  b.deallocate(0, dev);
}

TEST(PinnedGpu, MemsetAndSynchronize) {
  LOWBIT_SKIP_WITHOUT_GPU();
  core::DeviceBackend& b = core::cuda_backend(0);
  std::vector<int32_t> host(1000, 7);
  void* dev = b.allocate(0, host.size() * sizeof(int32_t));
  b.copy(dev, Device::cuda(0), host.data(), Device::cpu(), host.size() * sizeof(int32_t));
  b.memset_zero(0, dev, 400 * sizeof(int32_t));
  b.synchronize(0);
  std::vector<int32_t> back(1000, -1);
  b.copy(back.data(), Device::cpu(), dev, Device::cuda(0), back.size() * sizeof(int32_t));
  EXPECT_EQ(back[0], 0);
  EXPECT_EQ(back[399], 0);
  EXPECT_EQ(back[400], 7);
  EXPECT_EQ(back[999], 7);
  b.deallocate(0, dev);
}

TEST(DeviceAllocator, WithoutGpuThrowsClearly) {
  if (device_count() > 0) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_THROW(device_allocator(0), Error);
  EXPECT_THROW(pinned_host_allocator(), Error);
}

}  // namespace
}  // namespace lowbit::cuda
