// Conv2d on NHWC activations with KRSC weights (out, kh, kw, in/groups): stride, padding,
// dilation, groups (depthwise included), optional bias. CPU through oneDNN primitives (and, for
// 3x3 stride-1 f32 convolutions, lowbit's Winograd F(4x4, 3x3), which is faster than oneDNN's
// kernels: layers/winograd_cpu.h) and CUDA through cuDNN, both created/chosen once per shape and
// cached. State dicts convert the weight to PyTorch's OIHW at the edge.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "core/dispatch.h"
#include "core/tensor.h"
#include "layers/module.h"

namespace lowbit::layers {

struct Conv2dOptions {
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  std::array<int64_t, 2> kernel{1, 1};
  std::array<int64_t, 2> stride{1, 1};
  std::array<int64_t, 2> padding{0, 0};
  std::array<int64_t, 2> dilation{1, 1};
  int64_t groups = 1;
  bool bias = true;

  Conv2dOptions() = default;
  Conv2dOptions(int64_t in, int64_t out, int64_t k)
      : in_channels(in), out_channels(out), kernel{k, k} {}
  Conv2dOptions& with_stride(int64_t s) {
    stride = {s, s};
    return *this;
  }
  Conv2dOptions& with_padding(int64_t p) {
    padding = {p, p};
    return *this;
  }
  Conv2dOptions& with_dilation(int64_t d) {
    dilation = {d, d};
    return *this;
  }
  Conv2dOptions& with_groups(int64_t g) {
    groups = g;
    return *this;
  }
  Conv2dOptions& with_bias(bool b) {
    bias = b;
    return *this;
  }
};

// The geometry of one convolution call (checked against the tensors).
struct ConvShape {
  int64_t n, h, w, c;  // input NHWC
  int64_t k, r, s;     // filters, kernel height/width
  int64_t p, q;        // output height/width
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups;
};

ConvShape conv2d_shape(const Tensor& x, const Tensor& w, const Conv2dOptions& o);
// Output size along one axis: (in + 2 pad - dil (k - 1) - 1) / stride + 1.
inline int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  return (in + 2 * pad - dil * (k - 1) - 1) / stride + 1;
}

// Functional form: x (N, H, W, C), weight (K, R, S, C/groups), bias (K) or undefined.
// Differentiable in x, weight and bias.
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dOptions& o);

// How the CPU backend computes dense 3x3 stride-1 f32 convolutions:
//  direct:      oneDNN's direct (brgemm/jit) kernels everywhere, as PyTorch.
//  winograd:    oneDNN's Winograd F(4x4, 3x3) (its AVX-512 jit_wino_4x3) wherever it applies,
//               reordering activations to its blocked layout and back when they are not NHWC
//               byte for byte.
//  winograd_f4: lowbit's own Winograd F(4x4, 3x3) (layers/winograd_cpu.h: padding 1, channel
//               counts multiples of 16, AVX-512F) wherever it applies, oneDNN direct elsewhere.
//  winograd_f2: the same with F(2x2, 3x3): slower, 5-10x less rounding error than F(4x4).
//  auto:        lowbit's pick per shape: today winograd_f4 where it applies and both channel
//               counts are at most 256 (the measured range), direct elsewhere.
// Measured (docs/benchmarks.md, "lowbit's Winograd"): oneDNN's Winograd is faster per call on
// data in cache but not in a training step (its transformed tensors, 2.25x the data, and the
// reorders cost what they save); lowbit's keeps its transformed tiles in per-thread buffers that
// stay in cache: F(4x4, 3x3) is 1.3-1.9x faster than oneDNN's direct kernels per call.
// The Winograd variants round differently from the direct sum: F(2x2, 3x3) about twice its f32
// error, F(4x4, 3x3) (both oneDNN's and lowbit's) 5-20 times it, about 1-3e-6 of the largest
// output (tests/layers/conv2d_test.cpp and winograd_cpu_test.cpp compare them with the naive
// loops). bf16, grouped and strided convolutions always take oneDNN's direct kernels. Process-wide;
// kernels are cached per geometry and algorithm.
enum class CpuConvAlgo { auto_, direct, winograd, winograd_f2, winograd_f4 };
void set_cpu_conv_algo(CpuConvAlgo algo);
CpuConvAlgo cpu_conv_algo();
// "auto" | "direct" | "winograd" | "winograd_f2" | "winograd_f4"; anything else is an error
// naming `what` and the choices.
CpuConvAlgo parse_cpu_conv_algo(const std::string& name, const std::string& what);
const char* cpu_conv_algo_name(CpuConvAlgo algo);
// The names of the kernels the CPU backend runs for `s` under the current algorithm: the
// forward's (oneDNN's "jit_wino_4x3:avx512_core", "brgconv:avx512_core", ..., or lowbit's
// "lowbit_wino_f4x4:avx512f", "lowbit_wino_f2x2:avx512f"), or with backward the data and weight
// gradients' joined by ", ".
std::string conv2d_cpu_kernel(const ConvShape& s, bool with_bias, DType t, bool backward = false);

