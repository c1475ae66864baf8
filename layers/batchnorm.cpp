// BatchNorm2d: the CPU kernels, the autograd formulas and device dispatch (CUDA kernels in
// batchnorm.cu). Backward in training (Ioffe & Szegedy 2015, sec. 3):
//   dx = gamma*invstd * (dy - sum(dy)/M - xhat * sum(dy*xhat)/M),
//   dgamma = sum(dy*xhat), dbeta = sum(dy).
#include "layers/batchnorm.h"

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/parallel.h"
#include "dist/process_group.h"
#include "dist/world.h"
#include "layers/conv2d.h"  // keep_along

namespace lowbit::layers {

namespace detail {

namespace {
template <typename T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.raw_data()) : nullptr;
}
}  // namespace

namespace {
// Kept out of the dispatch macro: an OpenMP pragma cannot sit inside a macro argument.

// y > 0 ? g : 0, as a bit mask for float so that the loop stays branch-free and vectorises
// (GCC turns the plain select into a compare and branch here); the same value as the select.
template <typename T>
inline T relu_select(T y, T g) {
  if constexpr (std::is_same_v<T, float>) {
    uint32_t bits;
    std::memcpy(&bits, &g, 4);
    bits &= uint32_t(-int32_t(y > 0.0f));
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
  } else {
    return y > T(0) ? g : T(0);
  }
}

constexpr int kBlock =
    8;  // channels per register block in column_sums_typed (AVX2: 2 ymm of doubles per sum)

// Column sums of channels [cb, cb + kBlock) over rows [r0, r1) added to s0/s1 (which carry the
// sums of the rows before r0), accumulators in registers (local arrays, no aliasing, a fixed trip
// count the compiler unrolls and vectorises).
// Forward: sum (x - K), sum (x - K)^2 with K = pm, the shift. Backward: sum g, sum g * xhat, g = dy
// masked by y > 0 with kRelu.
template <typename scalar_t, bool kBackward, bool kRelu>
void block_sums(const scalar_t* __restrict px, const scalar_t* __restrict pdy,
                const scalar_t* __restrict py, const bn_acc_t<scalar_t>* __restrict pm,
                const bn_acc_t<scalar_t>* __restrict pis, int64_t c, int64_t cb, int64_t r0,
                int64_t r1, double* __restrict s0, double* __restrict s1) {
  using acc_t = bn_acc_t<scalar_t>;
  double a0[kBlock], a1[kBlock];
  acc_t m[kBlock], is[kBlock];
  for (int k = 0; k < kBlock; ++k) {
    a0[k] = s0[cb + k];
    a1[k] = s1[cb + k];
    m[k] = pm[cb + k];  // backward: the mean; forward: the shift
    is[k] = kBackward ? pis[cb + k] : acc_t(0);
  }
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* xr = px + r * c + cb;
    if constexpr (kBackward) {
      const scalar_t* gr = pdy + r * c + cb;
      const scalar_t* yr = kRelu ? py + r * c + cb : gr;
#pragma omp simd
      for (int k = 0; k < kBlock; ++k) {
        const acc_t gv = acc_t(opmath_t<scalar_t>(gr[k]));
        const acc_t yv = acc_t(opmath_t<scalar_t>(yr[k]));
        const acc_t g = kRelu ? relu_select(yv, gv) : gv;
        a0[k] += double(g);
        a1[k] += double(g * ((acc_t(opmath_t<scalar_t>(xr[k])) - m[k]) * is[k]));
      }
    } else {
#pragma omp simd
      for (int k = 0; k < kBlock; ++k) {
        const double v = double(opmath_t<scalar_t>(xr[k])) - double(m[k]);
        a0[k] += v;
        a1[k] += v * v;
      }
    }
  }
  for (int k = 0; k < kBlock; ++k) {
    s0[cb + k] = a0[k];
    s1[cb + k] = a1[k];
  }
}

