// SAT weight rescaling (docs/methods.md, "SAT"): core ops only, so both backends run it.
#include "quant/sat.h"

#include "core/autograd.h"
#include "core/error.h"
#include "core/ops.h"

namespace lowbit::quant {

int64_t sat_fan_out(const Tensor& weight) {
  LOWBIT_CHECK(weight.defined() && (weight.dim() == 4 || weight.dim() == 2),
               "sat_fan_out: wants a KRSC conv or (out, in) linear weight, got ",
               weight.defined() ? shape_str(weight.shape()) : std::string("undefined"));
  return weight.numel() / weight.size(weight.dim() - 1);
}

Tensor sat_factor(const Tensor& wq, int64_t n_out) {
  LOWBIT_CHECK(n_out >= 1, "sat_factor: n_out must be positive, got ", n_out);
  LOWBIT_CHECK(wq.numel() >= 2, "sat_factor: the variance needs two weights, got ", wq.numel());
  autograd::NoGradGuard ng;
  return rsqrt(var(wq.detach()) * double(n_out) + 1e-30);
}

Tensor sat_rescale(const Tensor& wq, int64_t n_out) { return wq * sat_factor(wq, n_out); }

}  // namespace lowbit::quant
