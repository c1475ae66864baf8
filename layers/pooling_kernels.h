// The per-element pooling kernels, as templates over the element type: included by
// pooling.cpp (CPU loop) and pooling.cu (CUDA grid), which only differ in the launch.
#pragma once

#include <cstdint>

#include "core/hd.h"
#include "layers/pooling.h"

namespace lowbit::layers::detail {

template <typename T>
struct MaxPoolForward {
  PoolGeom g;
  const T* x;
  T* y;
  int64_t* argmax;
  LOWBIT_HD void operator()(int64_t i) const {
    const int64_t c = i % g.c, q = (i / g.c) % g.q, p = (i / (g.c * g.q)) % g.p;
    const int64_t n = i / (g.c * g.q * g.p);
    int64_t hl, hh, wl, wh;
    pool_window(p, g.sh, g.ph, g.kh, g.h, &hl, &hh);
    pool_window(q, g.sw, g.pw, g.kw, g.w, &wl, &wh);
    using A = opmath_t<T>;
    int64_t best = hl * g.w + wl;
    A best_v = A(x[((n * g.h + hl) * g.w + wl) * g.c + c]);
    for (int64_t hh2 = hl; hh2 < hh; ++hh2) {
      for (int64_t ww = wl; ww < wh; ++ww) {
        const A v = A(x[((n * g.h + hh2) * g.w + ww) * g.c + c]);
        if (v > best_v || v != v) {  // NaN wins, as PyTorch
          best_v = v;
          best = hh2 * g.w + ww;
          if (v != v) return write(i, best, v);
        }
      }
    }
    write(i, best, best_v);
  }
  LOWBIT_HD void write(int64_t i, int64_t idx, opmath_t<T> v) const {
    y[i] = T(v);
    argmax[i] = idx;
  }
};

template <typename T>
struct MaxPoolBackward {
  PoolGeom g;
  const T* dy;
  const int64_t* argmax;
  T* dx;
  LOWBIT_HD void operator()(int64_t i) const {
    const int64_t c = i % g.c, w = (i / g.c) % g.w, h = (i / (g.c * g.w)) % g.h;
    const int64_t n = i / (g.c * g.w * g.h);
    int64_t pl, ph, ql, qh;
    pool_covering(h, g.sh, g.ph, g.kh, g.p, &pl, &ph);
    pool_covering(w, g.sw, g.pw, g.kw, g.q, &ql, &qh);
    const int64_t me = h * g.w + w;
    opmath_t<T> acc = 0;
    for (int64_t p = pl; p < ph; ++p) {
      for (int64_t q = ql; q < qh; ++q) {
        const int64_t o = ((n * g.p + p) * g.q + q) * g.c + c;
        if (argmax[o] == me) acc += opmath_t<T>(dy[o]);
      }
    }
    dx[i] = T(acc);
  }
};

template <typename T>
struct AvgPoolForward {
  PoolGeom g;
  const T* x;
  T* y;
  LOWBIT_HD void operator()(int64_t i) const {
    const int64_t c = i % g.c, q = (i / g.c) % g.q, p = (i / (g.c * g.q)) % g.p;
    const int64_t n = i / (g.c * g.q * g.p);
    int64_t hl, hh, wl, wh;
    pool_window(p, g.sh, g.ph, g.kh, g.h, &hl, &hh);
    pool_window(q, g.sw, g.pw, g.kw, g.w, &wl, &wh);
    opmath_t<T> acc = 0;
    for (int64_t a = hl; a < hh; ++a)
      for (int64_t b = wl; b < wh; ++b) acc += opmath_t<T>(x[((n * g.h + a) * g.w + b) * g.c + c]);
    y[i] = T(acc / opmath_t<T>(avg_divisor(g, p, q)));
  }
};

template <typename T>
struct AvgPoolBackward {
  PoolGeom g;
  const T* dy;
  T* dx;
  LOWBIT_HD void operator()(int64_t i) const {
    const int64_t c = i % g.c, w = (i / g.c) % g.w, h = (i / (g.c * g.w)) % g.h;
    const int64_t n = i / (g.c * g.w * g.h);
    int64_t pl, ph, ql, qh;
    pool_covering(h, g.sh, g.ph, g.kh, g.p, &pl, &ph);
    pool_covering(w, g.sw, g.pw, g.kw, g.q, &ql, &qh);
    opmath_t<T> acc = 0;
    for (int64_t p = pl; p < ph; ++p)
      for (int64_t q = ql; q < qh; ++q)
        acc += opmath_t<T>(dy[((n * g.p + p) * g.q + q) * g.c + c]) /
               opmath_t<T>(avg_divisor(g, p, q));
    dx[i] = T(acc);
  }
};

}  // namespace lowbit::layers::detail