template <typename scalar_t>
void column_sums_typed(const Tensor& x, const Tensor& dy, const Tensor& y, const Tensor& mean,
                       const Tensor& invstd, bool backward, bool relu, const Tensor& sums) {
  using acc_t = bn_acc_t<scalar_t>;
  const int64_t c = x.size(-1), m = x.numel() / c;
  const scalar_t* px = ptr_or_null<scalar_t>(x);
  const scalar_t* pdy = ptr_or_null<scalar_t>(dy);
  const scalar_t* py = ptr_or_null<scalar_t>(y);
  const acc_t* pm = ptr_or_null<acc_t>(mean);
  const acc_t* pis = ptr_or_null<acc_t>(invstd);
  const int nthreads = m * c >= core::kParallelGrain ? omp_get_max_threads() : 1;
  std::vector<double> partial(size_t(nthreads) * 2 * size_t(c), 0.0);
  // Each thread sums a fixed block of rows; blocks are combined in thread order below, so the
  // result depends only on the thread count.
#pragma omp parallel num_threads(nthreads)
  {
    const int t = omp_get_thread_num();
    const int nt = omp_get_num_threads();
    const int64_t chunk = (m + nt - 1) / nt;
    const int64_t r0 = t * chunk, r1 = std::min<int64_t>(m, r0 + chunk);
    double* acc = partial.data() + size_t(t) * 2 * size_t(c);
    // The branch is hoisted and the math written out (the same as BnStatsTerm and
    // BnBackwardTerm) so each inner loop is straight-line code the compiler vectorises.
    double* __restrict s0 = acc;
    double* __restrict s1 = acc + c;
    if (c % kBlock == 0) {
      // Blocks of 8 channels whose accumulators live in registers across a tile of rows (16 KiB
      // of each f32 input, so the tile stays in L1 while every block walks it): the same sums in
      // the same order as the loops below (so the same bits), without a load and store of the
      // accumulators per row and with one pass over memory.
      const int64_t tile = std::max<int64_t>(8, 4096 / c);
      for (int64_t t0 = r0; t0 < r1; t0 += tile) {
        const int64_t t1 = std::min(r1, t0 + tile);
        for (int64_t cb = 0; cb < c; cb += kBlock) {
          if (!backward) {
            block_sums<scalar_t, false, false>(px, pdy, py, pm, pis, c, cb, t0, t1, s0, s1);
          } else if (relu) {
            block_sums<scalar_t, true, true>(px, pdy, py, pm, pis, c, cb, t0, t1, s0, s1);
          } else {
            block_sums<scalar_t, true, false>(px, pdy, py, pm, pis, c, cb, t0, t1, s0, s1);
          }
        }
      }
    } else if (backward) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* __restrict xr = px + r * c;
        const scalar_t* __restrict gr = pdy + r * c;
        const scalar_t* __restrict yr = py ? py + r * c : nullptr;
        for (int64_t ch = 0; ch < c; ++ch) {
          acc_t g = acc_t(opmath_t<scalar_t>(gr[ch]));
          if (relu && !(acc_t(opmath_t<scalar_t>(yr[ch])) > acc_t(0))) g = acc_t(0);
          s0[ch] += double(g);
          s1[ch] += double(g * ((acc_t(opmath_t<scalar_t>(xr[ch])) - pm[ch]) * pis[ch]));
        }
      }
    } else {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* __restrict xr = px + r * c;
        for (int64_t ch = 0; ch < c; ++ch) {
          const double v = double(opmath_t<scalar_t>(xr[ch])) - double(pm[ch]);
          s0[ch] += v;
          s1[ch] += v * v;
        }
      }
    }
  }
  double* s = static_cast<double*>(sums.raw_data());
  for (int64_t k = 0; k < 2 * c; ++k) {
    double v = 0.0;
    for (int t = 0; t < nthreads; ++t) v += partial[size_t(t) * 2 * size_t(c) + size_t(k)];
    s[k] = v;
  }
}
}  // namespace

void bn_column_sums_cpu(const Tensor& x, const Tensor& dy, const Tensor& y, const Tensor& mean,
                        const Tensor& invstd, bool backward, bool relu, const Tensor& sums) {
  LOWBIT_DISPATCH_FLOATING(x.dtype(), "batch_norm", [&] {
    column_sums_typed<scalar_t>(x, dy, y, mean, invstd, backward, relu, sums);
  });
}

// Rows x channels as two loops (no per-element modulo), so the inner loop vectorises.
void bn_affine_cpu(const Tensor& x, const Tensor& a, const Tensor& b, bool relu, const Tensor& y) {
  const int64_t c = x.size(-1), m = x.numel() / c;
  LOWBIT_DISPATCH_FLOATING(x.dtype(), "batch_norm", [&] {
    using acc_t = bn_acc_t<scalar_t>;
    const scalar_t* px = static_cast<const scalar_t*>(x.raw_data());
    scalar_t* py = static_cast<scalar_t*>(y.raw_data());
    const acc_t* pa = static_cast<const acc_t*>(a.raw_data());
    const acc_t* pb = static_cast<const acc_t*>(b.raw_data());
    core::for_each_chunk(
        m,
        [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) {
            const scalar_t* xr = px + r * c;
            scalar_t* yr = py + r * c;
            for (int64_t ch = 0; ch < c; ++ch) {
              yr[ch] = scalar_t(bn_affine(acc_t(opmath_t<scalar_t>(xr[ch])), pa[ch], pb[ch], relu));
            }
          }
        },
        std::max<int64_t>(1, core::kParallelGrain / c));
  });
}

