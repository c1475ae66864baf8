// Naive convolution and pooling references in double (Caffe's caffe_conv is the model): plain
// loops over NHWC activations and KRSC weights, calling nothing under test.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace lowbit::reference {

struct ConvGeometry {
  int64_t n, h, w, c, k, r, s;
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1, groups = 1;
  int64_t out_h() const { return (h + 2 * pad_h - dil_h * (r - 1) - 1) / stride_h + 1; }
  int64_t out_w() const { return (w + 2 * pad_w - dil_w * (s - 1) - 1) / stride_w + 1; }
};

// y[n][p][q][k] = b[k] + sum_{r,s,c in group} x[n][p*sh - ph + r*dh][q*sw - pw + s*dw][c]
// w[k][r][s][c']
inline std::vector<double> conv2d_nhwc(const ConvGeometry& g, const std::vector<double>& x,
                                       const std::vector<double>& w, const std::vector<double>& b) {
  const int64_t P = g.out_h(), Q = g.out_w();
  const int64_t cg = g.c / g.groups, kg = g.k / g.groups;
  std::vector<double> y(size_t(g.n * P * Q * g.k), 0.0);
  for (int64_t n = 0; n < g.n; ++n)
    for (int64_t p = 0; p < P; ++p)
      for (int64_t q = 0; q < Q; ++q)
        for (int64_t k = 0; k < g.k; ++k) {
          const int64_t grp = k / kg;
          double acc = b.empty() ? 0.0 : b[size_t(k)];
          for (int64_t r = 0; r < g.r; ++r)
            for (int64_t s = 0; s < g.s; ++s) {
              const int64_t hi = p * g.stride_h - g.pad_h + r * g.dil_h;
              const int64_t wi = q * g.stride_w - g.pad_w + s * g.dil_w;
              if (hi < 0 || hi >= g.h || wi < 0 || wi >= g.w) continue;
              for (int64_t c = 0; c < cg; ++c) {
                acc += x[size_t(((n * g.h + hi) * g.w + wi) * g.c + grp * cg + c)] *
                       w[size_t(((k * g.r + r) * g.s + s) * cg + c)];
              }
            }
          y[size_t(((n * P + p) * Q + q) * g.k + k)] = acc;
        }
  return y;
}

// Max (or average) pooling over NHWC with clipped windows.
inline std::vector<double> pool2d_nhwc(int64_t n, int64_t h, int64_t w, int64_t c, int64_t k,
                                       int64_t stride, int64_t pad, bool max, bool include_pad,
                                       const std::vector<double>& x, int64_t* out_h,
                                       int64_t* out_w) {
  const int64_t P = (h + 2 * pad - k) / stride + 1, Q = (w + 2 * pad - k) / stride + 1;
  *out_h = P;
  *out_w = Q;
  std::vector<double> y(size_t(n * P * Q * c));
  for (int64_t b = 0; b < n; ++b)
    for (int64_t p = 0; p < P; ++p)
      for (int64_t q = 0; q < Q; ++q)
        for (int64_t ch = 0; ch < c; ++ch) {
          double acc = max ? -std::numeric_limits<double>::infinity() : 0.0;
          int64_t count = 0;
          for (int64_t i = 0; i < k; ++i)
            for (int64_t j = 0; j < k; ++j) {
              const int64_t hi = p * stride - pad + i, wi = q * stride - pad + j;
              if (hi < 0 || hi >= h || wi < 0 || wi >= w) continue;
              const double v = x[size_t(((b * h + hi) * w + wi) * c + ch)];
              acc = max ? std::max(acc, v) : acc + v;
              ++count;
            }
          if (!max) acc /= double(include_pad ? k * k : count);
          y[size_t(((b * P + p) * Q + q) * c + ch)] = acc;
        }
  return y;
}

}  // namespace lowbit::reference
