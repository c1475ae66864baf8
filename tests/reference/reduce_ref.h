// Naive references for the reductions of core/ops.h: every output element walks every input
// element and keeps those that map to it. O(out * in): for the small shapes of the tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "tests/reference/ref_array.h"

namespace lowbit::reference {

enum class Reduce { sum, mean, var_unbiased, var_biased, max, min, argmax, argmin };

// Reduces x over `dims` (non-negative, any order; empty: every dim). keepdim keeps the reduced
// dims with size 1. max/min propagate NaN; argmax/argmin give the first index of the extreme
// along the single reduced dim (or the flat index when reducing several).
inline Array reduce(const Array& x, Reduce op, std::vector<int64_t> dims, bool keepdim) {
  const int64_t n = x.dim();
  std::vector<bool> red(size_t(n), dims.empty());
  for (int64_t d : dims) red[size_t(d)] = true;
  Dims keep_shape, out_shape;
  for (int64_t d = 0; d < n; ++d) {
    keep_shape.push_back(red[size_t(d)] ? 1 : x.shape[size_t(d)]);
    if (!red[size_t(d)] || keepdim) out_shape.push_back(keep_shape.back());
  }
  const int64_t m = numel(keep_shape);
  std::vector<std::vector<double>> rows(static_cast<size_t>(m), std::vector<double>());
  for (int64_t l = 0; l < numel(x.shape); ++l) {
    Dims idx = unravel_index(l, x.shape);
    for (int64_t d = 0; d < n; ++d) {
      if (red[size_t(d)]) idx[size_t(d)] = 0;
    }
    rows[size_t(ravel_index(idx, keep_shape))].push_back(x.data[size_t(l)]);
  }
  Array out = Array::filled(out_shape, 0.0);
  for (int64_t r = 0; r < m; ++r) {
    const std::vector<double>& v = rows[size_t(r)];
    const double cnt = double(v.size());
    double res = 0.0;
    switch (op) {
      case Reduce::sum:
      case Reduce::mean: {
        for (double e : v) res += e;
        if (op == Reduce::mean) res /= cnt;
        break;
      }
      case Reduce::var_unbiased:
      case Reduce::var_biased: {
        double mu = 0.0;
        for (double e : v) mu += e;
        mu /= cnt;
        for (double e : v) res += (e - mu) * (e - mu);
        res /= (op == Reduce::var_unbiased ? cnt - 1.0 : cnt);
        break;
      }
      case Reduce::max:
      case Reduce::min:
      case Reduce::argmax:
      case Reduce::argmin: {
        const bool want_max = op == Reduce::max || op == Reduce::argmax;
        size_t best = 0;
        for (size_t j = 1; j < v.size(); ++j) {
          if (std::isnan(v[best])) break;
          if (std::isnan(v[j]) || (want_max ? v[j] > v[best] : v[j] < v[best])) best = j;
        }
        res = (op == Reduce::max || op == Reduce::min) ? v[best] : double(best);
        break;
      }
    }
    out.data[size_t(r)] = res;
  }
  return out;
}

}  // namespace lowbit::reference