void bn_grad_input_cpu(const Tensor& x, const Tensor& dy, const Tensor& y, const Tensor& a,
                       const Tensor& b, const Tensor& d, const Tensor& mean, bool relu,
                       const Tensor& dx) {
  const int64_t c = x.size(-1), m = x.numel() / c;
  LOWBIT_DISPATCH_FLOATING(x.dtype(), "batch_norm backward", [&] {
    using acc_t = bn_acc_t<scalar_t>;
    const scalar_t* px = static_cast<const scalar_t*>(x.raw_data());
    const scalar_t* pdy = static_cast<const scalar_t*>(dy.raw_data());
    const scalar_t* py = ptr_or_null<scalar_t>(y);
    scalar_t* pdx = static_cast<scalar_t*>(dx.raw_data());
    const acc_t* pa = static_cast<const acc_t*>(a.raw_data());
    const acc_t* pb = static_cast<const acc_t*>(b.raw_data());
    const acc_t* pd = static_cast<const acc_t*>(d.raw_data());
    const acc_t* pm = static_cast<const acc_t*>(mean.raw_data());
    core::for_each_chunk(
        m,
        [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) {
            const int64_t base = r * c;
            for (int64_t ch = 0; ch < c; ++ch) {
              const acc_t yv = py ? acc_t(opmath_t<scalar_t>(py[base + ch])) : acc_t(1);
              pdx[base + ch] = scalar_t(bn_grad_input(acc_t(opmath_t<scalar_t>(px[base + ch])),
                                                      acc_t(opmath_t<scalar_t>(pdy[base + ch])), yv,
                                                      pa[ch], pb[ch], pd[ch], pm[ch], relu));
            }
          }
        },
        std::max<int64_t>(1, core::kParallelGrain / c));
  });
}

LOWBIT_DEFINE_STUB(bn_column_sums_stub);
LOWBIT_DEFINE_STUB(bn_affine_stub);
LOWBIT_DEFINE_STUB(bn_grad_input_stub);
LOWBIT_REGISTER_KERNEL(bn_column_sums_stub, cpu, bn_column_sums_cpu);
LOWBIT_REGISTER_KERNEL(bn_affine_stub, cpu, bn_affine_cpu);
LOWBIT_REGISTER_KERNEL(bn_grad_input_stub, cpu, bn_grad_input_cpu);

}  // namespace detail

namespace {

using namespace detail;

Tensor column_sums(const Tensor& x, const Tensor& dy, const Tensor& y, const Tensor& mean,
                   const Tensor& invstd, bool backward, bool relu) {
  Tensor sums = empty({2, x.size(-1)}, TensorOptions(DType::f64, x.device()));
  bn_column_sums_stub(x.device(), x, dy, y, mean, invstd, backward, relu, sums);
  return sums;
}

}  // namespace

