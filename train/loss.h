// Classification loss and metrics: cross entropy fused with log-softmax, and top-k accuracy.
//
// cross_entropy(logits (N, C), target (N)) is PyTorch's F.cross_entropy with reduction "mean":
//   loss = 1/N sum_i [ lse_i - sum_j q_ij x_ij ],   lse_i = log sum_j exp(x_ij),
//   q_ij = (1 - eps) [j == t_i] + eps / C           (label smoothing eps, PyTorch's definition)
// The forward reads each logit once: a per-row running (max, sum of exp, sum of x) gives lse_i
// and the row loss in one pass (online softmax, Milakov & Gimelshein 2018). The backward is one
// elementwise pass from the saved per-row lse:
//   dlogits_ij = (exp(x_ij - lse_i) - q_ij) * grad / N.
// The row math below is LOWBIT_HD and shared by the CPU loop (loss.cpp) and the CUDA kernels
// (loss.cu). Accumulation is in float (double for f64 logits); bf16/f16 logits are read as float.
//
// Out-of-range targets: the CPU validates before computing and throws naming the target and
// its position. CUDA would need a device-to-host copy and a sync to do the same, so there a row
// with a bad target gets a NaN loss (and never reads outside the logits); see docs/training.md.
#pragma once

#include <math.h>

#include <cstdint>

#include "core/dispatch.h"
#include "core/hd.h"
#include "core/math.h"
#include "core/tensor.h"

namespace lowbit::train {

// Logits for the loss and the metrics: f32 when autocast made them bf16/f16 (as torch.autocast
// runs cross_entropy in f32); f32/f64 logits as they are. Differentiable (Tensor::to).
Tensor loss_precision(const Tensor& logits);

// Mean cross entropy of logits (N, C) (floating) against class indices target (N) (i64 or
// i32, each in [0, C)), with label smoothing eps in [0, 1]. Returns a 0-d tensor of the logits'
// dtype on their device; differentiable with respect to the logits. N and C must be positive.
Tensor cross_entropy(const Tensor& logits, const Tensor& target, double label_smoothing = 0.0);

// Number of rows whose target is among the k largest logits, as a 0-d i64 tensor on the logits'
// device (no host sync). Ties rank by index, as a stable descending sort: the target's rank is
// #{j : x_j > x_t} + #{j < t : x_j == x_t}, and the row counts when that rank is below k. So
// top-1 agrees with argmax (first of ties). NaN logits rank above every number, as in torch.topk,
// and a row whose target logit is NaN never counts. 1 <= k <= C.
Tensor topk_correct(const Tensor& logits, const Tensor& target, int64_t k);
// topk_correct / N as a double (synchronises a CUDA device: call it where you log).
double accuracy_topk(const Tensor& logits, const Tensor& target, int64_t k);

namespace detail {

// --- row math shared by both backends ---------------------------------------------------------

// Running normaliser of a row: m = max so far, s = sum exp(x - m), sx = sum x.
template <typename A>
struct RowLse {
  A m;
  A s;
  A sx;
};

template <typename A>
LOWBIT_HD RowLse<A> row_lse_init() {
  return RowLse<A>{A(-INFINITY), A(0), A(0)};
}

// Adds one logit. -inf adds nothing to s; NaN turns s into NaN (and so the loss).
template <typename A>
LOWBIT_HD RowLse<A> row_lse_push(RowLse<A> r, A x) {
  if (x > r.m) {
    r.s = r.s * math::exp(r.m - x) + A(1);  // r.m = -inf on the first push: s = 0 * 0 + 1
    r.m = x;
  } else if (x != A(-INFINITY)) {
    r.s += math::exp(x - r.m);
  }
  r.sx += x;
  return r;
}

// Merges two partial rows (the CUDA block reduction). Associative up to rounding.
template <typename A>
LOWBIT_HD RowLse<A> row_lse_combine(RowLse<A> a, RowLse<A> b) {
  const A m = a.m > b.m ? a.m : b.m;
  const A sa = a.s == A(0) ? A(0) : a.s * math::exp(a.m - m);
  const A sb = b.s == A(0) ? A(0) : b.s * math::exp(b.m - m);
  return RowLse<A>{m, sa + sb, a.sx + b.sx};
}

template <typename A>
LOWBIT_HD A row_lse_value(const RowLse<A>& r) {
  return r.m + math::log(r.s);
}

// Loss of one row from its normaliser, its target logit and the smoothing.
template <typename A>
LOWBIT_HD A cross_entropy_row_loss(A lse, A x_target, A sum_x, A eps, int64_t c) {
  A loss = lse - (A(1) - eps) * x_target;
  if (eps != A(0)) loss -= eps / A(c) * sum_x;  // skipped at eps = 0, as PyTorch: no inf * 0
  return loss;
}

// dlogits for element i of the (N, C) logits; one thread per element on CUDA.
template <typename T, typename I>
struct CrossEntropyBackward {
  using A = opmath_t<T>;  // float, or double for f64
  const T* x;             // (N, C) logits
  const A* lse;           // (N) saved log-sum-exp of each row
  const I* target;        // (N)
  const T* grad_out;      // 0-d upstream gradient (read on the device: no host sync)
  T* dx;                  // (N, C)
  int64_t c;
  A eps;
  A inv_n;

