// The kernel entry points every backend implements: core/ops.cpp checks arguments, allocates
// outputs, broadcasts and records autograd, then calls one of these stubs. CPU kernels register
// in core/*.cpp, CUDA kernels in cuda/*_ops.cu. Every stub receives tensors on its own device,
// with the preconditions stated beside it already checked.
#pragma once

#include <cstdint>

#include "core/dispatch.h"
#include "core/math.h"
#include "core/offset_calc.h"
#include "core/philox.h"
#include "core/tensor.h"

namespace lowbit::core {

// out and in: same shape (in may have stride-0 broadcast dims), same dtype.
using UnaryFn = void (*)(UnaryOp op, const Tensor& out, const Tensor& in, const UnaryParams& p);
LOWBIT_DECLARE_STUB(unary_stub, UnaryFn);

// a and b: expanded to out's shape, same dtype; out has that dtype, or u8 for comparisons.
using BinaryFn = void (*)(BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b);
LOWBIT_DECLARE_STUB(binary_stub, BinaryFn);

// cond (u8), a, b expanded to out's shape; a, b and out share a dtype.
using WhereFn = void (*)(const Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b);
LOWBIT_DECLARE_STUB(where_stub, WhereFn);

// dst[i] = convert(src[i]) for any pair of dtypes; src expanded to dst's shape, same device.
using CopyFn = void (*)(const Tensor& dst, const Tensor& src);
LOWBIT_DECLARE_STUB(copy_stub, CopyFn);

// Every element of dst (any strides) set to value converted to dst's dtype.
using FillFn = void (*)(const Tensor& dst, double value);
LOWBIT_DECLARE_STUB(fill_stub, FillFn);

// out contiguous: out[i] = convert(RandomValue(i)).
using RandomFn = void (*)(const Tensor& out, const RandomValue& rv);
LOWBIT_DECLARE_STUB(random_stub, RandomFn);

enum class ReduceOp : int { sum, max, min, argmax, argmin };
// in: contiguous (M, R) with R >= 1; out: contiguous (M). sum accumulates in double for floats
// and int64 for integers and writes in's dtype; max/min write in's dtype (NaN propagates);
// argmax/argmin write i64, the first index of the extreme value.
using ReduceFn = void (*)(ReduceOp op, const Tensor& out, const Tensor& in);
LOWBIT_DECLARE_STUB(reduce_stub, ReduceFn);

// Row-major batched GEMM: for each batch p,
//   C_p (m x n) = alpha * op(A_p) @ op(B_p) + beta * C_p
// op(A_p) is m x k (A_p stored k x m when trans_a), op(B_p) is k x n. lda/ldb/ldc are row
// strides (elements); stride_* the batch strides. a, b, c are the base tensors (their raw_data()
// is element 0 of batch 0). dtypes: all three f32 or all f64; CUDA also bf16/f16 (f32 compute).
struct GemmArgs {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0, batch = 1;
  double alpha = 1.0, beta = 0.0;
  Tensor a, b, c;
  int64_t lda = 0, ldb = 0, ldc = 0;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;
  bool allow_tf32 = false;
};
using GemmFn = void (*)(const GemmArgs& args);
LOWBIT_DECLARE_STUB(gemm_stub, GemmFn);

// in, out: contiguous (M, R), floating; softmax (or log_softmax) of each row, computed in float
// (double for f64) with the max subtracted.
using SoftmaxFn = void (*)(const Tensor& out, const Tensor& in, bool log);
LOWBIT_DECLARE_STUB(softmax_stub, SoftmaxFn);
// grad_in = y * (g - sum(g * y)) for softmax, g - exp(y) * sum(g) for log_softmax; all (M, R)
// contiguous, y is the forward output.
using SoftmaxBackwardFn = void (*)(const Tensor& grad_in, const Tensor& grad_out, const Tensor& out,
                                   bool log);
LOWBIT_DECLARE_STUB(softmax_backward_stub, SoftmaxBackwardFn);

// All contiguous, viewed as (outer, size_along_dim, inner). index is i32 or i64; an index out of
// range throws (CPU) or gives 0 / is skipped (CUDA), as core/ops.h says.
// gather:       out[o, j, i] = in[o, index[o, j, i], i]        (index and out share a shape)
// scatter_add:  out[o, index[o, j, i], i] += src[o, j, i]      (out already holds self)
// index_select: out[o, j, i] = in[o, index[j], i]              (index 1-D)
// one_hot:      out[n, c] = index[n] == c                      (out (N, C) zero-filled first)
struct IndexArgs {
  int64_t outer = 1, inner = 1;
  int64_t in_size = 1;   // size of the indexed dim in the tensor indexed
  int64_t out_size = 1;  // size of that dim in the index / output side
};
using GatherFn = void (*)(const Tensor& out, const Tensor& in, const Tensor& index,
                          const IndexArgs& args);
LOWBIT_DECLARE_STUB(gather_stub, GatherFn);
using ScatterAddFn = void (*)(const Tensor& out, const Tensor& index, const Tensor& src,
                              const IndexArgs& args);
LOWBIT_DECLARE_STUB(scatter_add_stub, ScatterAddFn);
LOWBIT_DECLARE_STUB(index_select_stub, GatherFn);
using OneHotFn = void (*)(const Tensor& out, const Tensor& index, int64_t num_classes);
LOWBIT_DECLARE_STUB(one_hot_stub, OneHotFn);

}  // namespace lowbit::core

namespace lowbit::core {

// OffsetCalc over N tensors sharing the first tensor's shape (the others already expanded).
template <int N>
OffsetCalc<N> offset_calc_for(const Tensor* const (&ts)[N]) {
  std::vector<std::vector<int64_t>> strides;
  int64_t offsets[N];
  for (int a = 0; a < N; ++a) {
    LOWBIT_DCHECK(ts[a]->shape() == ts[0]->shape(), "operand shapes differ");
    strides.push_back(ts[a]->strides());
    offsets[a] = 0;  // kernels index from each tensor's raw_data()
  }
  return make_offset_calc<N>(ts[0]->shape(), strides, offsets);
}

}  // namespace lowbit::core
