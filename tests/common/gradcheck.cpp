#include "tests/common/gradcheck.h"

#include <cmath>
#include <sstream>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/random.h"

namespace lowbit::testing {

::testing::AssertionResult gradcheck(const GradFn& f, const std::vector<Tensor>& inputs_in,
                                     const GradcheckOptions& opts) {
  std::vector<Tensor> inputs;
  for (const auto& t : inputs_in) {
    Tensor x = t.detach().to(Device::cpu(), DType::f64).contiguous().clone();
    x.requires_grad_(true);
    inputs.push_back(x);
  }
  Tensor y = f(inputs);
  if (!y.requires_grad()) {
    return ::testing::AssertionFailure() << "gradcheck: the output does not require grad";
  }
  manual_seed(opts.seed);
  Tensor w = randn(y.shape(), TensorOptions(DType::f64, Device::cpu()));
  y.backward(w);

  auto loss = [&]() {
    autograd::NoGradGuard guard;
    Tensor out = f(inputs).to(Device::cpu(), DType::f64);
    return sum(out * w).item();
  };

  for (size_t a = 0; a < inputs.size(); ++a) {
    Tensor x = inputs[a];
    Tensor g = x.grad();
    std::vector<double> analytic =
        g.defined() ? g.to_vector<double>() : std::vector<double>(size_t(x.numel()), 0.0);
    double* p = x.data<double>();
    for (int64_t j = 0; j < x.numel(); ++j) {
      const double orig = p[j];
      bool near_kink = false;
      for (double k : opts.kinks) near_kink |= std::fabs(orig - k) <= opts.kink_band;
      if (near_kink) continue;
      p[j] = orig + opts.eps;
      const double lp = loss();
      p[j] = orig - opts.eps;
      const double lm = loss();
      p[j] = orig;
      const double numeric = (lp - lm) / (2 * opts.eps);
      const double an = analytic[size_t(j)];
      const double scale = std::max(std::fabs(numeric), std::fabs(an));
      if (!(std::fabs(numeric - an) <= opts.atol + opts.rtol * scale)) {
        return ::testing::AssertionFailure()
               << "gradcheck: input " << a << " (shape " << shape_str(x.shape()) << ") element "
               << j << " (value " << orig << "): analytic " << an << ", numeric " << numeric;
      }
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace lowbit::testing
