// Naive references for the elementwise ops of core/ops.h: maps in double with NumPy
// broadcasting, and rounding to the storage formats (bf16, f16, f32 and the integer types)
// computed from the formats' definitions in double, not from bit tricks, so they check
// core/hd.h's conversions independently.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "tests/reference/ref_array.h"

namespace lowbit::reference {

template <typename F>
Array unary(const Array& x, F f) {
  Array out = x;
  for (double& v : out.data) v = f(v);
  return out;
}

template <typename F>
Array binary(const Array& a, const Array& b, F f) {
  if (a.shape == b.shape) {  // no broadcasting: element by element
    Array out = a;
    for (size_t i = 0; i < out.data.size(); ++i) out.data[i] = f(a.data[i], b.data[i]);
    return out;
  }
  const Dims shape = broadcast_dims(a.shape, b.shape);
  Array out = Array::filled(shape, 0.0);
  for (int64_t l = 0; l < numel(shape); ++l) {
    const Dims idx = unravel_index(l, shape);
    out.data[size_t(l)] = f(broadcast_at(a, idx), broadcast_at(b, idx));
  }
  return out;
}

inline Array where(const Array& cond, const Array& a, const Array& b) {
  const Dims shape = broadcast_dims(broadcast_dims(cond.shape, a.shape), b.shape);
  Array out = Array::filled(shape, 0.0);
  for (int64_t l = 0; l < numel(shape); ++l) {
    const Dims idx = unravel_index(l, shape);
    out.data[size_t(l)] =
        broadcast_at(cond, idx) != 0.0 ? broadcast_at(a, idx) : broadcast_at(b, idx);
  }
  return out;
}

// Round-to-nearest-even of x to a binary floating format with `sig_bits` significant bits
// (implicit bit included), smallest normal exponent `emin` (subnormals below it keep the
// quantum 2^(emin - sig_bits + 1)) and largest finite value `max_finite`; beyond it: inf.
// Uses the default rounding mode (nearest, ties to even) of std::nearbyint.
inline double round_to_format(double x, int sig_bits, int emin, double max_finite) {
  if (std::isnan(x) || std::isinf(x) || x == 0.0) return x;
  int e = 0;
  std::frexp(x, &e);  // |x| = m * 2^e, m in [0.5, 1): the leading bit has exponent e - 1
  const int lead = (e - 1) < emin ? emin : (e - 1);
  const double quantum = std::ldexp(1.0, lead - (sig_bits - 1));
  const double r = std::nearbyint(x / quantum) * quantum;
  if (std::fabs(r) > max_finite) return std::copysign(INFINITY, x);
  return r;
}

// bf16: 8 significant bits, float's exponent range.
inline double round_bf16(double x) {
  return round_to_format(x, 8, -126, std::ldexp(255.0, 120));  // (2 - 2^-7) * 2^127
}
// IEEE binary16: 11 significant bits, normals from 2^-14, largest finite 65504.
inline double round_f16(double x) { return round_to_format(x, 11, -14, 65504.0); }
// IEEE binary32.
inline double round_f32(double x) {
  return round_to_format(x, 24, -126, double(std::numeric_limits<float>::max()));
}

// Two's complement wrap-around of an integer value to `bits` bits (signed or not).
inline double wrap_int(double v, int bits, bool is_signed) {
  const double m = std::ldexp(1.0, bits);
  const double lo = is_signed ? -m / 2 : 0.0, hi = is_signed ? m / 2 : m;
  if (v >= lo && v < hi) return v;  // in range (and exact for 64 bits, where fmod would not be)
  double r = std::fmod(v, m);
  if (r < 0) r += m;
  if (is_signed && r >= m / 2) r -= m;
  return r;
}

}  // namespace lowbit::reference
