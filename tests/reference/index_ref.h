// Naive references for gather, scatter_add, index_select and one_hot (PyTorch's semantics),
// written with multi-indices rather than the (outer, size, inner) view the kernels use.
#pragma once

#include <cstdint>
#include <vector>

#include "tests/reference/ref_array.h"

namespace lowbit::reference {

// out[i] = x[i with i[dim] replaced by index[i]]; index has out's shape.
inline Array gather(const Array& x, int64_t dim, const Array& index) {
  Array out = Array::filled(index.shape, 0.0);
  for (int64_t l = 0; l < numel(index.shape); ++l) {
    Dims idx = unravel_index(l, index.shape);
    idx[size_t(dim)] = int64_t(index.data[size_t(l)]);
    out.data[size_t(l)] = x.at(idx);
  }
  return out;
}

// self with src[i] added at (i with i[dim] replaced by index[i]); duplicates accumulate.
inline Array scatter_add(const Array& self, int64_t dim, const Array& index, const Array& src) {
  Array out = self;
  for (int64_t l = 0; l < numel(index.shape); ++l) {
    Dims idx = unravel_index(l, index.shape);
    idx[size_t(dim)] = int64_t(index.data[size_t(l)]);
    out.at(idx) += src.data[size_t(l)];
  }
  return out;
}

// Entries index[j] of x along dim, for a 1-D index.
inline Array index_select(const Array& x, int64_t dim, const std::vector<int64_t>& index) {
  Dims shape = x.shape;
  shape[size_t(dim)] = int64_t(index.size());
  Array out = Array::filled(shape, 0.0);
  for (int64_t l = 0; l < numel(shape); ++l) {
    Dims idx = unravel_index(l, shape);
    idx[size_t(dim)] = index[size_t(idx[size_t(dim)])];
    out.data[size_t(l)] = x.at(idx);
  }
  return out;
}

// (..., num_classes): 1 where the class equals the index, else 0.
inline Array one_hot(const Array& index, int64_t num_classes) {
  Dims shape = index.shape;
  shape.push_back(num_classes);
  Array out = Array::filled(shape, 0.0);
  for (int64_t l = 0; l < numel(index.shape); ++l) {
    out.data[size_t(l * num_classes + int64_t(index.data[size_t(l)]))] = 1.0;
  }
  return out;
}

}  // namespace lowbit::reference
