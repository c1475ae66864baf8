// The value type of the naive references in tests/reference/: a row-major array of doubles with
// a shape, plus index helpers and broadcasting. Header-only, and it includes nothing from
// lowbit, so a reference can never share a bug with the code it checks.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <vector>

namespace lowbit::reference {

using Dims = std::vector<int64_t>;

inline int64_t numel(const Dims& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Row-major multi-index of `linear` in `shape`.
inline Dims unravel_index(int64_t linear, const Dims& shape) {
  Dims idx(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    idx[d] = linear % shape[d];
    linear /= shape[d];
  }
  return idx;
}

inline int64_t ravel_index(const Dims& idx, const Dims& shape) {
  int64_t l = 0;
  for (size_t d = 0; d < shape.size(); ++d) l = l * shape[d] + idx[d];
  return l;
}

struct Array {
  Dims shape;
  std::vector<double> data;

  Array() = default;
  Array(Dims s, std::vector<double> d) : shape(std::move(s)), data(std::move(d)) {
    if (int64_t(data.size()) != numel(shape)) throw std::invalid_argument("Array: size mismatch");
  }
  static Array filled(const Dims& s, double v) {
    return Array(s, std::vector<double>(size_t(numel(s)), v));
  }
  int64_t dim() const { return int64_t(shape.size()); }
  double at(const Dims& idx) const { return data[size_t(ravel_index(idx, shape))]; }
  double& at(const Dims& idx) { return data[size_t(ravel_index(idx, shape))]; }
};

// NumPy broadcasting of two shapes; throws std::invalid_argument when they do not broadcast.
inline Dims broadcast_dims(const Dims& a, const Dims& b) {
  const size_t n = a.size() > b.size() ? a.size() : b.size();
  Dims out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1) throw std::invalid_argument("shapes do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// The element of `x` that broadcasting maps to output index `out_idx`.
inline double broadcast_at(const Array& x, const Dims& out_idx) {
  Dims idx(x.shape.size());
  const size_t lead = out_idx.size() - x.shape.size();
  for (size_t d = 0; d < x.shape.size(); ++d) idx[d] = x.shape[d] == 1 ? 0 : out_idx[d + lead];
  return x.at(idx);
}

// A permuted copy: out.shape[i] = x.shape[perm[i]].
inline Array permute(const Array& x, const Dims& perm) {
  Dims shape(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) shape[i] = x.shape[size_t(perm[i])];
  Array out = Array::filled(shape, 0.0);
  for (int64_t l = 0; l < numel(shape); ++l) {
    const Dims oi = unravel_index(l, shape);
    Dims xi(perm.size());
    for (size_t i = 0; i < perm.size(); ++i) xi[size_t(perm[i])] = oi[i];
    out.data[size_t(l)] = x.at(xi);
  }
  return out;
}

}  // namespace lowbit::reference