// The kernels: y is preallocated (N, P, Q, K); grads likewise (undefined ones are skipped).
// The stubs pick the backend by device (core/dispatch.h): CPU through oneDNN (the _cpu functions,
// also called directly by tests), CUDA through cuDNN (registered by conv2d.cu).
void conv2d_forward_cpu(const ConvShape& s, const Tensor& x, const Tensor& w, const Tensor& b,
                        const Tensor& y);
void conv2d_backward_cpu(const ConvShape& s, const Tensor& x, const Tensor& w, const Tensor& dy,
                         const Tensor& dx, const Tensor& dw, const Tensor& db);
using Conv2dForwardFn = void (*)(const ConvShape& s, const Tensor& x, const Tensor& w,
                                 const Tensor& b, const Tensor& y);
using Conv2dBackwardFn = void (*)(const ConvShape& s, const Tensor& x, const Tensor& w,
                                  const Tensor& dy, const Tensor& dx, const Tensor& dw,
                                  const Tensor& db);
LOWBIT_DECLARE_STUB(conv2d_forward_stub, Conv2dForwardFn);
LOWBIT_DECLARE_STUB(conv2d_backward_stub, Conv2dBackwardFn);

// The geometry as one line, for logs and errors: "N=2 H=8 W=8 C=16 -> K=32 R=3 S=3 stride=1x1
// padding=1x1 dilation=1x1 groups=1".
std::string conv2d_shape_str(const ConvShape& s);
// The stderr line (without "lowbit warning: ") conv2d.cu writes when cuDNN offers no
// deterministic algorithm for a geometry, dtype and direction ("forward", "backward-data",
// "backward-filter") and it runs the non-deterministic `algo` instead. Its choice is cached,
// so this is logged once per geometry, dtype and direction.
std::string conv2d_nondeterministic_note(const ConvShape& s, DType t, const char* direction,
                                         const char* algo);

class Conv2d : public Module {
 public:
  explicit Conv2d(const Conv2dOptions& o);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Conv2d"; }
  std::string extra_repr() const override;
  Tensor to_layout(const std::string& local_name, const Tensor& t, Layout from,
                   Layout to) const override;

  const Conv2dOptions& options() const { return opts_; }
  Tensor& weight() { return weight_; }
  Tensor& bias() { return bias_; }

  // Pruning support (prune/, docs/methods.md, "PfQ"). Subclasses that override forward (QConv2d)
  // call effective_weight() and add_bias_map() so masks and bias maps apply to them too. The weight
  // the convolution uses: weight * weight_mask (per output channel, or per element for a mask of
  // the weight's shape) when a mask is set, else the weight itself. Masked filters or elements are
  // exactly zero and get zero gradient.
  Tensor effective_weight() const;
  // y (N, P, Q, K) + bias_map (P, Q, K) when a bias map is set (PfQ border = exact), else y.
  Tensor add_bias_map(const Tensor& y) const;
  // Sets the mask, 0 or 1, on the weight's device: per output channel (K) (PfQ's mask mode) or
  // per element (K, R, S, C/groups) (unstructured pruning at initialization, prune/precrop.h).
  // Registered as the buffer "weight_mask" on first use, so unmasked state dicts keep their keys.
  void set_weight_mask(const Tensor& mask);
  const Tensor& weight_mask() const { return weight_mask_; }
  // Sets the (P, Q, K) bias map (buffer "bias_map"; the conv then wants P x Q outputs).
  void set_bias_map(const Tensor& map);
  const Tensor& bias_map() const { return bias_map_; }
  // Creates a zero bias (parameter "bias", requires_grad) when the conv has none.
  void ensure_bias();
  // Keeps the output channels out_keep (rows of weight, bias, mask, bias map) and the input
  // channels in_keep (weight's last axis), both sorted and unique, in place; tensors keep their
  // device, dtype and requires_grad. A depthwise conv (groups == in == out) keeps the same
  // channels on both sides: pass in_keep == out_keep and groups follows. Optimizers holding the
  // old tensors must be rebuilt.
  void keep_channels(const std::vector<int64_t>& out_keep, const std::vector<int64_t>& in_keep);

 protected:
  Conv2dOptions opts_;
  Tensor weight_;       // (K, R, S, C/groups)
  Tensor bias_;         // (K) or undefined
  Tensor weight_mask_;  // (K), the weight's shape, or undefined
  Tensor bias_map_;     // (P, Q, K) or undefined
};

// t with only the entries `keep` (sorted, unique, in range) along dim, as a new contiguous
// tensor on t's device without grad history (requires_grad as t). Channel surgery uses it.
Tensor keep_along(const Tensor& t, int64_t dim, const std::vector<int64_t>& keep);

// KRSC <-> OIHW (PyTorch) weight layouts.
Tensor krsc_to_oihw(const Tensor& w);
Tensor oihw_to_krsc(const Tensor& w);

}  // namespace lowbit::layers
