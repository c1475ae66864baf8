// Conv2d on NHWC activations with KRSC weights (out, kh, kw, in/groups): stride, padding,
// dilation, groups (depthwise included), optional bias. CPU through oneDNN primitives and CUDA
// through cuDNN, both created/chosen once per shape and cached. No hand-written convolution
// loops outside the tests. State dicts convert the weight to PyTorch's OIHW at the edge.
#pragma once

#include <array>
#include <cstdint>
#include <string>

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
  Conv2dOptions(int64_t in, int64_t out, int64_t k) : in_channels(in), out_channels(out), kernel{k, k} {}
  Conv2dOptions& with_stride(int64_t s) { stride = {s, s}; return *this; }
  Conv2dOptions& with_padding(int64_t p) { padding = {p, p}; return *this; }
  Conv2dOptions& with_dilation(int64_t d) { dilation = {d, d}; return *this; }
  Conv2dOptions& with_groups(int64_t g) { groups = g; return *this; }
  Conv2dOptions& with_bias(bool b) { bias = b; return *this; }
};

// The geometry of one convolution call (checked against the tensors).
struct ConvShape {
  int64_t n, h, w, c;       // input NHWC
  int64_t k, r, s;          // filters, kernel height/width
  int64_t p, q;             // output height/width
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups;
};

ConvShape conv2d_shape(const Tensor& x, const Tensor& w, const Conv2dOptions& o);

// Functional form: x (N, H, W, C), weight (K, R, S, C/groups), bias (K) or undefined.
// Differentiable in x, weight and bias.
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dOptions& o);

// The kernels (CPU: oneDNN; CUDA: cuDNN). y is preallocated (N, P, Q, K); grads likewise.
void conv2d_forward_cpu(const ConvShape& s, const Tensor& x, const Tensor& w, const Tensor& b,
                        const Tensor& y);
void conv2d_backward_cpu(const ConvShape& s, const Tensor& x, const Tensor& w, const Tensor& dy,
                         const Tensor& dx, const Tensor& dw, const Tensor& db);
void conv2d_forward_cuda(const ConvShape& s, const Tensor& x, const Tensor& w, const Tensor& b,
                         const Tensor& y);
void conv2d_backward_cuda(const ConvShape& s, const Tensor& x, const Tensor& w, const Tensor& dy,
                          const Tensor& dx, const Tensor& dw, const Tensor& db);

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

 protected:
  Conv2dOptions opts_;
  Tensor weight_;  // (K, R, S, C/groups)
  Tensor bias_;    // (K) or undefined
};

// KRSC <-> OIHW (PyTorch) weight layouts.
Tensor krsc_to_oihw(const Tensor& w);
Tensor oihw_to_krsc(const Tensor& w);

}  // namespace lowbit::layers
