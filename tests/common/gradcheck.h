// Central finite differences in double, Caffe's GradientChecker style: the analytic gradient of
// L = sum(f(x) * w) (w a fixed random upstream gradient) is compared with
// (L(x + eps) - L(x - eps)) / (2 eps) for every input element, with a tolerance relative to the
// larger of the two, and elements within `kink_band` of a listed kink (a clip edge, a rounding
// step) skipped.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <vector>

#include "core/tensor.h"

namespace lowbit::testing {

struct GradcheckOptions {
  double eps = 1e-6;
  double rtol = 1e-5;
  double atol = 1e-7;
  std::vector<double> kinks;  // input values where f is not differentiable
  double kink_band = 0.0;
  uint64_t seed = 7;
};

using GradFn = std::function<Tensor(const std::vector<Tensor>&)>;

// Inputs are converted to f64 CPU leaves. Fails naming the input, the element, and both values.
::testing::AssertionResult gradcheck(const GradFn& f, const std::vector<Tensor>& inputs,
                                     const GradcheckOptions& opts = {});

}  // namespace lowbit::testing
