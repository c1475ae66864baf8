#include "core/autocast.h"

#include "core/error.h"

namespace lowbit {

namespace {
thread_local std::optional<DType> g_autocast;
}  // namespace

std::optional<DType> autocast_dtype() { return g_autocast; }

AutocastGuard::AutocastGuard(std::optional<DType> dtype) : prev_(g_autocast) {
  LOWBIT_CHECK(!dtype || *dtype == DType::bf16 || *dtype == DType::f16,
               "autocast: the dtype must be bf16 or f16, got ", *dtype);
  g_autocast = dtype;
}

AutocastGuard::~AutocastGuard() { g_autocast = prev_; }

Tensor autocast_input(const Tensor& t) {
  if (!g_autocast || !t.defined() || t.dtype() != DType::f32) return t;
  return t.to(*g_autocast);
}

}  // namespace lowbit
