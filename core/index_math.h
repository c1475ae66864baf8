// The index arithmetic of gather and index_select, written once as a LOWBIT_HD functor: the CPU
// loop of core/index_ops.cpp and the CUDA kernel of cuda/index_ops.cu run the same element map.
// Operands are contiguous and viewed as (outer, size along dim, inner), as core/kernels.h says.
// An index outside [0, in_size) reads nothing and writes a zero element (core/ops.h): the CPU
// validates every index first and throws, so only the CUDA kernel, which cannot check without a
// sync, ever takes that branch.
#pragma once

#include <cstdint>

#include "core/hd.h"

namespace lowbit::core {

// Output element p = (o * out_size + j) * inner + i reads in[(o * in_size + t) * inner + i] with
//   gather (kSelect false):      t = index[p]   (index shaped like out)
//   index_select (kSelect true): t = index[j]   (index 1-D, out_size long)
// T is the element type, or an unsigned integer of its width: the map only moves bits, and T{}
// is the all-zero element of every dtype.
template <typename T, typename Index, bool kSelect>
struct IndexGather {
  const T* in;
  const Index* index;
  T* out;
  int64_t inner, out_size, in_size;

  // The position in `index` that output element p reads its index from.
  LOWBIT_HD int64_t index_pos(int64_t p) const { return kSelect ? (p / inner) % out_size : p; }
  LOWBIT_HD void operator()(int64_t p) const {
    const int64_t i = p % inner, o = p / (inner * out_size);
    const int64_t t = int64_t(index[index_pos(p)]);
    out[p] = (t >= 0 && t < in_size) ? in[(o * in_size + t) * inner + i] : T{};
  }
};

// The name of the op in errors.
template <bool kSelect>
constexpr const char* index_gather_name() {
  return kSelect ? "index_select" : "gather";
}

}  // namespace lowbit::core
