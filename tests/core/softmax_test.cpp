// softmax and log_softmax against the naive double loop of tests/reference/softmax_ref.h on
// every dim of a 3-D tensor (positive and negative), in several layouts and every float dtype;
// rows sum to 1; large inputs (±1000) stay finite; rows longer than the OpenMP grain; errors.
#include <gmock/gmock.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/ops.h"
#include "core/random.h"
#include "tests/common/test_util.h"
#include "tests/core/core_test_helpers.h"
#include "tests/reference/reduce_ref.h"
#include "tests/reference/softmax_ref.h"

namespace lowbit::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

// Computed in float (double for f64), then rounded once to the dtype. log_softmax's
// x - max - log(sum) also loses a few float ulps of the operands' magnitude (~|x|): atol.
Tolerance softmax_tolerance(DType dt, bool log) {
  Tolerance t = rounding_tolerance(dt);
  if (dt == DType::f32) t.rtol = 2e-6;
  if (log) t.atol = dt == DType::f64 ? 1e-13 : 1e-6;
  return t;
}

class Softmax : public ::testing::TestWithParam<std::tuple<bool, DType>> {};

TEST_P(Softmax, EveryDimMatchesReference) {
  const bool log = std::get<0>(GetParam());
  const DType dt = std::get<1>(GetParam());
  const Tolerance tol = softmax_tolerance(dt, log);
  manual_seed(301);
  ref::Array v = uniform_ref({3, 4, 5}, -4, 4);
  ref::Array xv = to_ref(from_ref(v, dt));
  for (Layout layout :
       {Layout::contiguous, Layout::permuted, Layout::transposed, Layout::strided}) {
    Tensor x = make_layout(v, dt, layout);
    for (int64_t d = 0; d < 3; ++d) {
      SCOPED_TRACE(str_cat(layout_name(layout), ", dim ", d));
      ref::Array want = ref::softmax(xv, d, log);
      Tensor y = log ? log_softmax(x, d) : softmax(x, d);
      EXPECT_EQ(y.dtype(), dt);
      EXPECT_EQ(y.shape(), x.shape());
      EXPECT_TENSOR_NEAR(y, from_ref(want, DType::f64), tol.rtol, tol.atol);
      Tensor yn = log ? log_softmax(x, d - 3) : softmax(x, d - 3);
      EXPECT_TENSOR_NEAR(yn, y, 0, 0);
    }
  }
}

TEST_P(Softmax, RowsSumToOne) {
  const bool log = std::get<0>(GetParam());
  const DType dt = std::get<1>(GetParam());
  manual_seed(302);
  Tensor x = from_ref(uniform_ref({6, 7, 9}, -6, 6), dt);
  for (int64_t d = 0; d < 3; ++d) {
    SCOPED_TRACE(str_cat("dim ", d));
    Tensor p = log ? exp(log_softmax(x, d).to(DType::f64)) : softmax(x, d).to(DType::f64);
    // Each of the <= 9 terms carries one rounding of the dtype.
    const double tol = 9 * rounding_tolerance(dt).rtol + 1e-12;
    Tensor total = sum(p, {d});
    EXPECT_TENSOR_NEAR(total, ones(total.shape(), DType::f64), 0, tol);
  }
}

