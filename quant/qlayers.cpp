#include "quant/qlayers.h"

#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/parallel.h"
#include "quant/sat.h"

namespace lowbit::quant {

namespace {

void check_role(const QuantizerPtr& q, QuantRole role, const char* layer, const char* slot) {
  if (!q) return;
  LOWBIT_CHECK_INPUT(q->role() == role, layer, ": the ", slot, " quantizer '", q->name(),
                     "' has role ", role_name(q->role()), ", expected ", role_name(role));
}

// y * s along the last (channel) axis of an NHWC tensor, the 1 / sf of the folded conv. The
// CPU f32 path is one pass each way (the generic broadcasting divide and its reduction cost more
// than the convolution here); its scale gradient is reduced in fixed row blocks in double, so the
// result does not depend on the thread count. Other dtypes and CUDA use the core ops.
struct ScaleChannels : autograd::Function<ScaleChannels> {
  static constexpr const char* kName = "scale_channels";
  static bool fast(const Tensor& y, const Tensor& s) {
    return !y.is_cuda() && y.dtype() == DType::f32 && s.dtype() == DType::f32 &&
           y.is_contiguous() && s.is_contiguous();
  }
  static Tensor scale(const Tensor& y, const Tensor& s) {
    if (!fast(y, s)) return y * s;
    Tensor out = empty(y.shape(), TensorOptions(y.dtype(), y.device()));
    const int64_t c = s.numel(), rows = y.numel() / c;
    const float* yp = y.data<float>();
    const float* sp = s.data<float>();
    float* op = out.data<float>();
    core::for_each_chunk(
        rows,
        [&](int64_t b, int64_t e) {
          for (int64_t r = b; r < e; ++r) {
            for (int64_t k = 0; k < c; ++k) op[r * c + k] = yp[r * c + k] * sp[k];
          }
        },
        64);
    return out;
  }
  static Tensor forward(autograd::FunctionCtx& ctx, const Tensor& y, const Tensor& s) {
    ctx.save_for_backward({y, s});
    return scale(y.contiguous(), s.contiguous());
  }
  static std::vector<Tensor> backward(autograd::FunctionCtx& ctx, const std::vector<Tensor>& g) {
    auto saved = ctx.saved_tensors();
    const Tensor y = saved[0].contiguous(), s = saved[1].contiguous(), go = g[0].contiguous();
    Tensor dy = ctx.needs_input_grad()[0] ? scale(go, s) : Tensor();
    Tensor ds;
    if (ctx.needs_input_grad()[1]) {
      if (!fast(y, s) || go.dtype() != DType::f32) {
        std::vector<int64_t> dims;
        for (int64_t d = 0; d + 1 < y.dim(); ++d) dims.push_back(d);
        ds = sum(go * y, dims);
      } else {
        const int64_t c = s.numel(), rows = y.numel() / c;
        const int64_t blocks = std::min<int64_t>(64, std::max<int64_t>(rows, 1));
        std::vector<double> part(size_t(blocks * c), 0.0);
        const float* yp = y.data<float>();
        const float* gp = go.data<float>();
        core::for_each_index(
            blocks,
            [&](int64_t b) {
              const int64_t r0 = rows * b / blocks, r1 = rows * (b + 1) / blocks;
              double* acc = part.data() + b * c;
              for (int64_t r = r0; r < r1; ++r) {
                for (int64_t k = 0; k < c; ++k)
                  acc[k] += double(gp[r * c + k]) * double(yp[r * c + k]);
              }
            },
            1);
        std::vector<double> tot(size_t(c), 0.0);
        for (int64_t b = 0; b < blocks; ++b) {
          for (int64_t k = 0; k < c; ++k) tot[size_t(k)] += part[size_t(b * c + k)];
        }
        ds = empty({c}, TensorOptions(DType::f32, s.device()));
        float* dp = ds.data<float>();
        for (int64_t k = 0; k < c; ++k) dp[k] = float(tot[size_t(k)]);
      }
    }
    return {dy, ds};
  }
};

void check_quantizers(const QuantizerPtr& weight_q, const QuantizerPtr& input_q,
                      const char* layer) {
  LOWBIT_CHECK(weight_q != nullptr, layer, ": a weight quantizer is required");
  check_role(weight_q, QuantRole::weight, layer, "weight");
  check_role(input_q, QuantRole::activation, layer, "input");
}

std::string quant_repr(const Quantizer* w, const Quantizer* a) {
  std::string s = str_cat(", w_bits=", w ? std::to_string(w->bits()) : std::string("32"));
  s += str_cat(", a_bits=", a && a->enabled() ? std::to_string(a->bits()) : std::string("32"));
  return s;
}

}  // namespace

QConv2d::QConv2d(layers::Conv2d& src, QuantizerPtr weight_q, QuantizerPtr input_q)
    : layers::Conv2d([&] {
        layers::Conv2dOptions o = src.options();
        o.bias = false;  // the source's tensors are taken over below, nothing to draw
        return o;
      }()),
      weight_q_(std::move(weight_q)),
      input_q_(std::move(input_q)) {
  check_quantizers(weight_q_, input_q_, "QConv2d");
  opts_ = src.options();
  weight_ = src.weight();
  if (src.bias().defined()) {
    bias_ = src.bias();
    register_parameter("bias", &bias_);
  }
  register_module("weight_quantizer", weight_q_);
  if (input_q_) register_module("input_quantizer", input_q_);
  train(src.is_training());
}

void QConv2d::fold_bn(const std::shared_ptr<layers::BatchNorm2d>& bn) {
  LOWBIT_CHECK(bn != nullptr, "QConv2d::fold_bn: null BatchNorm2d");
  LOWBIT_CHECK(bn->options().num_features == opts_.out_channels && bn->options().affine &&
                   bn->options().track_running_stats,
               "QConv2d::fold_bn: BatchNorm2d(", bn->options().num_features,
               ") must be affine with running statistics and have ", opts_.out_channels,
               " features");
  bn_ = bn;
}

Tensor QConv2d::fold_factor() const {
  auto bn = bn_.lock();
  LOWBIT_CHECK(bn != nullptr, "QConv2d: the folded BatchNorm2d no longer exists");
  // sf = gamma / sqrt(var_r + eps): differentiable in gamma, running_var is a buffer. Divided
  // by the square root, as PyTorch's ConvBn2d, rather than times rsqrt: the largest weight of a
  // channel lands exactly on code qmax + 1/2 of a symmetric range (docs/methods.md, "Few bits"), so
  // one ulp of sf decides whether it rounds past qmax and loses its STE gradient.
  return bn->weight() / sqrt(bn->running_var().detach() + bn->options().eps);
}

Tensor QConv2d::quantized_weight() {
  return quantized_weight(bn_.expired() ? Tensor() : fold_factor());
}

Tensor QConv2d::quantized_weight(const Tensor& sf) {
  Tensor w = effective_weight();  // PfQ's mask mode zeroes (and freezes) pruned filters
  if (sf.defined()) w = w * sf.reshape({opts_.out_channels, 1, 1, 1});
  Tensor wq = weight_q_->forward(w);
  return sat_rescale_ ? quant::sat_rescale(wq, sat_fan_out(wq)) : wq;
}

Tensor QConv2d::forward(const Tensor& x) {
  const Tensor xq = input_q_ ? input_q_->forward(x) : x;
  Tensor y;
  if (bn_.expired()) {
    y = layers::conv2d(xq, quantized_weight(), bias_, opts_);
  } else {
    const Tensor sf = fold_factor();
    const Tensor wq = quantized_weight(sf);
    layers::Conv2dOptions o = opts_;
    o.bias = false;
    y = ScaleChannels::apply(layers::conv2d(xq, wq, Tensor(), o),
                             reciprocal(sf));  // NHWC: per channel
    if (bias_.defined()) y = y + bias_;
  }
  y = add_bias_map(y);  // PfQ border = exact (docs/methods.md, "PfQ")
  layers::notify_forward(*this, x, y);
  return y;
}

std::string QConv2d::extra_repr() const {
  return layers::Conv2d::extra_repr() + quant_repr(weight_q_.get(), input_q_.get()) +
         (bn_.expired() ? "" : ", bn_folded=True") + (sat_rescale_ ? ", sat_rescale=True" : "");
}

QLinear::QLinear(layers::Linear& src, QuantizerPtr weight_q, QuantizerPtr input_q)
    : layers::Linear(src.in_features(), src.out_features(), false),
      weight_q_(std::move(weight_q)),
      input_q_(std::move(input_q)) {
  check_quantizers(weight_q_, input_q_, "QLinear");
  weight_ = src.weight();
  if (src.bias().defined()) {
    bias_ = src.bias();
    register_parameter("bias", &bias_);
  }
  register_module("weight_quantizer", weight_q_);
  if (input_q_) register_module("input_quantizer", input_q_);
  train(src.is_training());
}

Tensor QLinear::forward(const Tensor& x) {
  const Tensor xq = input_q_ ? input_q_->forward(x) : x;
  Tensor y = layers::linear(xq, quantized_weight(), bias_);
  layers::notify_forward(*this, x, y);
  return y;
}

Tensor QLinear::quantized_weight() {
  Tensor wq = weight_q_->forward(effective_weight());  // a pruning mask applies first
  return sat_rescale_ ? quant::sat_rescale(wq, sat_fan_out(wq)) : wq;
}

std::string QLinear::extra_repr() const {
  return layers::Linear::extra_repr() + quant_repr(weight_q_.get(), input_q_.get()) +
         (sat_rescale_ ? ", sat_rescale=True" : "");
}

QuantAct::QuantAct(std::string activation, QuantizerPtr q)
    : activation_(std::move(activation)), q_(std::move(q)) {
  LOWBIT_CHECK_INPUT(activation_ == "relu" || activation_ == "relu6" || activation_ == "identity",
                     "QuantAct: activation '", activation_,
                     "' is not one of relu, relu6, identity");
  LOWBIT_CHECK(q_ != nullptr, "QuantAct: a quantizer is required");
  check_role(q_, QuantRole::activation, "QuantAct", "activation");
  register_module("quantizer", q_);
}

Tensor QuantAct::forward(const Tensor& x) {
  const Tensor a = activation_ == "relu" ? relu(x) : activation_ == "relu6" ? layers::relu6(x) : x;
  return q_->forward(a);
}

}  // namespace lowbit::quant
