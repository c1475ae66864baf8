// Naive reference for matmul/bmm/addmm: the triple loop in double, Caffe's caffe_conv style.
#pragma once

#include <cmath>
#include <cstdint>

#include "tests/reference/elementwise_ref.h"
#include "tests/reference/ref_array.h"

namespace lowbit::reference {

// op(a) @ op(b) for 2-D a, b; op transposes when the flag is set.
inline Array matmul(const Array& a, const Array& b, bool trans_a = false, bool trans_b = false) {
  const int64_t m = trans_a ? a.shape[1] : a.shape[0];
  const int64_t k = trans_a ? a.shape[0] : a.shape[1];
  const int64_t kb = trans_b ? b.shape[1] : b.shape[0];
  const int64_t n = trans_b ? b.shape[0] : b.shape[1];
  if (k != kb) throw std::invalid_argument("matmul reference: inner dims differ");
  Array out = Array::filled({m, n}, 0.0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        const double x = trans_a ? a.at({p, i}) : a.at({i, p});
        const double y = trans_b ? b.at({j, p}) : b.at({p, j});
        acc += x * y;
      }
      out.at({i, j}) = acc;
    }
  }
  return out;
}

// The same with |a| and |b|: the scale that bounds the rounding error of each dot product.
inline Array matmul_abs(const Array& a, const Array& b, bool trans_a = false,
                        bool trans_b = false) {
  auto fabs_all = [](const Array& x) { return unary(x, [](double v) { return std::fabs(v); }); };
  return matmul(fabs_all(a), fabs_all(b), trans_a, trans_b);
}

// The 2-D slice p of a 3-D array.
inline Array batch_slice(const Array& x, int64_t p) {
  const int64_t r = x.shape[1], c = x.shape[2];
  std::vector<double> v(x.data.begin() + p * r * c, x.data.begin() + (p + 1) * r * c);
  return Array({r, c}, v);
}

inline Array bmm(const Array& a, const Array& b, bool trans_a = false, bool trans_b = false) {
  const int64_t batch = a.shape[0];
  std::vector<double> v;
  Dims shape;
  for (int64_t p = 0; p < batch; ++p) {
    Array y = matmul(batch_slice(a, p), batch_slice(b, p), trans_a, trans_b);
    v.insert(v.end(), y.data.begin(), y.data.end());
    shape = {batch, y.shape[0], y.shape[1]};
  }
  return Array(shape, v);
}

// beta * c + alpha * op(a) @ op(b), c broadcast to the product's shape.
inline Array addmm(const Array& c, const Array& a, const Array& b, double beta, double alpha,
                   bool trans_a = false, bool trans_b = false) {
  return binary(c, matmul(a, b, trans_a, trans_b),
                [beta, alpha](double x, double y) { return beta * x + alpha * y; });
}

}  // namespace lowbit::reference
