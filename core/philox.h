// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
// counter-based generator of cuRAND and PyTorch. Element i of a random tensor is a pure
// function of (seed, offset, i), so the CPU and CUDA kernels produce identical streams and any
// element can be drawn without drawing the ones before it.
#pragma once

#include <cstdint>

#include "core/hd.h"
#include "core/math.h"

namespace lowbit::core {

struct Philox4x32 {
  uint32_t c[4];

  LOWBIT_HD static uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
    uint64_t p = uint64_t(a) * uint64_t(b);
    *hi = uint32_t(p >> 32);
    return uint32_t(p);
  }

  // counter = (c0, c1, c2, c3), key = (k0, k1).
  LOWBIT_HD static Philox4x32 generate(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                       uint32_t k0, uint32_t k1) {
    constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
    constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
    Philox4x32 r{{c0, c1, c2, c3}};
    for (int round = 0; round < 10; ++round) {
      uint32_t hi0, hi1;
      uint32_t lo0 = mulhilo(kM0, r.c[0], &hi0);
      uint32_t lo1 = mulhilo(kM1, r.c[2], &hi1);
      r.c[0] = hi1 ^ r.c[1] ^ k0;
      r.c[1] = lo1;
      r.c[2] = hi0 ^ r.c[3] ^ k1;
      r.c[3] = lo0;
      k0 += kW0;
      k1 += kW1;
    }
    return r;
  }

  // The four words for element `index` of draw number `offset` under `seed`.
  LOWBIT_HD static Philox4x32 at(uint64_t seed, uint64_t offset, uint64_t index) {
    return generate(uint32_t(index), uint32_t(index >> 32), uint32_t(offset),
                    uint32_t(offset >> 32), uint32_t(seed), uint32_t(seed >> 32));
  }
};

// Uniform in [0, 1) with 24 random bits (exact in float).
LOWBIT_HD float uint_to_unit_float(uint32_t x) { return float(x >> 8) * (1.0f / 16777216.0f); }
// Uniform in [0, 1) with 53 random bits.
LOWBIT_HD double uints_to_unit_double(uint32_t a, uint32_t b) {
  uint64_t v = (uint64_t(a) << 21) ^ uint64_t(b >> 11);
  return double(v & ((uint64_t(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

enum class RandomKind : int { uniform, normal, randint, bernoulli };

// The value of element `index` of a random tensor, in double (the kernel casts). The same
// double-precision math runs on both backends, so streams match bit for bit.
//   uniform:   U[a, b)
//   normal:    N(a, b^2) by Box-Muller on two uniforms
//   randint:   integers in [a, b)
//   bernoulli: 1 with probability a, else 0
struct RandomValue {
  uint64_t seed;
  uint64_t offset;
  RandomKind kind;
  double a;
  double b;

  LOWBIT_HD double operator()(uint64_t index) const {
    Philox4x32 r = Philox4x32::at(seed, offset, index);
    double u0 = uints_to_unit_double(r.c[0], r.c[1]);
    switch (kind) {
      case RandomKind::uniform:
        return a + (b - a) * u0;
      case RandomKind::normal: {
        double u1 = uints_to_unit_double(r.c[2], r.c[3]);
        double radius = math::sqrt(-2.0 * math::log(1.0 - u0));  // 1 - u0 in (0, 1]
        return a + b * radius * ::cos(6.283185307179586 * u1);
      }
      case RandomKind::randint: {
        uint64_t span = uint64_t(b - a);
        uint64_t bits = (uint64_t(r.c[2]) << 32) | r.c[3];
        return a + double(bits % span);
      }
      case RandomKind::bernoulli:
        return u0 < a ? 1.0 : 0.0;
    }
    return 0.0;
  }
};

}  // namespace lowbit::core
