// OffsetCalc: maps a linear index over an output shape to element offsets into N strided
// operands (broadcast dims have stride 0). Plain data, usable from CPU loops and CUDA kernels.
#pragma once

#include <cstdint>
#include <vector>

#include "core/error.h"
#include "core/hd.h"

namespace lowbit::core {

constexpr int kMaxDims = 8;

template <int N>
struct OffsetCalc {
  int ndim = 0;
  bool contiguous = true;  // every operand contiguous with the output: offsets are the index
  int64_t sizes[kMaxDims] = {};
  int64_t strides[N][kMaxDims] = {};
  int64_t base[N] = {};

  LOWBIT_HD void get(int64_t linear, int64_t* out) const {
    if (contiguous) {
      for (int a = 0; a < N; ++a) out[a] = base[a] + linear;
      return;
    }
    for (int a = 0; a < N; ++a) out[a] = base[a];
    for (int d = ndim - 1; d >= 0; --d) {
      int64_t idx = linear % sizes[d];
      linear /= sizes[d];
      for (int a = 0; a < N; ++a) out[a] += idx * strides[a][d];
    }
  }
};

// Builds an OffsetCalc for operands already broadcast to `shape` (strides in elements, 0 on
// broadcast dims). Size-1 dims are dropped and adjacent dims merged where every operand allows.
template <int N>
OffsetCalc<N> make_offset_calc(const std::vector<int64_t>& shape,
                               const std::vector<std::vector<int64_t>>& strides,
                               const int64_t* offsets) {
  OffsetCalc<N> c;
  std::vector<int64_t> sz;
  std::vector<std::vector<int64_t>> st(N);
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool merge = !sz.empty();
    for (int a = 0; a < N && merge; ++a) {
      merge = st[a].back() == strides[a][d] * shape[d];
    }
    if (merge) {
      sz.back() *= shape[d];
      for (int a = 0; a < N; ++a) st[a].back() = strides[a][d];
    } else {
      sz.push_back(shape[d]);
      for (int a = 0; a < N; ++a) st[a].push_back(strides[a][d]);
    }
  }
  LOWBIT_CHECK(sz.size() <= size_t(kMaxDims), "at most ", kMaxDims,
               " non-mergeable dims are supported, got ", sz.size());
  c.ndim = int(sz.size());
  c.contiguous = c.ndim <= 1;
  for (int a = 0; a < N; ++a) {
    c.base[a] = offsets[a];
    if (c.ndim == 1 && st[a][0] != 1) c.contiguous = false;
  }
  for (int d = 0; d < c.ndim; ++d) {
    c.sizes[d] = sz[d];
    for (int a = 0; a < N; ++a) c.strides[a][d] = st[a][d];
  }
  return c;
}

}  // namespace lowbit::core
