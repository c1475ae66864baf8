// DispatchStub: one function pointer per backend for each kernel entry point, as PyTorch's
// DispatchStub. core/ defines the stub and fills the CPU slot; cuda/ fills the CUDA slot with a
// static registrar. A stub is constant-initialised, so registration order cannot matter.
#pragma once

#include "core/device.h"
#include "core/error.h"

namespace lowbit::core {

template <typename Fn>
struct DispatchStub {
  using fn_type = Fn;
  const char* name;
  Fn cpu = nullptr;
  Fn cuda = nullptr;

  constexpr explicit DispatchStub(const char* n) : name(n) {}

  Fn get(Device d) const {
    Fn f = d.is_cuda() ? cuda : cpu;
    LOWBIT_CHECK(f != nullptr, name, ": no kernel for device ", d,
                 d.is_cuda() ? " (lowbit was built without CUDA)" : "");
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
#define LOWBIT_DEFINE_STUB(stub) decltype(stub) stub{#stub}
#define LOWBIT_REGISTER_CAT2(a, b) a##b
#define LOWBIT_REGISTER_CAT(a, b) LOWBIT_REGISTER_CAT2(a, b)
#define LOWBIT_REGISTER_KERNEL(stub, device_type, fn)                              \
  static ::lowbit::core::StubRegistrar LOWBIT_REGISTER_CAT(lowbit_reg_, __LINE__)( \
      stub, ::lowbit::DeviceType::device_type, fn)