// Inputs far outside exp's range: the max is subtracted first, so nothing overflows or becomes
// NaN, and log_softmax keeps its (large, finite) values.
TEST_P(Softmax, LargeInputsStayFinite) {
  const bool log = std::get<0>(GetParam());
  const DType dt = std::get<1>(GetParam());
  const Tolerance tol = softmax_tolerance(dt, log);
  ref::Array v({3, 4}, {1000, -1000, 0, 999,         //
                        -1000, -1000, -1000, -1000,  //
                        1000, 1000, -1000, 1000});
  ref::Array xv = to_ref(from_ref(v, dt));
  Tensor y = log ? log_softmax(from_ref(v, dt), 1) : softmax(from_ref(v, dt), 1);
  for (double e : to_doubles(y)) EXPECT_TRUE(std::isfinite(e)) << e;
  EXPECT_TENSOR_NEAR(y, from_ref(ref::softmax(xv, 1, log), DType::f64), tol.rtol, tol.atol);
  // Along dim 0 as well (a non-last dim goes through the permuted path).
  Tensor y0 = log ? log_softmax(from_ref(v, dt), 0) : softmax(from_ref(v, dt), 0);
  for (double e : to_doubles(y0)) EXPECT_TRUE(std::isfinite(e)) << e;
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, Softmax,
                         ::testing::Combine(::testing::Bool(),
                                            ::testing::Values(DType::f32, DType::f64, DType::bf16,
                                                              DType::f16)),
                         [](const auto& tp) {
                           return std::string(std::get<0>(tp.param) ? "log_softmax_" : "softmax_") +
                                  dtype_name(std::get<1>(tp.param));
                         });

// Many rows (the OpenMP split over rows) and one long row.
TEST(SoftmaxShapes, ManyRowsAndLongRows) {
  manual_seed(303);
  for (const ref::Dims& shape : {ref::Dims{70, 1000}, ref::Dims{2, 40000}, ref::Dims{1}}) {
    SCOPED_TRACE(str_cat("shape ", shape));
    ref::Array v = uniform_ref(shape, -10, 10);
    ref::Array xv = to_ref(from_ref(v, DType::f32));
    const int64_t last = int64_t(shape.size()) - 1;
    // The row sum accumulates in float (core/kernels.h): its error grows with the row length,
    // up to len * 2^-24 relative, which also bounds log(sum)'s absolute error.
    const double acc = double(shape.back()) * std::ldexp(1.0, -24);
    EXPECT_TENSOR_NEAR(softmax(from_ref(v, DType::f32), -1),
                       from_ref(ref::softmax(xv, last, false), DType::f64), acc + 2e-6, 1e-30);
    EXPECT_TENSOR_NEAR(log_softmax(from_ref(v, DType::f32), -1),
                       from_ref(ref::softmax(xv, last, true), DType::f64), 1e-6, acc + 1e-6);
  }
}

TEST(SoftmaxShapes, ScalarAndSizeOneDims) {
  EXPECT_EQ(softmax(scalar_tensor(3.0)).item(), 1.0);
  EXPECT_EQ(log_softmax(scalar_tensor(3.0)).item(), 0.0);
  EXPECT_EQ(softmax(scalar_tensor(3.0)).dim(), 0);
  Tensor x = tensor_of({1, 2, 3}, {3, 1}, DType::f32);
  EXPECT_TENSOR_NEAR(softmax(x, 1), ones({3, 1}), 0, 0);
  EXPECT_TENSOR_NEAR(log_softmax(x, 1), zeros({3, 1}), 0, 0);
  // -inf entries get probability 0, and the rest renormalise.
  Tensor m = tensor_of({0, -INFINITY, 0}, {3}, DType::f32);
  EXPECT_TENSOR_NEAR(softmax(m), tensor_of({0.5, 0, 0.5}, {3}, DType::f64), 1e-7, 0);
}

TEST(SoftmaxErrors, BadDimAndDTypeAreNamed) {
  Tensor x = zeros({2, 3, 4});
  EXPECT_THAT(error_message([&] { softmax(x, 3); }),
              AllOf(HasSubstr("softmax"), HasSubstr("dim 3"), HasSubstr("[2, 3, 4]")));
  EXPECT_THAT(error_message([&] { log_softmax(x, -4); }),
              AllOf(HasSubstr("log_softmax"), HasSubstr("dim -4"), HasSubstr("[2, 3, 4]")));
  EXPECT_THAT(error_message([] { softmax(zeros({2}, DType::i32)); }),
              AllOf(HasSubstr("softmax"), HasSubstr("i32")));
  EXPECT_THAT(error_message([] { log_softmax(zeros({2}, DType::u8)); }),
              AllOf(HasSubstr("log_softmax"), HasSubstr("u8")));
}

}  // namespace
}  // namespace lowbit::testing
