// DispatchStub: the slot a device picks, and the one "built without CUDA" wording when a slot
// is empty (what a CPU-only build answers for every CUDA kernel, core/dispatch.h).
#include "core/dispatch.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/backend.h"
#include "tests/common/test_util.h"

namespace lowbit::core {
namespace {

using ::testing::HasSubstr;

using AddFn = int (*)(int a, int b);
int add_cpu(int a, int b) { return a + b; }
int add_cuda(int a, int b) { return 10 * (a + b); }

TEST(DispatchStub, PicksTheSlotOfTheDevice) {
  DispatchStub<AddFn> stub{"add_stub"};
  StubRegistrar cpu(stub, DeviceType::cpu, &add_cpu);
  StubRegistrar cuda(stub, DeviceType::cuda, &add_cuda);
  EXPECT_EQ(stub(Device::cpu(), 1, 2), 3);
  EXPECT_EQ(stub(Device::cuda(0), 1, 2), 30);  // the stub only picks: no device is touched
}

TEST(DispatchStub, AnEmptyCudaSlotSaysBuiltWithoutCuda) {
  DispatchStub<AddFn> stub{"add_stub"};
  StubRegistrar cpu(stub, DeviceType::cpu, &add_cpu);
  const std::string msg = testing::error_of([&] { stub(Device::cuda(1), 1, 2); });
  EXPECT_THAT(msg, HasSubstr("add_stub: a tensor on cuda:1 but "));
  EXPECT_THAT(msg, HasSubstr(kBuiltWithoutCuda));
}

TEST(DispatchStub, AnEmptyCpuSlotIsNamed) {
  DispatchStub<AddFn> stub{"add_stub"};
  EXPECT_THAT(testing::error_of([&] { stub(Device::cpu(), 1, 2); }),
              HasSubstr("add_stub: a tensor on cpu but no CPU kernel is registered"));
}

TEST(DispatchStub, TheRuntimeSaysTheSameSentence) {
  if (cuda_backend_or_null() != nullptr) GTEST_SKIP() << "built with CUDA";
  EXPECT_THAT(testing::error_of([] { cuda_backend(0); }), HasSubstr(kBuiltWithoutCuda));
}

}  // namespace
}  // namespace lowbit::core
