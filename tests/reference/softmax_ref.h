// Naive reference for softmax/log_softmax along one dim, in double. log_softmax is
// x - log(sum(exp(x - max))) - max, the form that stays finite for large |x|.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "tests/reference/ref_array.h"

namespace lowbit::reference {

inline Array softmax(const Array& x, int64_t dim, bool log) {
  Array out = x;
  const int64_t len = x.shape[size_t(dim)];
  for (int64_t l = 0; l < numel(x.shape); ++l) {
    Dims idx = unravel_index(l, x.shape);
    if (idx[size_t(dim)] != 0) continue;  // one pass per row, from its first element
    std::vector<double> row(static_cast<size_t>(len), 0.0);
    for (int64_t j = 0; j < len; ++j) {
      idx[size_t(dim)] = j;
      row[size_t(j)] = x.at(idx);
    }
    double mx = -INFINITY;
    for (double v : row) mx = v > mx ? v : mx;
    double s = 0.0;
    for (double v : row) s += std::exp(v - mx);
    for (int64_t j = 0; j < len; ++j) {
      idx[size_t(dim)] = j;
      const double v = row[size_t(j)];
      out.at(idx) = log ? v - mx - std::log(s) : std::exp(v - mx) / s;
    }
  }
  return out;
}

}  // namespace lowbit::reference