Tensor batch_norm(const Tensor& x_in, const Tensor& weight, const Tensor& bias,
                  const Tensor& running_mean, const Tensor& running_var, bool training,
                  double momentum, double eps, bool relu, dist::ProcessGroup* sync) {
  LOWBIT_CHECK(x_in.defined() && x_in.dim() >= 2, "batch_norm wants NHWC (or (N, C)) input, got ",
               x_in.defined() ? shape_str(x_in.shape()) : "undefined");
  LOWBIT_CHECK(is_floating(x_in.dtype()), "batch_norm: dtype ", x_in.dtype(), " is not floating");
  const int64_t c = x_in.size(-1);
  int64_t m =
      x_in.numel() / std::max<int64_t>(c, 1);  // values per channel (over the ranks with sync)
  const Device dev = x_in.device();
  // Per-channel math in f64 for f64 inputs, f32 otherwise (bn_acc_t).
  const DType pdt = x_in.dtype() == DType::f64 ? DType::f64 : DType::f32;
  const TensorOptions f32(pdt, dev);
  for (const Tensor* t : {&weight, &bias, &running_mean, &running_var}) {
    if (t->defined()) {
      LOWBIT_CHECK(t->numel() == c && t->device() == dev, "batch_norm: per-channel tensor ",
                   t->shape(), " on ", t->device(), " does not match ", c, " channels on ", dev);
    }
  }
  const bool use_batch = training || !running_mean.defined();
  if (!training || (sync && sync->size() == 1)) sync = nullptr;
  Tensor x = x_in.detach().contiguous();
  Tensor mean, invstd, gamma, a, y;
  {
    autograd::NoGradGuard no_grad;
    if (use_batch) {
      LOWBIT_CHECK(m > 1 || !training || sync,
                   "batch_norm: expected more than 1 value per channel when "
                   "training, got input of shape ",
                   x_in.shape());
      // Shifted data (Chan, Golub & LeVeque 1983): sums of d = x - K with K a value of the
      // channel (its first row), then mean = K + E[d], var = E[d^2] - E[d]^2. One pass over x,
      // and no cancellation when |mean| >> std: plain E[x^2] - E[x]^2, even in double, loses
      // every digit once |mean| / std passes about 1e8 (folded DoReFa weights:
      // docs/quantization.md).
      Tensor shift = x.reshape({m, c}).select(0, 0).to(pdt).contiguous();
      if (sync) {
        // One shift for every rank, so the sums add up (a copy: shift may be a view of x).
        shift = shift.clone();
        sync->broadcast(shift, 0);
      }
      Tensor sums = column_sums(x, Tensor(), Tensor(), shift, Tensor(), false, false);
      if (sync) {
        // (d, d^2) sums and the count of every rank, in one all-reduce.
        Tensor packed = empty({2 * c + 1}, TensorOptions(DType::f64, dev));
        packed.narrow(0, 0, 2 * c).copy_(sums.reshape({2 * c}));
        packed.narrow(0, 2 * c, 1).fill_(double(m));
        sync->all_reduce(packed, dist::ReduceOp::sum);
        sums = packed.narrow(0, 0, 2 * c).reshape({2, c});
        m = int64_t(packed.narrow(0, 2 * c, 1).item());
        LOWBIT_CHECK(m > 1,
                     "batch_norm (SyncBN): expected more than 1 value per channel over the ranks");
      }
      Tensor dmean = sums.select(0, 0) * (1.0 / double(m));
      Tensor mean64 = shift.to(DType::f64) + dmean;
      Tensor var64 = clamp(sums.select(0, 1) * (1.0 / double(m)) - dmean * dmean, 0.0, INFINITY);
      mean = mean64.to(pdt).contiguous();
      invstd = rsqrt(var64 + eps).to(pdt).contiguous();
      if (training && running_mean.defined()) {
        Tensor rm = running_mean, rv = running_var;
        Tensor unbiased = var64 * (double(m) / double(std::max<int64_t>(m - 1, 1)));
        mul_(rm, 1.0 - momentum);
        add_(rm, mean64.to(rm.dtype()), momentum);
        mul_(rv, 1.0 - momentum);
        add_(rv, unbiased.to(rv.dtype()), momentum);
      }
    } else {
      mean = running_mean.detach().to(pdt).contiguous();
      invstd = rsqrt(running_var.detach().to(pdt) + eps).contiguous();
    }
    gamma = weight.defined() ? weight.detach().to(pdt).contiguous() : ones({c}, f32);
    Tensor beta = bias.defined() ? bias.detach().to(pdt) : zeros({c}, f32);
    a = (gamma * invstd).contiguous();
    Tensor b = (beta - mean * a).contiguous();
    y = empty(x.shape(), TensorOptions(x.dtype(), dev));
    bn_affine_stub(dev, x, a, b, relu, y);
  }

  std::vector<Tensor> inputs{x_in, weight, bias};
  if (autograd::any_requires_grad(inputs)) {
    autograd::SavedTensor sx(x, "batch_norm"), sy(y, "batch_norm");
    const bool has_w = weight.defined(), has_b = bias.defined();
    const DType wt = has_w ? weight.dtype() : DType::f32, bt = has_b ? bias.dtype() : DType::f32;
    autograd::record("batch_norm", inputs, y, [=](const Tensor& g_in) {
      Tensor xs = sx.unpack(), ys = sy.unpack();
      Tensor g = g_in.contiguous();
      Tensor yr = relu ? ys : Tensor();
      Tensor sums = column_sums(xs, g, yr, mean, invstd, true, relu);
      Tensor sum_dy = sums.select(0, 0).to(pdt);
      Tensor sum_dy_xhat = sums.select(0, 1).to(pdt);
      // gamma and beta: this rank's sums (above). The input gradient: the sums of every rank.
      Tensor g_gamma = sum_dy_xhat, g_beta = sum_dy;
      if (sync) {
        Tensor all = sums.contiguous().clone();
        sync->all_reduce(all, dist::ReduceOp::sum);
        sum_dy = all.select(0, 0).to(pdt);
        sum_dy_xhat = all.select(0, 1).to(pdt);
      }
      Tensor b2, d2;
      if (use_batch) {
        // dx = a*dy - a*sum_dy/M - (x - mean) * a*invstd*sum_dy_xhat/M
        b2 = (a * sum_dy * (-1.0 / double(m))).contiguous();
        d2 = (a * invstd * sum_dy_xhat * (-1.0 / double(m))).contiguous();
      } else {
        b2 = zeros({c}, f32);
        d2 = zeros({c}, f32);
      }
      Tensor dx = empty(xs.shape(), TensorOptions(xs.dtype(), xs.device()));
      bn_grad_input_stub(xs.device(), xs, g, yr, a, b2, d2, mean, relu, dx);
      return std::vector<Tensor>{dx, has_w ? g_gamma.to(wt) : Tensor(),
                                 has_b ? g_beta.to(bt) : Tensor()};
    });
  }
  return y;
}

