// LOWBIT_HD and the 16-bit float types shared by both backends.
// bf16 and f16 are plain 16-bit structs with bit-exact, round-to-nearest-even conversions written
// once as __host__ __device__ code, so the CPU and CUDA kernels convert identically. Arithmetic
// is always done in float: load, convert, compute, convert back.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LOWBIT_HD __host__ __device__ __forceinline__
#define LOWBIT_DEVICE_CODE 1
#else
#define LOWBIT_HD inline
#endif

namespace lowbit {

namespace detail {
LOWBIT_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
LOWBIT_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}
}  // namespace detail

struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  LOWBIT_HD explicit bf16(float f) : bits(from_float(f)) {}
  LOWBIT_HD operator float() const { return detail::bits_float(uint32_t(bits) << 16); }
  LOWBIT_HD static uint16_t from_float(float f) {
    uint32_t u = detail::float_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
    uint32_t rounding_bias = 0x7fffu + ((u >> 16) & 1u);                     // half to even
    return uint16_t((u + rounding_bias) >> 16);
  }
};

struct f16 {
  uint16_t bits = 0;
  f16() = default;
  LOWBIT_HD explicit f16(float f) : bits(from_float(f)) {}
  LOWBIT_HD operator float() const { return to_float(bits); }

  // IEEE binary16 <- binary32, round half to even, overflow to inf, NaN preserved.
  LOWBIT_HD static uint16_t from_float(float f) {
    uint32_t x = detail::float_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx > 0x7f800000u) return uint16_t(sign | 0x7e00u);   // NaN
    if (absx >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf
    if (absx < 0x38800000u) {                                  // below 2^-14: subnormal or 0
      // value = absx as float; subnormal unit is 2^-24. Round mantissa half to even.
      int32_t e = int32_t(absx >> 23);
      if (e < 102) return uint16_t(sign);  // < 2^-25: rounds to zero
      uint32_t mant = (absx & 0x7fffffu) | 0x800000u;
      int32_t shift = 126 - e;  // value = mant * 2^(e-150) = q * 2^-24
      uint32_t q = mant >> shift;
      uint32_t rem = mant & ((1u << shift) - 1u);
      uint32_t half = 1u << (shift - 1);
      if (rem > half || (rem == half && (q & 1u))) ++q;
      return uint16_t(sign | q);
    }
    uint32_t mant = absx & 0x7fffffu;
    uint32_t exp = (absx >> 23) - 112;  // rebias 127 -> 15
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // may carry into exponent: fine
    return uint16_t(sign | h);
  }
  LOWBIT_HD static float to_float(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t out;
    if (exp == 0x1fu) {
      out = sign | 0x7f800000u | (mant << 13);
    } else if (exp == 0) {
      if (mant == 0) {
        out = sign;
      } else {  // subnormal: normalise
        int32_t e = -1;
        do {
          ++e;
          mant <<= 1;
        } while ((mant & 0x400u) == 0);
        out = sign | (uint32_t(112 - e) << 23) | ((mant & 0x3ffu) << 13);
      }
    } else {
      out = sign | ((exp + 112) << 23) | (mant << 13);
    }
    return detail::bits_float(out);
  }
};

// The type arithmetic runs in: float for the 16-bit floats, the type itself otherwise.
template <typename T>
struct OpMath {
  using type = T;
};
template <>
struct OpMath<bf16> {
  using type = float;
};
template <>
struct OpMath<f16> {
  using type = float;
};
template <typename T>
using opmath_t = typename OpMath<T>::type;

// Converts between storage types through float where a 16-bit float is involved.
template <typename To, typename From>
LOWBIT_HD To convert(From v) {
  return To(opmath_t<From>(v));
}
template <>
LOWBIT_HD bf16 convert<bf16, bf16>(bf16 v) {
  return v;
}
template <>
LOWBIT_HD f16 convert<f16, f16>(f16 v) {
  return v;
}

}  // namespace lowbit
