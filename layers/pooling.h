// MaxPool2d, AvgPool2d and global average pooling on NHWC activations. Forward runs one thread
// per output element, backward one thread per input element gathering from the outputs whose
// window covers it (no atomics, deterministic). The window math is written once here as
// LOWBIT_HD functions shared by pooling.cpp and pooling.cu.
#pragma once

#include <cstdint>
#include <string>

#include "core/dispatch.h"
#include "core/hd.h"
#include "core/tensor.h"
#include "layers/module.h"

namespace lowbit::layers {

struct Pool2dOptions {
  int64_t kernel_h = 2, kernel_w = 2;
  int64_t stride_h = 2, stride_w = 2;  // PyTorch's default stride is the kernel size
  int64_t pad_h = 0, pad_w = 0;
  bool ceil_mode = false;
  bool count_include_pad = true;  // AvgPool2d: divide by the full window, as PyTorch's default

  static Pool2dOptions square(int64_t k, int64_t s = -1, int64_t p = 0) {
    Pool2dOptions o;
    o.kernel_h = o.kernel_w = k;
    o.stride_h = o.stride_w = s > 0 ? s : k;
    o.pad_h = o.pad_w = p;
    return o;
  }
};

// Geometry of one pooling call.
struct PoolGeom {
  int64_t n, h, w, c, p, q;
  int64_t kh, kw, sh, sw, ph, pw;
  bool include_pad;
};

PoolGeom pool_geom(const Tensor& x, const Pool2dOptions& o, const char* op);

Tensor max_pool2d(const Tensor& x, const Pool2dOptions& o);
Tensor avg_pool2d(const Tensor& x, const Pool2dOptions& o);
// Mean over H and W: (N, H, W, C) -> (N, C).
Tensor global_avg_pool2d(const Tensor& x);
// Output size of a pooling window k, stride s, padding p over `in` (PyTorch's, ceil mode too).
int64_t pooled_size(int64_t in, int64_t k, int64_t s, int64_t p, bool ceil_mode);

class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(const Pool2dOptions& o) : opts_(o) {}
  Tensor forward(const Tensor& x) override { return max_pool2d(x, opts_); }
  std::string type_name() const override { return "MaxPool2d"; }
  std::string extra_repr() const override;
  const Pool2dOptions& options() const { return opts_; }

 private:
  Pool2dOptions opts_;
};

class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(const Pool2dOptions& o) : opts_(o) {}
  Tensor forward(const Tensor& x) override { return avg_pool2d(x, opts_); }
  std::string type_name() const override { return "AvgPool2d"; }
  std::string extra_repr() const override;

 private:
  Pool2dOptions opts_;
};

// AdaptiveAvgPool2d(1) followed by flatten: (N, H, W, C) -> (N, C).
class GlobalAvgPool2d : public Module {
 public:
  Tensor forward(const Tensor& x) override { return global_avg_pool2d(x); }
  std::string type_name() const override { return "GlobalAvgPool2d"; }
};

namespace detail {

// Input rows/cols [lo, hi) of the window of output index o (clipped to the input).
LOWBIT_HD void pool_window(int64_t o, int64_t stride, int64_t pad, int64_t k, int64_t size,
                           int64_t* lo, int64_t* hi) {
  const int64_t start = o * stride - pad;
  *lo = start < 0 ? 0 : start;
  *hi = start + k < size ? start + k : size;
}
// Output indices [lo, hi) whose window covers input index i.
LOWBIT_HD void pool_covering(int64_t i, int64_t stride, int64_t pad, int64_t k, int64_t outs,
                             int64_t* lo, int64_t* hi) {
  const int64_t a = i + pad - k + 1;  // smallest o with o*stride >= a
  int64_t l = a <= 0 ? 0 : (a + stride - 1) / stride;
  int64_t h = (i + pad) / stride + 1;
  *lo = l;
  *hi = h < outs ? h : outs;
}
// The divisor of output (p, q) of an average pool.
LOWBIT_HD int64_t avg_divisor(const PoolGeom& g, int64_t p, int64_t q) {
  if (g.include_pad) {
    // PyTorch counts padding but not the part of a ceil-mode window beyond the padded input.
    int64_t h0 = p * g.sh - g.ph, w0 = q * g.sw - g.pw;
    int64_t h1 = h0 + g.kh < g.h + g.ph ? h0 + g.kh : g.h + g.ph;
    int64_t w1 = w0 + g.kw < g.w + g.pw ? w0 + g.kw : g.w + g.pw;
    return (h1 - h0) * (w1 - w0);
  }
  int64_t hl, hh, wl, wh;
  pool_window(p, g.sh, g.ph, g.kh, g.h, &hl, &hh);
  pool_window(q, g.sw, g.pw, g.kw, g.w, &wl, &wh);
  return (hh - hl) * (wh - wl);
}

// Kernels: x (N, H, W, C) and y (N, P, Q, C) contiguous; argmax (N, P, Q, C) i64 holds the flat
// input index (h * W + w) of each maximum. CPU kernels in pooling.cpp, CUDA in pooling.cu, each
// registered on its stub (core/dispatch.h).
using MaxPoolForwardFn = void (*)(const PoolGeom& g, const Tensor& x, const Tensor& y,
                                  const Tensor& argmax);
using MaxPoolBackwardFn = void (*)(const PoolGeom& g, const Tensor& dy, const Tensor& argmax,
                                   const Tensor& dx);
// avg_pool forward (x, y) and backward (dy, dx) share the signature.
using AvgPoolFn = void (*)(const PoolGeom& g, const Tensor& in, const Tensor& out);
LOWBIT_DECLARE_STUB(max_pool_forward_stub, MaxPoolForwardFn);
LOWBIT_DECLARE_STUB(max_pool_backward_stub, MaxPoolBackwardFn);
LOWBIT_DECLARE_STUB(avg_pool_forward_stub, AvgPoolFn);
LOWBIT_DECLARE_STUB(avg_pool_backward_stub, AvgPoolFn);

}  // namespace detail

}  // namespace lowbit::layers