BatchNorm2d::BatchNorm2d(const BatchNormOptions& o) : opts_(o) {
  LOWBIT_CHECK(o.num_features > 0, "BatchNorm2d: num_features must be positive, got ",
               o.num_features);
  LOWBIT_CHECK(o.eps > 0 && o.momentum >= 0 && o.momentum <= 1, "BatchNorm2d: eps ", o.eps,
               " must be positive and momentum ", o.momentum, " in [0, 1]");
  if (o.affine) {
    weight_ = ones({o.num_features});
    bias_ = zeros({o.num_features});
    register_parameter("weight", &weight_);
    register_parameter("bias", &bias_);
  }
  if (o.track_running_stats) {
    running_mean_ = zeros({o.num_features});
    running_var_ = ones({o.num_features});
    num_batches_tracked_ = zeros({}, DType::i64);
    register_buffer("running_mean", &running_mean_);
    register_buffer("running_var", &running_var_);
    register_buffer("num_batches_tracked", &num_batches_tracked_);
  }
}

Tensor BatchNorm2d::forward(const Tensor& x) {
  LOWBIT_CHECK(x.defined() && x.size(-1) == opts_.num_features, "BatchNorm2d(", opts_.num_features,
               ") got input of shape ", x.defined() ? shape_str(x.shape()) : "undefined",
               " (channels last)");
  if (bypass_) {
    Tensor y = opts_.fuse_relu ? relu(x) : x;
    notify_forward(*this, x, y);
    return y;
  }
  // Frozen statistics (docs/methods.md, "BN folding for QAT", QAT after freeze_bn_epoch): running
  // statistics, no updates, while gamma and beta keep training.
  const bool batch_stats = is_training() && !frozen_stats_;
  if (batch_stats && opts_.track_running_stats) {
    autograd::NoGradGuard guard;
    add_(num_batches_tracked_, ones({}, TensorOptions(DType::i64, num_batches_tracked_.device())));
  }
  dist::ProcessGroup* group =
      sync_ && batch_stats && dist::is_distributed() ? &dist::process_group(x.device()) : nullptr;
  Tensor y = batch_norm(x, weight_, bias_, running_mean_, running_var_, batch_stats, opts_.momentum,
                        opts_.eps, opts_.fuse_relu, group);
  notify_forward(*this, x, y);
  return y;
}

void BatchNorm2d::keep_channels(const std::vector<int64_t>& keep) {
  LOWBIT_CHECK(!keep.empty(), "BatchNorm2d(", opts_.num_features,
               ").keep_channels: cannot remove every channel");
  for (Tensor* t : {&weight_, &bias_, &running_mean_, &running_var_}) {
    if (t->defined()) *t = keep_along(*t, 0, keep);
  }
  opts_.num_features = int64_t(keep.size());
}

void set_sync_batch_norm(Module& model, bool on) {
  for (auto& [name, m] : model.named_modules()) {
    if (auto bn = std::dynamic_pointer_cast<BatchNorm2d>(m)) bn->set_sync(on);
  }
}

std::string BatchNorm2d::extra_repr() const {
  std::ostringstream os;
  os << opts_.num_features << ", eps=" << opts_.eps << ", momentum=" << opts_.momentum
     << ", affine=" << (opts_.affine ? "True" : "False")
     << ", track_running_stats=" << (opts_.track_running_stats ? "True" : "False");
  if (opts_.fuse_relu) os << ", fused ReLU";
  return os.str();
}

}  // namespace lowbit::layers
