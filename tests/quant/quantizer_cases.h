// What a quantizer's test file declares for the generic quantizer suites
// (tests/quant/quantizer_generic_test.cpp): one or more cases, each a set of options and an input
// shape. The generic suites run every registered quantizer through its cases (forward, backward,
// state-dict round trip on the CPU; CPU-vs-CUDA parity on a GPU) and fail for a registered
// quantizer that declares none, so a plugin cannot land without them. Next to its own tests:
//
//   LOWBIT_QUANTIZER_TEST_CASES("pact",
//       {{{"alpha", "2.0"}}, {8, 6, 6, 16}},                   // bit for bit on CUDA
//       {{{"role", "weight"}}, {16, 3, 3, 8}, 1e-6, 1e-5});    // forward / input-gradient
//       tolerance
//
// Shapes follow the layouts the layers give: weights KRSC (per-channel along axis 0),
// activations NHWC. Inputs are randn(shape) * 1.5 + 0.2.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/registry.h"
#include "core/tensor.h"
#include "quant/quantizer.h"

namespace lowbit::quant::testing_util {

struct QuantizerCase {
  QuantizerOptions options;
  Shape shape;
  // CUDA vs CPU: forward (0: bit for bit; else the absolute difference allowed, e.g. one level
  // where tanh differs by ulps) and input gradient (relative and absolute) tolerances.
  double fwd_tol = 0;
  double grad_tol = 0;
};

// Quantizer name -> its declared cases, in declaration order.
inline Registry<std::vector<QuantizerCase>>& quantizer_cases() {
  static Registry<std::vector<QuantizerCase>> r("quantizer test case");
  return r;
}

struct QuantizerCaseRegistrar {
  QuantizerCaseRegistrar(const std::string& quantizer, std::vector<QuantizerCase> cases) {
    quantizer_cases().add(quantizer, std::move(cases));
  }
};

}  // namespace lowbit::quant::testing_util

#define LOWBIT_QUANTIZER_TEST_CASES(name, ...)                                      \
  static ::lowbit::quant::testing_util::QuantizerCaseRegistrar LOWBIT_REGISTER_CAT( \
      lowbit_quantizer_cases_, __LINE__)(                                           \
      name, std::vector<::lowbit::quant::testing_util::QuantizerCase>{__VA_ARGS__})
