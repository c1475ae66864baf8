// Naive references for the losses of train/, in double: the definitions written out as plain
// loops (two passes per row, log-softmax with the max subtracted), calling nothing of lowbit.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace lowbit::reference {

struct CrossEntropyResult {
  double loss = 0.0;
  std::vector<double> grad;  // d loss / d logits, (N, C) row-major
};

// Mean over rows of -sum_j q_j log softmax(x)_j with q = (1 - eps) one_hot(t) + eps / C.
inline CrossEntropyResult cross_entropy(const std::vector<double>& x, int64_t n, int64_t c,
                                        const std::vector<int64_t>& target, double eps) {
  CrossEntropyResult r;
  r.grad.assign(size_t(n * c), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    double mx = -INFINITY;
    for (int64_t j = 0; j < c; ++j) mx = std::fmax(mx, x[size_t(i * c + j)]);
    double s = 0.0;
    for (int64_t j = 0; j < c; ++j) s += std::exp(x[size_t(i * c + j)] - mx);
    const double lse = mx + std::log(s);
    for (int64_t j = 0; j < c; ++j) {
      const double logp = x[size_t(i * c + j)] - lse;
      const double q = (j == target[size_t(i)] ? 1.0 - eps : 0.0) + eps / double(c);
      r.loss -= q * logp / double(n);
      r.grad[size_t(i * c + j)] = (std::exp(logp) - q) / double(n);
    }
  }
  return r;
}

}  // namespace lowbit::reference
