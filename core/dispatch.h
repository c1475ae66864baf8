// DispatchStub: one function pointer per backend for each kernel entry point, as PyTorch's
// DispatchStub. The op's .cpp defines the stub and fills the CPU slot; its CUDA twin (cuda/*.cu
// for core/, the op's own .cu elsewhere) fills the CUDA slot with a static registrar. A stub is
// constant-initialised, so registration order cannot matter. Every CPU/CUDA choice of a kernel
// goes through a stub: a CPU-only build compiles no .cu file, leaves the CUDA slots empty and
// answers a CUDA tensor with kBuiltWithoutCuda, with no #if at the call site.
#pragma once

#include "core/device.h"
#include "core/error.h"

namespace lowbit::core {

// The one wording of "this build has no CUDA", for the stubs and for the runtime plumbing
// (core/backend.cpp, cuda/runtime.cpp, cuda/caching_allocator.cpp).
inline constexpr const char kBuiltWithoutCuda[] =
    "lowbit was built without CUDA (configure with -DLOWBIT_CUDA=ON where the CUDA toolkit is "
    "installed)";

template <typename Fn>
struct DispatchStub {
  using fn_type = Fn;
  const char* name;
  Fn cpu = nullptr;
  Fn cuda = nullptr;

  constexpr explicit DispatchStub(const char* n) : name(n) {}

  Fn get(Device d) const {
    Fn f = d.is_cuda() ? cuda : cpu;
    LOWBIT_CHECK(f != nullptr, name, ": a tensor on ", d, " but ",
                 d.is_cuda() ? kBuiltWithoutCuda : "no CPU kernel is registered");
    return f;
  }
  template <typename... Args>
  auto operator()(Device d, Args&&... args) const {
    return get(d)(std::forward<Args>(args)...);
  }
};

struct StubRegistrar {
  template <typename Stub, typename Fn>
  StubRegistrar(Stub& stub, DeviceType type, Fn fn) {
    (type == DeviceType::cuda ? stub.cuda : stub.cpu) = fn;
  }
};

}  // namespace lowbit::core

#define LOWBIT_DECLARE_STUB(stub, fn_type) extern ::lowbit::core::DispatchStub<fn_type> stub
#define LOWBIT_DEFINE_STUB(stub) \
  decltype(stub) stub { #stub }
#define LOWBIT_REGISTER_CAT2(a, b) a##b
#define LOWBIT_REGISTER_CAT(a, b) LOWBIT_REGISTER_CAT2(a, b)
#define LOWBIT_REGISTER_KERNEL(stub, device_type, fn)                              \
  static ::lowbit::core::StubRegistrar LOWBIT_REGISTER_CAT(lowbit_reg_, __LINE__)( \
      stub, ::lowbit::DeviceType::device_type, fn)