  LOWBIT_HD void operator()(int64_t i) const {
    const int64_t row = i / c;
    const int64_t j = i - row * c;
    const A p = math::exp(A(x[i]) - lse[row]);
    const A q = (int64_t(target[row]) == j ? A(1) - eps : A(0)) + eps / A(c);
    dx[i] = T((p - q) * A(grad_out[0]) * inv_n);
  }
};

// 1 when the target of row `row` ranks below k (see topk_correct), written as i64.
template <typename T, typename I>
struct TopkHit {
  const T* x;       // (N, C)
  const I* target;  // (N)
  int64_t* hit;     // (N)
  int64_t c;
  int64_t k;

  LOWBIT_HD void operator()(int64_t row) const {
    using A = opmath_t<T>;
    const int64_t t = int64_t(target[row]);
    if (t < 0 || t >= c) {  // only reachable on CUDA: the CPU validated
      hit[row] = 0;
      return;
    }
    const T* r = x + row * c;
    const A xt = A(r[t]);
    if (!(xt == xt)) {  // a NaN logit for the target is never a hit
      hit[row] = 0;
      return;
    }
    int64_t rank = 0;
    for (int64_t j = 0; j < c; ++j) {
      const A v = A(r[j]);
      rank += (v > xt || !(v == v) || (v == xt && j < t)) ? 1 : 0;  // NaNs rank first
    }
    hit[row] = rank < k ? 1 : 0;
  }
};

// The kernels, by device (core/dispatch.h): CPU loops in loss.cpp (which validate the targets
// first), CUDA launchers in loss.cu. Called by loss.cpp with shapes and dtypes already checked,
// all tensors contiguous on one device.
// row_loss, row_lse: (N) of the accumulation dtype (f64 for f64 logits, else f32).
using CrossEntropyForwardFn = void (*)(const Tensor& logits, const Tensor& target, double eps,
                                       const Tensor& row_loss, const Tensor& row_lse);
using CrossEntropyBackwardFn = void (*)(const Tensor& logits, const Tensor& target,
                                        const Tensor& row_lse, const Tensor& grad_out, double eps,
                                        const Tensor& grad_logits);
// hit: (N) i64, 1 where the target is among the k largest logits of its row.
using TopkHitFn = void (*)(const Tensor& logits, const Tensor& target, int64_t k,
                           const Tensor& hit);
LOWBIT_DECLARE_STUB(cross_entropy_forward_stub, CrossEntropyForwardFn);
LOWBIT_DECLARE_STUB(cross_entropy_backward_stub, CrossEntropyBackwardFn);
LOWBIT_DECLARE_STUB(topk_hit_stub, TopkHitFn);

}  // namespace detail

}  // namespace lowbit::train
