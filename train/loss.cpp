// cross_entropy and top-k accuracy: argument checks, the CPU loops over the shared row math of
// loss.h (registered on its stubs), autograd recording, and dispatch by device.
#include "train/loss.h"

#include <algorithm>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/parallel.h"

namespace lowbit::train {

namespace detail {
LOWBIT_DEFINE_STUB(cross_entropy_forward_stub);
LOWBIT_DEFINE_STUB(cross_entropy_backward_stub);
LOWBIT_DEFINE_STUB(topk_hit_stub);
}  // namespace detail

namespace {

// Checks logits (N, C) and target (N); sets *n and *c.
void check_inputs(const char* op, const Tensor& logits, const Tensor& target, int64_t* n_out,
                  int64_t* c_out) {
  LOWBIT_CHECK(logits.defined() && target.defined(), op, ": undefined logits or target");
  LOWBIT_CHECK(logits.dim() == 2, op, ": logits must be (N, C), got shape ", logits.shape());
  LOWBIT_CHECK(is_floating(logits.dtype()), op, ": logits must be floating, got ", logits.dtype());
  LOWBIT_CHECK(target.dtype() == DType::i64 || target.dtype() == DType::i32, op,
               ": target must hold class indices (i64 or i32), got ", target.dtype());
  LOWBIT_CHECK(target.dim() == 1 && target.size(0) == logits.size(0), op, ": target of shape ",
               target.shape(), " does not match logits of shape ", logits.shape(),
               "; want (N) for (N, C) logits");
  LOWBIT_CHECK(target.device() == logits.device(), op, ": target on ", target.device(),
               " but logits on ", logits.device());
  const int64_t n = logits.size(0), c = logits.size(1);
  LOWBIT_CHECK(n > 0 && c > 0, op, ": empty logits of shape ", logits.shape(),
               " (the mean over no rows is undefined)");
  *n_out = n;
  *c_out = c;
}

// Targets on the CPU must lie in [0, c); names the first bad one.
void check_targets_cpu(const char* op, const Tensor& target, int64_t c) {
  LOWBIT_DISPATCH_INDEX(target.dtype(), op, [&] {
    const index_t* t = static_cast<const index_t*>(target.raw_data());
    for (int64_t i = 0; i < target.numel(); ++i) {
      LOWBIT_CHECK(t[i] >= 0 && t[i] < c, op, ": target ", int64_t(t[i]), " at position ", i,
                   " is out of range [0, ", c, ") for logits with ", c, " classes");
    }
  });
}

DType acc_dtype(DType logits) { return logits == DType::f64 ? DType::f64 : DType::f32; }

// Rows per parallel task: about kParallelGrain logits each.
int64_t row_grain(int64_t c) { return std::max<int64_t>(1, core::kParallelGrain / c); }

template <typename T, typename I>
void cross_entropy_forward_typed(const Tensor& logits, const Tensor& target, double eps,
                                 const Tensor& row_loss, const Tensor& row_lse) {
  using A = opmath_t<T>;
  const int64_t n = logits.size(0), c = logits.size(1);
  const T* x = static_cast<const T*>(logits.raw_data());
  const I* t = static_cast<const I*>(target.raw_data());
  A* loss = static_cast<A*>(row_loss.raw_data());
  A* lse = static_cast<A*>(row_lse.raw_data());
  core::for_each_index(
      n,
      [&](int64_t row) {
        const T* r = x + row * c;
        detail::RowLse<A> s = detail::row_lse_init<A>();
        for (int64_t j = 0; j < c; ++j) s = detail::row_lse_push(s, A(r[j]));
        const A l = detail::row_lse_value(s);
        lse[row] = l;
        loss[row] = detail::cross_entropy_row_loss(l, A(r[int64_t(t[row])]), s.sx, A(eps), c);
      },
      row_grain(c));
}

template <typename T, typename I>
void cross_entropy_backward_typed(const Tensor& logits, const Tensor& target, const Tensor& row_lse,
                                  const Tensor& grad_out, double eps, const Tensor& grad_logits) {
  using A = opmath_t<T>;
  const int64_t n = logits.size(0), c = logits.size(1);
  detail::CrossEntropyBackward<T, I> f{static_cast<const T*>(logits.raw_data()),
                                       static_cast<const A*>(row_lse.raw_data()),
                                       static_cast<const I*>(target.raw_data()),
                                       static_cast<const T*>(grad_out.raw_data()),
                                       static_cast<T*>(grad_logits.raw_data()),
                                       c,
                                       A(eps),
                                       A(1.0 / double(n))};
  core::for_each_index(n * c, f);
}

void cross_entropy_forward_cpu(const Tensor& logits, const Tensor& target, double eps,
                               const Tensor& row_loss, const Tensor& row_lse) {
  const char* op = "cross_entropy";
  check_targets_cpu(op, target, logits.size(1));
  LOWBIT_DISPATCH_FLOATING(logits.dtype(), op, [&] {
    LOWBIT_DISPATCH_INDEX(target.dtype(), op, [&] {
      cross_entropy_forward_typed<scalar_t, index_t>(logits, target, eps, row_loss, row_lse);
    });
  });
}

void cross_entropy_backward_cpu(const Tensor& logits, const Tensor& target, const Tensor& row_lse,
                                const Tensor& grad_out, double eps, const Tensor& grad_logits) {
  LOWBIT_DISPATCH_FLOATING(logits.dtype(), "cross_entropy backward", [&] {
    LOWBIT_DISPATCH_INDEX(target.dtype(), "cross_entropy backward", [&] {
      cross_entropy_backward_typed<scalar_t, index_t>(logits, target, row_lse, grad_out, eps,
                                                      grad_logits);
    });
  });
}

void topk_hit_cpu(const Tensor& logits, const Tensor& target, int64_t k, const Tensor& hit) {
  const char* op = "topk_correct";
  const int64_t n = logits.size(0), c = logits.size(1);
  check_targets_cpu(op, target, c);
  LOWBIT_DISPATCH_FLOATING(logits.dtype(), op, [&] {
    LOWBIT_DISPATCH_INDEX(target.dtype(), op, [&] {
      detail::TopkHit<scalar_t, index_t> f{static_cast<const scalar_t*>(logits.raw_data()),
                                           static_cast<const index_t*>(target.raw_data()),
                                           hit.data<int64_t>(), c, k};
      core::for_each_index(n, f, row_grain(c));
    });
  });
}

Tensor cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& row_lse,
                              const Tensor& grad, double eps) {
  const Tensor g = grad.detach().to(logits.device(), logits.dtype()).contiguous();
  LOWBIT_CHECK(g.numel() == 1, "cross_entropy backward: gradient of shape ", g.shape(),
               " for a scalar loss");
  Tensor dx = empty(logits.shape(), TensorOptions(logits.dtype(), logits.device()));
  detail::cross_entropy_backward_stub(logits.device(), logits, target, row_lse, g, eps, dx);
  return dx;
}

}  // namespace

