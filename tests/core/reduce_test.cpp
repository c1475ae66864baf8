// Reductions of core/ops.h (sum, mean, var, amax, amin, argmax, argmin) against the naive loops
// of tests/reference/reduce_ref.h: every subset of the dims of a 3-D tensor, with and without
// keepdim, positive and negative dims, contiguous and non-contiguous inputs; plus accuracy of
// the double accumulation, NaN propagation, integer sums, ties, gradients with ties, and errors.
#include <gmock/gmock.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/ops.h"
#include "core/random.h"
#include "tests/common/test_util.h"
#include "tests/core/core_test_helpers.h"
#include "tests/reference/reduce_ref.h"

namespace lowbit::testing {
namespace {

using ref::Reduce;
using ::testing::AllOf;
using ::testing::HasSubstr;

const Shape kShape = {3, 4, 5};

// Every subset of {0, 1, 2}, the empty one meaning "all dims" in lowbit's API.
std::vector<std::vector<int64_t>> all_dim_subsets() {
  std::vector<std::vector<int64_t>> out;
  for (int mask = 0; mask < 8; ++mask) {
    std::vector<int64_t> dims;
    for (int d = 0; d < 3; ++d) {
      if (mask & (1 << d)) dims.push_back(d);
    }
    out.push_back(dims);
  }
  return out;
}

// The same dims written negatively (d - 3), in reverse order.
std::vector<int64_t> negated(const std::vector<int64_t>& dims) {
  std::vector<int64_t> out;
  for (auto it = dims.rbegin(); it != dims.rend(); ++it) out.push_back(*it - 3);
  return out;
}

struct ReduceCase {
  const char* name;
  Reduce op;
  std::function<Tensor(const Tensor&, const std::vector<int64_t>&, bool)> fn;
};

const std::vector<ReduceCase>& reduce_cases() {
  static const std::vector<ReduceCase> k = {
      {"sum", Reduce::sum,
       [](const Tensor& x, const std::vector<int64_t>& d, bool kd) { return sum(x, d, kd); }},
      {"mean", Reduce::mean,
       [](const Tensor& x, const std::vector<int64_t>& d, bool kd) { return mean(x, d, kd); }},
      {"var_unbiased", Reduce::var_unbiased,
       [](const Tensor& x, const std::vector<int64_t>& d, bool kd) { return var(x, d, true, kd); }},
      {"var_biased", Reduce::var_biased,
       [](const Tensor& x, const std::vector<int64_t>& d, bool kd) {
         return var(x, d, false, kd);
       }},
      {"amax", Reduce::max,
       [](const Tensor& x, const std::vector<int64_t>& d, bool kd) { return amax(x, d, kd); }},
      {"amin", Reduce::min,
       [](const Tensor& x, const std::vector<int64_t>& d, bool kd) { return amin(x, d, kd); }},
  };
  return k;
}

// Tolerance of a reduction's result in `dt`: sums accumulate in double and round once, but
// mean rounds the sum and then the product with 1/n, and var goes through several rounded
// elementwise steps (x - mean, its square, the sum, the scale): a few roundings of the dtype.
Tolerance reduce_tolerance(Reduce op, DType dt) {
  const Tolerance one = rounding_tolerance(dt);
  if (op == Reduce::max || op == Reduce::min) return {0, 0};  // picks an input element
  if (op == Reduce::sum) return {one.rtol, 1e-12};
  if (op == Reduce::mean) return {2 * one.rtol, 1e-12};
  // var: 4 roundings of the dtype relative to the variance of O(1) data.
  return {4 * one.rtol, 4 * one.rtol};
}

class ReduceAllDims : public ::testing::TestWithParam<std::tuple<size_t, DType>> {};

TEST_P(ReduceAllDims, EverySubsetKeepdimAndNegativeDims) {
  const ReduceCase& rc = reduce_cases()[std::get<0>(GetParam())];
  const DType dt = std::get<1>(GetParam());
  const Tolerance tol = reduce_tolerance(rc.op, dt);
  manual_seed(101);
  ref::Array v = uniform_ref(kShape, -2, 3);
  for (Layout layout : {Layout::contiguous, Layout::permuted, Layout::strided}) {
    Tensor x = make_layout(v, dt, layout);
    ref::Array xv = to_ref(from_ref(v, dt));
    for (const auto& dims : all_dim_subsets()) {
      for (bool keepdim : {false, true}) {
        SCOPED_TRACE(str_cat(layout_name(layout), ", dims ", dims, ", keepdim ", keepdim));
        ref::Array want = ref::reduce(xv, rc.op, dims, keepdim);
        Tensor y = rc.fn(x, dims, keepdim);
        EXPECT_EQ(y.dtype(), dt);
        EXPECT_TENSOR_NEAR(y, from_ref(want, DType::f64), tol.rtol, tol.atol);
        if (!dims.empty()) {
          Tensor yn = rc.fn(x, negated(dims), keepdim);
          EXPECT_TENSOR_NEAR(yn, from_ref(want, DType::f64), tol.rtol, tol.atol);
        }
      }
    }
    // Listing every dim is the same as listing none.
    EXPECT_TENSOR_NEAR(rc.fn(x, {0, 1, 2}, false),
                       from_ref(ref::reduce(xv, rc.op, {}, false), DType::f64), tol.rtol, tol.atol);
    EXPECT_EQ(rc.fn(x, {0, 1, 2}, true).shape(), (Shape{1, 1, 1}));
    EXPECT_EQ(rc.fn(x, {}, false).shape(), Shape{});
  }
}

// var needs enough precision for x - mean: f32 and f64 only.
std::vector<std::tuple<size_t, DType>> reduce_params() {
  std::vector<std::tuple<size_t, DType>> out;
  for (size_t i = 0; i < reduce_cases().size(); ++i) {
    const bool is_var =
        reduce_cases()[i].op == Reduce::var_unbiased || reduce_cases()[i].op == Reduce::var_biased;
    for (DType dt : {DType::f32, DType::f64, DType::bf16, DType::f16}) {
      if (is_var && (dt == DType::bf16 || dt == DType::f16)) continue;
      out.emplace_back(i, dt);
    }
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(AllOps, ReduceAllDims, ::testing::ValuesIn(reduce_params()),
                         [](const auto& tp) {
                           return std::string(reduce_cases()[std::get<0>(tp.param)].name) + "_" +
                                  dtype_name(std::get<1>(tp.param));
                         });

// amax/amin and sum over integer tensors: exact; sums come back as i64.
TEST(ReduceInt, SumIsI64AndExtremesKeepTheDType) {
  manual_seed(102);
  for (DType dt : {DType::i8, DType::u8, DType::i32, DType::i64}) {
    ref::Array v = random_ref(
        kShape, [dt](double u) { return std::floor(dt == DType::u8 ? u * 250 : u * 250 - 125); });
    Tensor x = make_layout(v, dt, Layout::permuted);
    for (const auto& dims : all_dim_subsets()) {
      for (bool keepdim : {false, true}) {
        SCOPED_TRACE(str_cat(dt, ", dims ", dims, ", keepdim ", keepdim));
        Tensor s = sum(x, dims, keepdim);
        EXPECT_EQ(s.dtype(), DType::i64);
        EXPECT_TENSOR_NEAR(s, from_ref(ref::reduce(v, Reduce::sum, dims, keepdim), DType::f64), 0,
                           0);
        Tensor mx = amax(x, dims, keepdim), mn = amin(x, dims, keepdim);
        EXPECT_EQ(mx.dtype(), dt);
        EXPECT_TENSOR_NEAR(mx, from_ref(ref::reduce(v, Reduce::max, dims, keepdim), DType::f64), 0,
                           0);
        EXPECT_TENSOR_NEAR(mn, from_ref(ref::reduce(v, Reduce::min, dims, keepdim), DType::f64), 0,
                           0);
      }
    }
  }
}

// An i32 sum past the i32 range is exact in i64; a u8 sum past 255 does not wrap.
TEST(ReduceInt, SumDoesNotOverflowTheInputDType) {
  Tensor big = full({3}, 2e9, TensorOptions(DType::i32));
  Tensor s = sum(big);
  EXPECT_EQ(s.dtype(), DType::i64);
  EXPECT_EQ(s.to_vector<int64_t>()[0], int64_t(6000000000));
  Tensor u = full({10}, 255, TensorOptions(DType::u8));
  EXPECT_EQ(sum(u).to_vector<int64_t>()[0], 2550);
  EXPECT_EQ(u.sum({0}).item(), 2550.0);
}

class ArgExtreme : public ::testing::TestWithParam<DType> {};

TEST_P(ArgExtreme, EveryDimKeepdimAndNegativeDims) {
  const DType dt = GetParam();
  manual_seed(103);
  // Few distinct values, so ties are common: the first index must win.
  ref::Array v = random_ref(kShape, [](double u) { return std::floor(u * 4); });
  for (Layout layout : {Layout::contiguous, Layout::transposed}) {
    Tensor x = make_layout(v, dt, layout);
    for (int64_t d = 0; d < 3; ++d) {
      for (bool keepdim : {false, true}) {
        SCOPED_TRACE(str_cat(layout_name(layout), ", dim ", d, ", keepdim ", keepdim));
        Tensor amx = argmax(x, d, keepdim), amn = argmin(x, d, keepdim);
        EXPECT_EQ(amx.dtype(), DType::i64);
        EXPECT_TENSOR_NEAR(amx, from_ref(ref::reduce(v, Reduce::argmax, {d}, keepdim), DType::f64),
                           0, 0);
        EXPECT_TENSOR_NEAR(amn, from_ref(ref::reduce(v, Reduce::argmin, {d}, keepdim), DType::f64),
                           0, 0);
        EXPECT_TENSOR_NEAR(argmax(x, d - 3, keepdim), amx, 0, 0);
        EXPECT_TENSOR_NEAR(argmin(x, d - 3, keepdim), amn, 0, 0);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, ArgExtreme,
                         ::testing::Values(DType::f32, DType::f64, DType::bf16, DType::f16,
                                           DType::i8, DType::u8, DType::i32, DType::i64),
                         [](const auto& tp) { return std::string(dtype_name(tp.param)); });

TEST(ReduceAccuracy, MillionTenthsSumInDouble) {
  // 10^6 copies of 0.1f: a float accumulator drifts by about 1% here; a double one is exact to
  // the final f32 rounding.
  Tensor x = full({1000000}, 0.1, TensorOptions(DType::f32));
  const double want = 1e6 * double(0.1f);
  EXPECT_NEAR(sum(x).item(), want, want * 1e-6);
  EXPECT_NEAR(mean(x).item(), double(0.1f), double(0.1f) * 1e-6);
  // Over one dim of a 2-D view, and with the OpenMP split across rows.
  Tensor rows = x.view({1000, 1000});
  EXPECT_TENSOR_NEAR(sum(rows, {1}), full({1000}, 1000 * double(0.1f), DType::f64), 1e-6, 0);
  EXPECT_TENSOR_NEAR(sum(rows, {0}), full({1000}, 1000 * double(0.1f), DType::f64), 1e-6, 0);
  // bf16 input: 0.1 rounds to 0.10009765625 = 410 / 4096 in bf16, so 4096 copies sum to exactly
  // 410, which bf16 holds; a bf16 (or float) accumulator could not get there.
  Tensor b = full({4096}, 0.1, TensorOptions(DType::bf16));
  EXPECT_EQ(b.to_vector<double>()[0], 0.10009765625);
  EXPECT_EQ(sum(b).item(), 410.0);
}

TEST(ReduceAccuracy, VarOfLargeOffsetData) {
  // Two-pass variance (x - mean first): an offset of 1e4 does not swamp a unit variance in f32.
  std::vector<double> v;
  for (int i = 0; i < 1000; ++i) v.push_back(1e4 + (i % 2 ? 1.0 : -1.0));
  Tensor x = tensor_of(v, {1000}, DType::f32);
  EXPECT_NEAR(var(x, {}, false).item(), 1.0, 1e-5);
  EXPECT_NEAR(var(x, {}, true).item(), 1000.0 / 999.0, 1e-5);
}

TEST(ReduceNan, MaxMinPropagateNanAndArgmaxPointsAtIt) {
  for (DType dt : {DType::f32, DType::f64, DType::bf16, DType::f16}) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor x = tensor_of({1, NAN, 3, -1, 5, 2, 0, 4, NAN}, {3, 3}, dt);
    std::vector<double> mx = to_doubles(amax(x, {1}));
    EXPECT_TRUE(std::isnan(mx[0]));
    EXPECT_EQ(mx[1], 5.0);
    EXPECT_TRUE(std::isnan(mx[2]));
    std::vector<double> mn = to_doubles(amin(x, {1}));
    EXPECT_TRUE(std::isnan(mn[0]));
    EXPECT_EQ(mn[1], -1.0);
    EXPECT_TRUE(std::isnan(amax(x).item()));
    EXPECT_TRUE(std::isnan(amin(x, {0}).to_vector<double>()[1]));
    EXPECT_EQ(argmax(x, 1).to_vector<int64_t>(), (std::vector<int64_t>{1, 1, 2}));
    EXPECT_EQ(argmin(x, 1).to_vector<int64_t>(), (std::vector<int64_t>{1, 0, 2}));
    // NaN in a sum is NaN.
    EXPECT_TRUE(std::isnan(sum(x).item()));
  }
}

// Long f32 rows (an observer's whole-tensor range) take the parallel chunked path: the extreme
// of each row equals a plain loop's, wherever it sits, and one NaN anywhere makes it NaN.
TEST(ReduceLongRows, AmaxAminMatchTheLoopAndPropagateNan) {
  manual_seed(21);
  const int64_t r = 300001;  // not a multiple of the chunk size
  Tensor x = randn({2, r});
  std::vector<double> v = to_doubles(x);
  v[size_t(r) + 123457] = 9.5;  // row 1's max, in a middle chunk
  v[size_t(2 * r) - 1] = -9.5;  // row 1's min, the last element
  x = tensor_of(v, {2, r});
  for (int row = 0; row < 2; ++row) {
    const auto b = v.begin() + row * r;
    const double mx = *std::max_element(b, b + r), mn = *std::min_element(b, b + r);
    EXPECT_EQ(amax(x, {1}).to_vector<float>()[size_t(row)], float(mx));
    EXPECT_EQ(amin(x, {1}).to_vector<float>()[size_t(row)], float(mn));
  }
  EXPECT_EQ(amax(x).item(), 9.5);
  EXPECT_EQ(amin(x).item(), -9.5);
  v[5] = NAN;
  x = tensor_of(v, {2, r});
  EXPECT_TRUE(std::isnan(amax(x, {1}).to_vector<float>()[0]));
  EXPECT_FALSE(std::isnan(amax(x, {1}).to_vector<float>()[1]));
  EXPECT_TRUE(std::isnan(amin(x).item()));
}

TEST(ReduceEdge, ZeroDimAndSizeOneInputs) {
  Tensor s = scalar_tensor(2.5);
  EXPECT_EQ(sum(s).item(), 2.5);
  EXPECT_EQ(sum(s).dim(), 0);
  EXPECT_EQ(amax(s).item(), 2.5);
  EXPECT_EQ(mean(s, {0}).item(), 2.5);  // dim 0 of a 0-dim tensor is allowed, as PyTorch's
  Tensor one = tensor_of({4}, {1, 1, 1}, DType::f32);
  EXPECT_EQ(sum(one, {1}, true).shape(), (Shape{1, 1, 1}));
  EXPECT_EQ(argmax(one, 2).item(), 0.0);
  EXPECT_EQ(var(one, {}, false).item(), 0.0);
  // A sum over an empty dim is 0; amax over one throws.
  Tensor empty_t = zeros({2, 0});
  EXPECT_TENSOR_NEAR(sum(empty_t, {1}), zeros({2}), 0, 0);
  EXPECT_THROW(amax(empty_t, {1}), Error);
}

// amax/amin backward splits the gradient evenly between tied maxima, as PyTorch.
TEST(ReduceGrad, AmaxAminTiesShareTheGradient) {
  Tensor x = tensor_of({1, 3, 3, 2, 0, 0, 0, 5}, {2, 4}, DType::f64);
  x.requires_grad_();
  Tensor y = amax(x, {1});
  y.backward(tensor_of({1, 2}, {2}, DType::f64));
  EXPECT_TENSOR_NEAR(x.grad(), tensor_of({0, 0.5, 0.5, 0, 0, 0, 0, 2}, {2, 4}, DType::f64), 0, 0);
  x.zero_grad();
  amin(x, {1}).backward(tensor_of({1, 3}, {2}, DType::f64));
  EXPECT_TENSOR_NEAR(x.grad(), tensor_of({1, 0, 0, 0, 1, 1, 1, 0}, {2, 4}, DType::f64), 1e-15, 0);
  // sum and mean backward broadcast the gradient back, with keepdim or without.
  x.zero_grad();
  mean(x, {0}, true).backward(tensor_of({1, 2, 3, 4}, {1, 4}, DType::f64));
  EXPECT_TENSOR_NEAR(x.grad(), tensor_of({0.5, 1, 1.5, 2, 0.5, 1, 1.5, 2}, {2, 4}, DType::f64), 0,
                     0);
}

TEST(ReduceErrors, DimOutOfRangeNamesTheDimAndShape) {
  Tensor x = zeros({2, 3, 4});
  EXPECT_THAT(error_message([&] { sum(x, {3}); }),
              AllOf(HasSubstr("sum"), HasSubstr("dim 3"), HasSubstr("[2, 3, 4]")));
  EXPECT_THAT(error_message([&] { mean(x, {-4}); }),
              AllOf(HasSubstr("mean"), HasSubstr("dim -4"), HasSubstr("[2, 3, 4]")));
  EXPECT_THAT(error_message([&] {
                var(x, {0, 7});
              }),
              AllOf(HasSubstr("dim 7"), HasSubstr("[2, 3, 4]")));
  EXPECT_THAT(error_message([&] { amax(x, {5}, true); }),
              AllOf(HasSubstr("amax"), HasSubstr("dim 5"), HasSubstr("[2, 3, 4]")));
  EXPECT_THAT(error_message([&] { amin(x, {-9}); }), AllOf(HasSubstr("amin"), HasSubstr("dim -9")));
  EXPECT_THAT(error_message([&] { argmax(x, 3); }),
              AllOf(HasSubstr("argmax"), HasSubstr("dim 3"), HasSubstr("[2, 3, 4]")));
  EXPECT_THAT(error_message([&] { argmin(x, -4); }),
              AllOf(HasSubstr("argmin"), HasSubstr("dim -4")));
}

TEST(ReduceErrors, RepeatedDimsAndBadDTypes) {
  Tensor x = zeros({2, 3});
  EXPECT_THAT(error_message([&] { sum(x, {1, -1}); }), HasSubstr("repeated"));
  EXPECT_THAT(error_message([&] { mean(zeros({2}, DType::i32)); }),
              AllOf(HasSubstr("mean"), HasSubstr("i32")));
  EXPECT_THAT(error_message([&] { var(zeros({2}, DType::i64)); }),
              AllOf(HasSubstr("var"), HasSubstr("i64")));
  // One element per reduction has no unbiased variance.
  EXPECT_THAT(error_message([&] { var(zeros({3, 1}), {1}, true); }), HasSubstr("var"));
}

}  // namespace
}  // namespace lowbit::testing
