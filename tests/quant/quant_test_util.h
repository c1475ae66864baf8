// Helpers shared by the quant tests: the channel of an element for per-channel quantization,
// and small constructors.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "tests/common/test_util.h"

namespace lowbit::quant::testing_util {

// Channel (index along axis) of the element at row-major linear index i of shape.
inline int64_t channel_of(const Shape& shape, int64_t axis, int64_t i) {
  const int64_t d = int64_t(shape.size());
  const int64_t a = axis < 0 ? axis + d : axis;
  int64_t inner = 1;
  for (int64_t k = a + 1; k < d; ++k) inner *= shape[size_t(k)];
  return (i / inner) % shape[size_t(a)];
}

// One error_of for every suite (tests/common/test_util.h).
using ::lowbit::testing::error_of;

}  // namespace lowbit::quant::testing_util
