// BatchNorm2d on NHWC activations, viewed as (M = N*H*W, C): batch statistics in training
// (biased variance to normalise, unbiased into the running variance, as PyTorch), running
// statistics in eval, momentum 0.1, eps 1e-5, optional affine, and an optional fused ReLU.
// Three kernels do the work on both backends: per-channel column sums (double accumulation,
// deterministic), a per-channel affine map y = x*a[c] + b[c] (with the ReLU), and the input
// gradient dx = a[c]*dy + b[c] + (x - mean[c])*d[c]. The per-element math is written once here.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "core/dispatch.h"
#include "core/hd.h"
#include "core/tensor.h"
#include "layers/module.h"

namespace lowbit::dist {
class ProcessGroup;
}

namespace lowbit::layers {

struct BatchNormOptions {
  int64_t num_features = 0;
  double eps = 1e-5;
  double momentum = 0.1;
  bool affine = true;
  bool track_running_stats = true;
  bool fuse_relu = false;  // y = relu(bn(x)) in one pass
};

// Functional form. x (N, H, W, C); weight/bias (C) or undefined; running stats (C) f32 or
// undefined (then batch statistics are used in eval too). Updates running stats in training.
// sync (SyncBN, data-parallel runs): batch statistics over every rank's x, merged exactly (all
// ranks shift by rank 0's first row, then the shifted sums and counts are summed), and the
// backward's sums of dy and dy * xhat summed over the ranks too; gamma and beta get this rank's
// own sums, which the gradient all-reduce then averages like any parameter's. A collective:
// every rank calls it at the same point of its forward and backward.
Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias,
                  const Tensor& running_mean, const Tensor& running_var, bool training,
                  double momentum, double eps, bool relu = false,
                  dist::ProcessGroup* sync = nullptr);

class BatchNorm2d : public Module {
 public:
  explicit BatchNorm2d(const BatchNormOptions& o);
  explicit BatchNorm2d(int64_t num_features) : BatchNorm2d(BatchNormOptions{num_features}) {}
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "BatchNorm2d"; }
  std::string extra_repr() const override;

  const BatchNormOptions& options() const { return opts_; }
  void set_fuse_relu(bool on) { opts_.fuse_relu = on; }
  // Frozen statistics: normalise with the running statistics and stop updating them even in
  // training mode (docs/methods.md, "BN folding for QAT": BN freeze during QAT). gamma and beta
  // still get gradients.
  void set_frozen_stats(bool on) { frozen_stats_ = on; }
  bool frozen_stats() const { return frozen_stats_; }
  // SyncBN (see batch_norm): batch statistics over the ranks of the world's group for the
  // input's device. Off by default; a world of one ignores it.
  void set_sync(bool on) { sync_ = on; }
  bool sync() const { return sync_; }
  // Bypassed: forward returns x (through ReLU when fuse_relu), neither normalising nor updating
  // statistics. The mixed-precision search (quant/mixed.h) bypasses the BN after a searched conv,
  // whose candidates carry their own BNs, and keeps the fused ReLU where it was.
  void set_bypass(bool on) { bypass_ = on; }
  bool bypass() const { return bypass_; }
  Tensor& weight() { return weight_; }
  Tensor& bias() { return bias_; }
  Tensor& running_mean() { return running_mean_; }
  Tensor& running_var() { return running_var_; }
  Tensor& num_batches_tracked() { return num_batches_tracked_; }
  // Keeps the channels `keep` (sorted, unique) of gamma, beta and the running statistics, in
  // place (device, dtype, requires_grad kept); channel surgery in prune/ uses it.
  void keep_channels(const std::vector<int64_t>& keep);

 private:
  BatchNormOptions opts_;
  bool frozen_stats_ = false;
  bool sync_ = false;
  bool bypass_ = false;
  Tensor weight_, bias_, running_mean_, running_var_, num_batches_tracked_;
};

// Turns SyncBN on or off for every BatchNorm2d of the model (dist.sync_bn).
void set_sync_batch_norm(Module& model, bool on);

namespace detail {

// The math type: double for f64 tensors, float otherwise (per-channel tensors have it too).
template <typename T>
using bn_acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Terms summed per channel for the statistics: (d, d^2), d = x - shift (exact in double), the
// shifted-data form that batch_norm turns into mean and variance without cancellation.
struct BnStatsTerm {
  template <typename A>
  LOWBIT_HD void operator()(A x, A, A, A shift, A, double* out) const {
    const double d = double(x) - double(shift);
    out[0] = d;
    out[1] = d * d;
  }
};
// (dy', dy' * xhat) for the backward, dy' = dy masked by the fused ReLU.
struct BnBackwardTerm {
  bool relu;
  template <typename A>
  LOWBIT_HD void operator()(A x, A dy, A y, A mean, A invstd, double* out) const {
    const A g = (relu && !(y > A(0))) ? A(0) : dy;
    out[0] = double(g);
    out[1] = double(g * ((x - mean) * invstd));  // rounded in A first, as the CPU loops
  }
};
// The fused ReLU is core's ReluOp: negative values become 0 and NaN propagates, as PyTorch's
// relu (a NaN zeroed here would hide a diverged run from the trainer's finite-loss check). The
// backward masks (y > 0) are ReluGradOp's.
template <typename A>
LOWBIT_HD A bn_affine(A x, A a, A b, bool relu) {
  const A v = x * a + b;
  return (relu && v < A(0)) ? A(0) : v;
}
template <typename A>
LOWBIT_HD A bn_grad_input(A x, A dy, A y, A a, A b, A d, A mean, bool relu) {
  const A g = (relu && !(y > A(0))) ? A(0) : dy;
  return a * g + b + (x - mean) * d;
}

// Kernels (tensors contiguous, x/dy/y of one floating dtype, per-channel tensors (C) of
// bn_acc_t's dtype: f64 for f64 inputs, f32 otherwise).
// sums: f64 (2, C). Forward (backward = false): `mean` is the shift K of BnStatsTerm (required).
void bn_column_sums_cpu(const Tensor& x, const Tensor& dy, const Tensor& y, const Tensor& mean,
                        const Tensor& invstd, bool backward, bool relu, const Tensor& sums);
void bn_affine_cpu(const Tensor& x, const Tensor& a, const Tensor& b, bool relu, const Tensor& y);
void bn_grad_input_cpu(const Tensor& x, const Tensor& dy, const Tensor& y, const Tensor& a,
                       const Tensor& b, const Tensor& d, const Tensor& mean, bool relu,
                       const Tensor& dx);
// The stubs batch_norm calls, by device (core/dispatch.h): the _cpu functions above (which tests
// also call directly), and the CUDA kernels of batchnorm.cu.
using BnColumnSumsFn = void (*)(const Tensor& x, const Tensor& dy, const Tensor& y,
                                const Tensor& mean, const Tensor& invstd, bool backward, bool relu,
                                const Tensor& sums);
using BnAffineFn = void (*)(const Tensor& x, const Tensor& a, const Tensor& b, bool relu,
                            const Tensor& y);
using BnGradInputFn = void (*)(const Tensor& x, const Tensor& dy, const Tensor& y, const Tensor& a,
                               const Tensor& b, const Tensor& d, const Tensor& mean, bool relu,
                               const Tensor& dx);
LOWBIT_DECLARE_STUB(bn_column_sums_stub, BnColumnSumsFn);
LOWBIT_DECLARE_STUB(bn_affine_stub, BnAffineFn);
LOWBIT_DECLARE_STUB(bn_grad_input_stub, BnGradInputFn);

}  // namespace detail

}  // namespace lowbit::layers
