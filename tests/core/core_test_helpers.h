// Glue between the naive references (tests/reference/, which know nothing of lowbit) and the
// core suites: tensors to and from reference arrays, seeded random inputs, the tolerance of a
// result rounded once to its dtype, inputs in a chosen memory layout, and error-message capture.
#pragma once

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/ops.h"
#include "core/random.h"
#include "tests/common/test_util.h"
#include "tests/reference/ref_array.h"

namespace lowbit::testing {

namespace ref = ::lowbit::reference;

inline ref::Array to_ref(const Tensor& t) { return ref::Array(t.shape(), to_doubles(t)); }
inline Tensor from_ref(const ref::Array& a, DType dtype) {
  return tensor_of(a.data, a.shape, dtype);
}

// Values u(i) mapped through `f`, u uniform in [0, 1) from lowbit's Philox stream (the caller
// fixes the seed with manual_seed).
inline ref::Array random_ref(const ref::Dims& shape, const std::function<double(double)>& f) {
  std::vector<double> u = to_doubles(rand(shape, TensorOptions(DType::f64)));
  for (double& v : u) v = f(v);
  return ref::Array(shape, u);
}
inline ref::Array uniform_ref(const ref::Dims& shape, double lo, double hi) {
  return random_ref(shape, [lo, hi](double u) { return lo + (hi - lo) * u; });
}

struct Tolerance {
  double rtol;
  double atol;
};

// For a result rounded once to `dtype` from a value computed in float (or double): half an ulp
// of the format (2^-8 bf16, 2^-11 f16, 2^-24 f32) plus a few float ulps of libm error.
// Integers are exact.
inline Tolerance rounding_tolerance(DType t) {
  switch (t) {
    case DType::f64:
      return {1e-13, 1e-300};
    case DType::f32:
      return {1e-6, 1e-30};
    case DType::bf16:
      return {std::ldexp(1.0, -8) + 1e-6, 1e-30};
    case DType::f16:
      return {std::ldexp(1.0, -11) + 1e-6, std::ldexp(1.0, -25)};
    default:
      return {0.0, 0.0};
  }
}

// Memory layouts an op must read correctly. Each builds a tensor holding `values` (logically)
// from a larger buffer whose unused elements are a sentinel (NaN, or 77 for integers), so a
// kernel that reads past the view's elements produces a visibly wrong result.
enum class Layout { contiguous, strided, offset, transposed, permuted };

inline const char* layout_name(Layout l) {
  switch (l) {
    case Layout::contiguous:
      return "contiguous";
    case Layout::strided:
      return "strided (slice step 2 on the last dim)";
    case Layout::offset:
      return "offset (narrow on dim 0)";
    case Layout::transposed:
      return "transposed (last two dims)";
    case Layout::permuted:
      return "permuted (2, 0, 1)";
  }
  return "?";
}

inline Tensor make_layout(const ref::Array& v, DType dtype, Layout layout) {
  const double sentinel = is_floating(dtype) ? NAN : 77.0;
  switch (layout) {
    case Layout::contiguous:
      return from_ref(v, dtype);
    case Layout::strided: {
      ref::Dims bs = v.shape;
      const int64_t n = bs.back();
      bs.back() = 2 * n + 1;
      ref::Array base = ref::Array::filled(bs, sentinel);
      for (int64_t l = 0; l < ref::numel(v.shape); ++l) {
        ref::Dims idx = ref::unravel_index(l, v.shape);
        idx.back() *= 2;
        base.at(idx) = v.data[size_t(l)];
      }
      return from_ref(base, dtype).slice(-1, 0, 2 * n, 2);
    }
    case Layout::offset: {
      ref::Dims bs = v.shape;
      bs[0] += 3;
      ref::Array base = ref::Array::filled(bs, sentinel);
      const int64_t n = ref::numel(v.shape);
      const int64_t skip = ref::numel(bs) - n;
      for (int64_t l = 0; l < n; ++l) base.data[size_t(skip + l)] = v.data[size_t(l)];
      return from_ref(base, dtype).narrow(0, 3, v.shape[0]);
    }
    case Layout::transposed: {
      const size_t d = v.shape.size();
      ref::Dims perm(d);
      for (size_t i = 0; i < d; ++i) perm[i] = int64_t(i);
      std::swap(perm[d - 1], perm[d - 2]);
      return from_ref(ref::permute(v, perm), dtype).transpose(-1, -2);
    }
    case Layout::permuted:
      return from_ref(ref::permute(v, {2, 0, 1}), dtype).permute({1, 2, 0});
  }
  return Tensor();
}

// The what() of the lowbit::Error that `f` throws, or a note saying it threw none.
inline std::string error_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no lowbit::Error was thrown>";
}

}  // namespace lowbit::testing