namespace detail {
LOWBIT_REGISTER_KERNEL(cross_entropy_forward_stub, cpu, cross_entropy_forward_cpu);
LOWBIT_REGISTER_KERNEL(cross_entropy_backward_stub, cpu, cross_entropy_backward_cpu);
LOWBIT_REGISTER_KERNEL(topk_hit_stub, cpu, topk_hit_cpu);
}  // namespace detail

Tensor cross_entropy(const Tensor& logits_in, const Tensor& target_in, double label_smoothing) {
  const char* op = "cross_entropy";
  int64_t n = 0, c = 0;
  check_inputs(op, logits_in, target_in, &n, &c);
  LOWBIT_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0, op, ": label_smoothing ",
               label_smoothing, " is outside [0, 1]");
  const Tensor logits = logits_in.detach().contiguous();
  const Tensor target = target_in.detach().contiguous();
  const DType acc = acc_dtype(logits.dtype());
  Tensor row_loss = empty({n}, TensorOptions(acc, logits.device()));
  Tensor row_lse = empty({n}, TensorOptions(acc, logits.device()));
  detail::cross_entropy_forward_stub(logits.device(), logits, target, label_smoothing, row_loss,
                                     row_lse);
  Tensor loss;
  {
    autograd::NoGradGuard guard;  // the row losses are internal: never part of the graph
    loss = mean(row_loss).to(logits.dtype());
  }
  if (autograd::any_requires_grad({logits_in})) {
    autograd::SavedTensor saved_logits(logits, op);
    autograd::SavedTensor saved_target(target, op);
    autograd::record(
        op, {logits_in}, loss,
        [saved_logits, saved_target, row_lse, label_smoothing](const Tensor& g) {
          return std::vector<Tensor>{cross_entropy_backward(
              saved_logits.unpack(), saved_target.unpack(), row_lse, g, label_smoothing)};
        });
  }
  return loss;
}

Tensor topk_correct(const Tensor& logits_in, const Tensor& target_in, int64_t k) {
  const char* op = "topk_correct";
  int64_t n = 0, c = 0;
  check_inputs(op, logits_in, target_in, &n, &c);
  LOWBIT_CHECK(k >= 1 && k <= c, op, ": k = ", k, " must lie in [1, ", c, "] for ", c, " classes");
  autograd::NoGradGuard guard;
  const Tensor logits = logits_in.detach().contiguous();
  const Tensor target = target_in.detach().contiguous();
  Tensor hit = empty({n}, TensorOptions(DType::i64, logits.device()));
  detail::topk_hit_stub(logits.device(), logits, target, k, hit);
  return sum(hit);
}

double accuracy_topk(const Tensor& logits, const Tensor& target, int64_t k) {
  const Tensor hits = topk_correct(logits, target, k);
  return hits.item() / double(logits.size(0));
}

Tensor loss_precision(const Tensor& logits) {
  return logits.dtype() == DType::bf16 || logits.dtype() == DType::f16 ? logits.to(DType::f32)
                                                                       : logits;
}

}  // namespace lowbit::train
