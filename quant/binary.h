// Binary quantization (BinaryConnect/BNN with XNOR-Net scaling; docs/methods.md, "Binary and
// ternary"), registered as "binary":
//   w_b = a_k * sign(w), a_k = mean |W[k]| over the n elements of channel k (scaling=mean_abs,
//   per output channel by default for weights; per-tensor with per_channel=false), or sign(w)
//   (scaling=none, the default for activations). sign(0) = +1.
//   dL/dW[k,i] = a_k * 1[|W[k,i]| <= 1] * dL/dW_b[k,i]
//              + sign(W[k,i]) / n * sum_j sign(W[k,j]) * dL/dW_b[k,j]     (exact, through a_k)
// The scale comes from a reduction before the fused forward pass; the backward reduces the
// per-channel sum (a fused reduce pass) and then writes dL/dW in one elementwise pass. No learned
// parameters. Options: role, bits (1 only), per_channel, axis, scaling (mean_abs | none).
#pragma once

#include <string>

#include "core/hd.h"
#include "quant/fused.h"
#include "quant/quantizer.h"

namespace lowbit::quant {

struct BinaryParams {
  Tensor scale;   // (C) acc dtype, or undefined (no scaling)
  Tensor sums;    // (C) acc dtype: sum_j sign(W[k,j]) dL/dW_b[k,j] (backward), or undefined
  int64_t n = 1;  // elements per channel
};

// Forward sign(x) * a_c; backward the STE term plus, when sums is given, the term through a_c.
template <typename A>
struct BinaryOp {
  using Params = BinaryParams;
  static constexpr const char* kName = "binarize";
  static constexpr int kTerms = 0;
  const A* scale;
  const A* sums;
  A n;
  explicit BinaryOp(const Params& p)
      : scale(p.scale.defined() ? p.scale.data<A>() : nullptr),
        sums(p.sums.defined() ? p.sums.data<A>() : nullptr),
        n(A(p.n)) {}
  struct Channel {
    A a;         // a_c, or 1 without scaling
    A sum_n;     // sum_j sign(W[c,j]) dL/dW_b[c,j] / n
    bool exact;  // add the term through a_c
    LOWBIT_HD A forward(A x) const { return qmath::sign(x) * a; }
    LOWBIT_HD A backward(A x, A dy, A*) const {
      const A ax = x < A(0) ? -x : x;
      const A g = (ax <= A(1) ? dy : A(0)) * a;
      return exact ? g + qmath::sign(x) * sum_n : g;
    }
  };
  LOWBIT_HD Channel channel(int64_t c) const {
    return {scale != nullptr ? scale[c] : A(1), sums != nullptr ? sums[c] / n : A(0),
            sums != nullptr};
  }
  LOWBIT_HD A finish(int, int64_t, double s) const { return A(s); }
};
// The reduce pass of the scaled backward: term 0 = sign(x) * dy, summed per channel.
template <typename A>
struct BinarySumOp {
  using Params = BinaryParams;
  static constexpr const char* kName = "binarize_scale_grad";
  static constexpr int kTerms = 1;
  explicit BinarySumOp(const Params&) {}
  struct Channel {
    LOWBIT_HD A forward(A x) const { return x; }
    LOWBIT_HD A backward(A x, A dy, A* terms) const {
      terms[0] = qmath::sign(x) * dy;
      return A(0);
    }
  };
  LOWBIT_HD Channel channel(int64_t) const { return {}; }
  LOWBIT_HD A finish(int, int64_t, double s) const { return A(s); }
};

// Binarizes x (any shape, floating), with mean-|x| scaling per channel along axis
// (per_channel) or per tensor when scaled; differentiable in x.
Tensor binarize(const Tensor& x, bool scaled, bool per_channel = true, int64_t axis = 0);

class BinaryQuantizer : public Quantizer {
 public:
  explicit BinaryQuantizer(OptionReader& r);
  std::string type_name() const override { return "BinaryQuantizer"; }

 protected:
  Tensor quantize(const Tensor& x) override;
  std::string options_repr() const override;

 private:
  bool scaled_ = false;
};

}  // namespace lowbit::quant
