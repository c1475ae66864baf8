// Test helpers shared by every suite: tensor comparison with a useful failure message, the GPU
// skip macro, and small constructors. GPU parity tests live in suites whose name ends in "Gpu"
// (e.g. TEST(ElementwiseGpu, AddMatchesCpu)); CMake labels exactly those `gpu`.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "core/ops.h"
#include "core/tensor.h"

namespace lowbit::testing {

inline bool gpu_available() { return core::cuda_device_count() > 0; }

// Success when a DispatchStub (core/dispatch.h) has its CPU kernel, and its CUDA kernel exactly
// when this binary was built with CUDA (the CUDA backend registered itself): the .cu registrars
// were linked in, and a CPU-only build leaves the slot empty.
template <typename Stub>
::testing::AssertionResult has_kernels_of_this_build(const Stub& stub) {
  const bool with_cuda = core::cuda_backend_or_null() != nullptr;
  if (stub.cpu == nullptr) return ::testing::AssertionFailure() << stub.name << ": no CPU kernel";
  if ((stub.cuda != nullptr) != with_cuda) {
    return ::testing::AssertionFailure()
           << stub.name
           << (with_cuda ? ": no CUDA kernel in a CUDA build (registrar not linked?)"
                         : ": a CUDA kernel in a CPU-only build");
  }
  return ::testing::AssertionSuccess();
}

// Compares two tensors of the same shape (any dtypes/devices) elementwise in double:
// |a - b| <= atol + rtol * |b|. On failure names the worst index, both values and the error.
::testing::AssertionResult tensor_near(const char* a_expr, const char* b_expr, const char*,
                                       const char*, const Tensor& a, const Tensor& b, double rtol,
                                       double atol);

// Host copy as doubles (contiguous, row-major).
std::vector<double> to_doubles(const Tensor& t);
// A tensor from doubles, cast to dtype.
Tensor tensor_of(const std::vector<double>& values, const Shape& shape, DType dtype = DType::f32);
// A non-contiguous tensor with the same values as `t`: stored transposed (last two dims
// swapped), then viewed back. Used to feed ops strided inputs.
Tensor non_contiguous_copy(const Tensor& t);
// Multi-index <-> linear index over a shape.
std::vector<int64_t> unravel(int64_t linear, const Shape& shape);
int64_t ravel(const std::vector<int64_t>& idx, const Shape& shape);

// The message of the lowbit::Error that f throws, or "<no error>" (for EXPECT_THAT + HasSubstr).
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

// Runs a shell command (the Python reference and interop tests); its exit status (-1 when it did
// not exit normally) and its stdout and stderr together.
std::pair<int, std::string> run_command(const std::string& cmd);

}  // namespace lowbit::testing

#define EXPECT_TENSOR_NEAR(a, b, rtol, atol) \
  EXPECT_PRED_FORMAT4(::lowbit::testing::tensor_near, a, b, rtol, atol)
#define ASSERT_TENSOR_NEAR(a, b, rtol, atol) \
  ASSERT_PRED_FORMAT4(::lowbit::testing::tensor_near, a, b, rtol, atol)

#define LOWBIT_SKIP_WITHOUT_GPU()                                                        \
  do {                                                                                   \
    if (!::lowbit::testing::gpu_available()) {                                           \
      GTEST_SKIP() << "no CUDA device: lowbit built without CUDA or no GPU/driver here"; \
    }                                                                                    \
  } while (0)
