// fused_quantize<Op>: the autograd glue of a fused op (quant/fused.h), written once. A quantizer
// with its own math checks its arguments, fills the op's Params and calls this; it runs the
// forward kernel and, when anything requires grad, records one backward that runs the op's fused
// backward kernel and hands term k of the op's parameter gradients to learned parameter k.
// Include from .cpp files (it needs core/autograd.h); the kernels are registered as usual
// (LOWBIT_REGISTER_FUSED_OP in the .cpp; the CUDA twin is generated, quant/CMakeLists.txt).
//
//   PactParams p{detail::prepare_param(alpha, x, l, acc, op, "alpha"), bits, ...};
//   return fused_quantize<PactOp>(op, x, l, p, {alpha}, {&PactParams::alpha});
#pragma once

#include <vector>

#include "core/autograd.h"
#include "core/tensor.h"
#include "quant/fused.h"

namespace lowbit::quant {

template <template <typename> class Op>
using FusedParams = typename Op<float>::Params;
// A tensor member of an op's Params (&PactParams::alpha).
template <template <typename> class Op>
using FusedParamTensor = Tensor FusedParams<Op>::*;

// y = Op(x_in) (x_in's dtype and shape), differentiable in x_in and in `learned`.
//   l        x_in's (outer, channels, inner) layout; p the op's parameters (tensors already in
//            the math dtype on x_in's device, e.g. from detail::prepare_param).
//   learned  the parameters as the caller holds them, in the order of the op's gradient terms:
//            learned[k] receives term k (kTerms rows of (C)), reshaped to its shape and dtype;
//            an undefined tensor is no input and takes no gradient. At most kTerms of them.
//   saved    the members of p the backward reads: kept with autograd::SavedTensor, so an
//            in-place update between forward and backward is an error, not a wrong gradient.
template <template <typename> class Op>
Tensor fused_quantize(const char* op, const Tensor& x_in, const ChannelLayout& l,
                      const FusedParams<Op>& p, const std::vector<Tensor>& learned,
                      const std::vector<FusedParamTensor<Op>>& saved) {
  static_assert(Op<float>::kTerms >= 0, "an op of quant/fused.h");
  LOWBIT_CHECK(int(learned.size()) <= Op<float>::kTerms, op, ": ", learned.size(),
               " learned parameters but the op has ", Op<float>::kTerms, " gradient terms");
  Tensor x = x_in.detach().contiguous();
  Tensor y = fused_forward<Op>(x, l, p);
  std::vector<Tensor> inputs{x_in};
  for (const Tensor& t : learned) {
    if (t.defined()) inputs.push_back(t);
  }
  if (!autograd::any_requires_grad(inputs)) return y;
  struct Learned {
    int term;
    bool need;
    Shape shape;
    DType dtype;
  };
  std::vector<Learned> terms;
  bool any_param = false;
  for (size_t k = 0; k < learned.size(); ++k) {
    if (!learned[k].defined()) continue;
    terms.push_back({int(k), learned[k].requires_grad(), learned[k].shape(), learned[k].dtype()});
    any_param = any_param || learned[k].requires_grad();
  }
  const bool need_x = x_in.requires_grad();
  autograd::SavedTensor sx(x, op);
  std::vector<autograd::SavedTensor> st;
  for (const auto& m : saved) st.emplace_back(p.*m, op);
  autograd::record(op, inputs, y, [=](const Tensor& g) {
    Tensor xs = sx.unpack();
    FusedParams<Op> bp = p;
    for (size_t i = 0; i < saved.size(); ++i) bp.*saved[i] = st[i].unpack();
    auto [dx, grads] =
        fused_backward<Op>(xs, g.to(xs.dtype()).contiguous(), l, bp, need_x, any_param);
    std::vector<Tensor> out{dx};
    for (const Learned& t : terms) {
      out.push_back(t.need ? grads.select(0, t.term).reshape(t.shape).to(t.dtype) : Tensor());
    }
    return out;
  });
  return y;
}

}  // namespace lowbit::quant
