#include "core/backend.h"

#include "core/dispatch.h"
#include "core/error.h"

namespace lowbit::core {

namespace {
DeviceBackend*& backend_slot() {
  static DeviceBackend* backend = nullptr;
  return backend;
}
}  // namespace

DeviceBackend* cuda_backend_or_null() { return backend_slot(); }

void register_cuda_backend(DeviceBackend* backend) { backend_slot() = backend; }

int cuda_device_count() {
  DeviceBackend* b = backend_slot();
  return b ? b->device_count() : 0;
}

DeviceBackend& cuda_backend(int device) {
  DeviceBackend* b = backend_slot();
  LOWBIT_CHECK(b != nullptr, "a CUDA tensor was requested but ", kBuiltWithoutCuda);
  if (device >= 0) {
    const int n = b->device_count();
    LOWBIT_CHECK(device < n, "CUDA device ", device, " requested but ", n, " device(s) are visible",
                 n == 0 ? " (no GPU or no driver here)" : "");
  }
  return *b;
}

}  // namespace lowbit::core
