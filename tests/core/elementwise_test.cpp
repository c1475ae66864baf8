// Elementwise ops of core/ops.h against the naive loops of tests/reference/elementwise_ref.h:
// every unary and binary op on contiguous, strided, offset, transposed and permuted inputs
// (sizes 1, 7, 1023, plus one past the OpenMP grain), broadcasting, every float dtype with a
// tolerance of one rounding to that dtype, the integer dtypes exactly, dtype promotion, casts
// between every pair of dtypes (with hand-computed bf16/f16 roundings), error messages, and the
// in-place ops.
#include <gmock/gmock.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/random.h"
#include "tests/common/test_util.h"
#include "tests/core/core_test_helpers.h"
#include "tests/reference/elementwise_ref.h"

namespace lowbit::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr DType kAllDTypes[] = {DType::f32, DType::f64, DType::bf16, DType::f16,
                                DType::i8,  DType::u8,  DType::i32,  DType::i64};

struct LayoutCase {
  ref::Dims shape;
  Layout layout;
};

// Sizes 1, 7 and 1023 in every 1-D layout, 2-D and 3-D views, and two cases past the OpenMP
// grain (core/parallel.h, 32768) so the threaded loop runs too.
const std::vector<LayoutCase>& layout_cases() {
  static const std::vector<LayoutCase> k = {
      {{1}, Layout::contiguous},      {{7}, Layout::contiguous},
      {{1023}, Layout::contiguous},   {{1}, Layout::strided},
      {{7}, Layout::strided},         {{1023}, Layout::strided},
      {{7}, Layout::offset},          {{1023}, Layout::offset},
      {{31, 33}, Layout::transposed}, {{4, 5, 6}, Layout::strided},
      {{4, 5, 6}, Layout::permuted},  {{4, 5, 6}, Layout::transposed},
      {{40000}, Layout::contiguous},  {{200, 205}, Layout::transposed}};
  return k;
}

std::string case_trace(const LayoutCase& c, DType t) {
  return str_cat("shape ", c.shape, ", ", layout_name(c.layout), ", dtype ", t);
}

std::string dtype_param_name(DType t) { return dtype_name(t); }

// Every layout helper must produce what it promises before any op is blamed.
TEST(ElementwiseLayouts, ViewsHoldTheirValues) {
  manual_seed(1);
  for (const auto& c : layout_cases()) {
    SCOPED_TRACE(case_trace(c, DType::f32));
    ref::Array v = uniform_ref(c.shape, -2, 2);
    Tensor t = make_layout(v, DType::f32, c.layout);
    EXPECT_EQ(t.shape(), c.shape);
    const bool expect_contiguous = c.layout == Layout::contiguous || c.layout == Layout::offset ||
                                   (c.layout == Layout::strided && c.shape.back() == 1);
    EXPECT_EQ(t.is_contiguous(), expect_contiguous);
    EXPECT_TENSOR_NEAR(t, from_ref(v, DType::f32), 0, 0);
  }
}

// ---------------------------------------------------------------------------- unary, floats

struct UnaryCase {
  const char* name;
  std::function<Tensor(const Tensor&)> op;
  std::function<double(double)> ref;
  std::function<double(double)> sample;  // maps u in [0, 1) into the op's domain
};

double uniform_in(double u, double lo, double hi) { return lo + (hi - lo) * u; }
// |x| in [0.25, 3], either sign: away from the pole of 1/x.
double away_from_zero(double u) {
  const double s = u < 0.5 ? -1.0 : 1.0;
  return s * (0.25 + 5.5 * std::fabs(u - 0.5));
}

const std::vector<UnaryCase>& float_unary_cases() {
  static const std::vector<UnaryCase> k = {
      {"neg", [](const Tensor& x) { return neg(x); }, [](double x) { return -x; },
       [](double u) { return uniform_in(u, -3, 3); }},
      {"abs", [](const Tensor& x) { return abs(x); }, [](double x) { return std::fabs(x); },
       [](double u) { return uniform_in(u, -3, 3); }},
      {"sign", [](const Tensor& x) { return sign(x); },
       [](double x) { return double((0 < x) - (x < 0)); },
       [](double u) { return u < 0.1 ? 0.0 : uniform_in(u, -3, 3); }},
      {"exp", [](const Tensor& x) { return exp(x); }, [](double x) { return std::exp(x); },
       [](double u) { return uniform_in(u, -5, 5); }},
      {"log", [](const Tensor& x) { return log(x); }, [](double x) { return std::log(x); },
       [](double u) { return uniform_in(u, 0.05, 10); }},
      {"sqrt", [](const Tensor& x) { return sqrt(x); }, [](double x) { return std::sqrt(x); },
       [](double u) { return uniform_in(u, 0, 10); }},
      {"rsqrt", [](const Tensor& x) { return rsqrt(x); },
       [](double x) { return 1.0 / std::sqrt(x); },
       [](double u) { return uniform_in(u, 0.05, 10); }},
      {"square", [](const Tensor& x) { return square(x); }, [](double x) { return x * x; },
       [](double u) { return uniform_in(u, -3, 3); }},
      {"reciprocal", [](const Tensor& x) { return reciprocal(x); },
       [](double x) { return 1.0 / x; }, away_from_zero},
      {"relu", [](const Tensor& x) { return relu(x); }, [](double x) { return x > 0 ? x : 0.0; },
       [](double u) { return u < 0.1 ? 0.0 : uniform_in(u, -3, 3); }},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); },
       [](double x) { return 1.0 / (1.0 + std::exp(-x)); },
       [](double u) { return uniform_in(u, -8, 8); }},
      {"tanh", [](const Tensor& x) { return tanh(x); }, [](double x) { return std::tanh(x); },
       [](double u) { return uniform_in(u, -4, 4); }},
      {"pow_2_5", [](const Tensor& x) { return pow(x, 2.5); },
       [](double x) { return std::pow(x, 2.5); }, [](double u) { return uniform_in(u, 0, 3); }},
      {"pow_3", [](const Tensor& x) { return pow(x, 3.0); }, [](double x) { return x * x * x; },
       [](double u) { return uniform_in(u, -2, 2); }},
      {"pow_neg_1_5", [](const Tensor& x) { return pow(x, -1.5); },
       [](double x) { return std::pow(x, -1.5); }, [](double u) { return uniform_in(u, 0.1, 3); }},
      {"clamp", [](const Tensor& x) { return clamp(x, -0.5, 1.25); },
       [](double x) { return x < -0.5 ? -0.5 : (x > 1.25 ? 1.25 : x); },
       [](double u) { return uniform_in(u, -2, 2); }},
      {"add_scalar", [](const Tensor& x) { return add(x, 1.5); }, [](double x) { return x + 1.5; },
       [](double u) { return uniform_in(u, -3, 3); }},
      {"mul_scalar", [](const Tensor& x) { return mul(x, -2.5); },
       [](double x) { return x * -2.5; }, [](double u) { return uniform_in(u, -3, 3); }},
  };
  return k;
}

class UnaryFloat : public ::testing::TestWithParam<std::tuple<size_t, DType>> {};

TEST_P(UnaryFloat, MatchesReferenceOnEveryLayout) {
  const UnaryCase& uc = float_unary_cases()[std::get<0>(GetParam())];
  const DType dt = std::get<1>(GetParam());
  const Tolerance tol = rounding_tolerance(dt);
  manual_seed(11);
  for (const auto& c : layout_cases()) {
    SCOPED_TRACE(case_trace(c, dt));
    ref::Array v = random_ref(c.shape, uc.sample);
    Tensor x = make_layout(v, dt, c.layout);
    ref::Array xv = to_ref(from_ref(v, dt));  // the inputs as the dtype holds them
    Tensor y = uc.op(x);
    EXPECT_EQ(y.dtype(), dt);
    EXPECT_TRUE(y.is_contiguous());
    EXPECT_TENSOR_NEAR(y, from_ref(ref::unary(xv, uc.ref), DType::f64), tol.rtol, tol.atol);
  }
}

INSTANTIATE_TEST_SUITE_P(AllOps, UnaryFloat,
                         ::testing::Combine(::testing::Range<size_t>(0, 18),
                                            ::testing::Values(DType::f32, DType::f64, DType::bf16,
                                                              DType::f16)),
                         [](const auto& tp) {
                           return std::string(float_unary_cases()[std::get<0>(tp.param)].name) +
                                  "_" + dtype_param_name(std::get<1>(tp.param));
                         });

TEST(UnaryFloat, CaseTableSizeMatchesInstantiation) { EXPECT_EQ(float_unary_cases().size(), 18u); }

TEST(ElementwiseLayouts, NonContiguousCopyMatchesContiguous) {
  manual_seed(13);
  for (const ref::Dims& shape :
       {ref::Dims{7}, ref::Dims{1023}, ref::Dims{31, 33}, ref::Dims{4, 5, 6}}) {
    for (DType dt : {DType::f32, DType::bf16}) {
      SCOPED_TRACE(str_cat("shape ", shape, ", ", dt));
      Tensor x = from_ref(uniform_ref(shape, 0.25, 3), dt);
      Tensor y = from_ref(uniform_ref(shape, 0.25, 3), dt);
      Tensor xs = non_contiguous_copy(x), ys = non_contiguous_copy(y);
      ASSERT_FALSE(xs.is_contiguous());
      for (const auto& uc : float_unary_cases()) {
        EXPECT_TENSOR_NEAR(uc.op(xs), uc.op(x), 0, 0) << uc.name;
      }
      EXPECT_TENSOR_NEAR(add(xs, ys), add(x, y), 0, 0);
      EXPECT_TENSOR_NEAR(div(xs, y), div(x, y), 0, 0);
      EXPECT_TENSOR_NEAR(pow(x, ys), pow(x, y), 0, 0);
      EXPECT_TENSOR_NEAR(maximum(xs, ys), maximum(x, y), 0, 0);
      EXPECT_TENSOR_NEAR(le(xs, ys), le(x, y), 0, 0);
    }
  }
}

// NaN in, NaN out, for every unary op but sign (PyTorch's sign(NaN) is 0 as well): relu and
// clamp must not turn a NaN into a number, or a diverged run would look healthy.
TEST(UnaryFloat, NanPropagates) {
  for (DType dt : {DType::f32, DType::f64, DType::bf16, DType::f16}) {
    Tensor x = tensor_of({NAN, 1.0}, {2}, dt);
    for (const auto& uc : float_unary_cases()) {
      if (std::string(uc.name) == "sign") continue;
      SCOPED_TRACE(str_cat(uc.name, ", ", dt));
      std::vector<double> y = to_doubles(uc.op(x));
      EXPECT_TRUE(std::isnan(y[0])) << y[0];
      EXPECT_FALSE(std::isnan(y[1]));
    }
    EXPECT_EQ(sign(x).to_vector<double>()[0], 0.0);
  }
}

// Empty tensors go through every op and give empty (or identity-valued) results.
TEST(ElementwiseShapes, EmptyTensors) {
  Tensor e = zeros({0, 3});
  EXPECT_EQ(exp(e).shape(), (Shape{0, 3}));
  EXPECT_EQ(add(e, zeros({3})).shape(), (Shape{0, 3}));
  EXPECT_EQ(lt(e, zeros({1, 3})).dtype(), DType::u8);
  EXPECT_EQ(where(zeros({0, 1}, DType::u8), e, 1.0 + zeros({})).shape(), (Shape{0, 3}));
  EXPECT_EQ(e.to(DType::bf16).shape(), (Shape{0, 3}));
  EXPECT_EQ(sum(e).item(), 0.0);
  EXPECT_TENSOR_NEAR(sum(e, {0}), zeros({3}), 0, 0);
  EXPECT_EQ(softmax(e, 1).shape(), (Shape{0, 3}));
}

// ---------------------------------------------------------------------------- unary, integers

struct IntDTypeInfo {
  int bits;
  bool is_signed;
};
IntDTypeInfo int_info(DType t) {
  switch (t) {
    case DType::i8:
      return {8, true};
    case DType::u8:
      return {8, false};
    case DType::i32:
      return {32, true};
    default:
      return {64, true};
  }
}

// Integer ops wrap around modulo 2^bits, as C++ and PyTorch do; scalars are non-negative
// because a negative scalar has no u8 value.
const std::vector<UnaryCase>& int_unary_cases() {
  static const std::vector<UnaryCase> k = {
      {"neg", [](const Tensor& x) { return neg(x); }, [](double x) { return -x; }, nullptr},
      {"abs", [](const Tensor& x) { return abs(x); }, [](double x) { return std::fabs(x); },
       nullptr},
      {"sign", [](const Tensor& x) { return sign(x); },
       [](double x) { return double((0 < x) - (x < 0)); }, nullptr},
      {"square", [](const Tensor& x) { return square(x); }, [](double x) { return x * x; },
       nullptr},
      {"relu", [](const Tensor& x) { return relu(x); }, [](double x) { return x > 0 ? x : 0.0; },
       nullptr},
      {"clamp", [](const Tensor& x) { return clamp(x, 2, 9); },
       [](double x) { return x < 2 ? 2 : (x > 9 ? 9 : x); }, nullptr},
      {"add_scalar", [](const Tensor& x) { return add(x, 3.0); }, [](double x) { return x + 3; },
       nullptr},
      {"mul_scalar", [](const Tensor& x) { return mul(x, 3.0); }, [](double x) { return x * 3; },
       nullptr},
      {"pow_2", [](const Tensor& x) { return pow(x, 2.0); }, [](double x) { return x * x; },
       nullptr},
      {"pow_3", [](const Tensor& x) { return pow(x, 3.0); }, [](double x) { return x * x * x; },
       nullptr},
  };
  return k;
}

class UnaryInt : public ::testing::TestWithParam<std::tuple<size_t, DType>> {};

TEST_P(UnaryInt, MatchesReferenceExactly) {
  const UnaryCase& uc = int_unary_cases()[std::get<0>(GetParam())];
  const DType dt = std::get<1>(GetParam());
  const IntDTypeInfo info = int_info(dt);
  manual_seed(12);
  for (const auto& c : layout_cases()) {
    SCOPED_TRACE(case_trace(c, dt));
    ref::Array v = random_ref(c.shape, [&](double u) {
      return std::floor(info.is_signed ? uniform_in(u, -12, 13) : uniform_in(u, 0, 13));
    });
    Tensor x = make_layout(v, dt, c.layout);
    Tensor y = uc.op(x);
    EXPECT_EQ(y.dtype(), dt);
    ref::Array want = ref::unary(
        v, [&](double a) { return ref::wrap_int(uc.ref(a), info.bits, info.is_signed); });
    EXPECT_TENSOR_NEAR(y, from_ref(want, DType::f64), 0, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(AllOps, UnaryInt,
                         ::testing::Combine(::testing::Range<size_t>(0, 10),
                                            ::testing::Values(DType::i8, DType::u8, DType::i32,
                                                              DType::i64)),
                         [](const auto& tp) {
                           return std::string(int_unary_cases()[std::get<0>(tp.param)].name) + "_" +
                                  dtype_param_name(std::get<1>(tp.param));
                         });

TEST(UnaryInt, CaseTableSizeMatchesInstantiation) { EXPECT_EQ(int_unary_cases().size(), 10u); }

// Float-only ops on an integer tensor compute in f32, as PyTorch's exp(int tensor).
TEST(UnaryInt, FloatOpsOnIntegersGiveF32) {
  Tensor x = tensor_of({-2, 0, 1, 3}, {4}, DType::i32);
  Tensor y = exp(x);
  EXPECT_EQ(y.dtype(), DType::f32);
  EXPECT_TENSOR_NEAR(
      y, tensor_of({std::exp(-2.0), 1.0, std::exp(1.0), std::exp(3.0)}, {4}, DType::f64), 1e-6, 0);
  Tensor s = sqrt(tensor_of({4, 9, 2}, {3}, DType::u8));
  EXPECT_EQ(s.dtype(), DType::f32);
  EXPECT_TENSOR_NEAR(s, tensor_of({2, 3, std::sqrt(2.0)}, {3}, DType::f64), 1e-6, 0);
  EXPECT_EQ(sigmoid(tensor_of({0}, {1}, DType::i64)).item(), 0.5);
}

// An integer tensor with a non-integral scalar computes in f32: rounding the scalar to the
// integer type would turn x / 2 into x * 0.
TEST(UnaryInt, NonIntegralScalarsPromoteToF32) {
  Tensor x = tensor_of({1, 2, 3, -4}, {4}, DType::i32);
  Tensor half = x / 2.0;
  EXPECT_EQ(half.dtype(), DType::f32);
  EXPECT_TENSOR_NEAR(half, tensor_of({0.5, 1, 1.5, -2}, {4}, DType::f64), 0, 0);
  Tensor plus = add(x, 0.25);
  EXPECT_EQ(plus.dtype(), DType::f32);
  EXPECT_TENSOR_NEAR(plus, tensor_of({1.25, 2.25, 3.25, -3.75}, {4}, DType::f64), 0, 0);
  Tensor c = clamp(x, -0.5, 2.5);
  EXPECT_EQ(c.dtype(), DType::f32);
  EXPECT_TENSOR_NEAR(c, tensor_of({1, 2, 2.5, -0.5}, {4}, DType::f64), 0, 0);
  Tensor p = pow(tensor_of({4, 9}, {2}, DType::i64), 0.5);
  EXPECT_EQ(p.dtype(), DType::f32);
  EXPECT_TENSOR_NEAR(p, tensor_of({2, 3}, {2}, DType::f64), 1e-6, 0);
  // Integral scalars keep the integer dtype.
  Tensor twice = x * 2.0;
  EXPECT_EQ(twice.dtype(), DType::i32);
  EXPECT_TENSOR_NEAR(twice, tensor_of({2, 4, 6, -8}, {4}, DType::f64), 0, 0);
}

// ---------------------------------------------------------------------------- binary, floats

struct BinaryCase {
  const char* name;
  std::function<Tensor(const Tensor&, const Tensor&)> op;
  std::function<double(double, double)> ref;
  std::function<double(double)> sample_a, sample_b;
};

const std::vector<BinaryCase>& float_binary_cases() {
  auto any = [](double u) { return uniform_in(u, -3, 3); };
  static const std::vector<BinaryCase> k = {
      {"add", [](const Tensor& a, const Tensor& b) { return add(a, b); },
       [](double a, double b) { return a + b; }, any, any},
      {"sub", [](const Tensor& a, const Tensor& b) { return sub(a, b); },
       [](double a, double b) { return a - b; }, any, any},
      {"mul", [](const Tensor& a, const Tensor& b) { return mul(a, b); },
       [](double a, double b) { return a * b; }, any, any},
      {"div", [](const Tensor& a, const Tensor& b) { return div(a, b); },
       [](double a, double b) { return a / b; }, any, away_from_zero},
      {"pow", [](const Tensor& a, const Tensor& b) { return pow(a, b); },
       [](double a, double b) { return std::pow(a, b); },
       [](double u) { return uniform_in(u, 0.5, 2); },
       [](double u) { return uniform_in(u, -2, 2); }},
      {"maximum", [](const Tensor& a, const Tensor& b) { return maximum(a, b); },
       [](double a, double b) { return a > b ? a : b; }, any, any},
      {"minimum", [](const Tensor& a, const Tensor& b) { return minimum(a, b); },
       [](double a, double b) { return a < b ? a : b; }, any, any},
      {"add_relu", [](const Tensor& a, const Tensor& b) { return add_relu(a, b); },
       [](double a, double b) { return a + b > 0 ? a + b : 0.0; }, any, any},
  };
  return k;
}

struct BroadcastCase {
  ref::Dims a, b;
};
const std::vector<BroadcastCase>& broadcast_cases() {
  static const std::vector<BroadcastCase> k = {
      {{3, 1, 5}, {4, 5}}, {{4, 5}, {3, 1, 5}}, {{}, {2, 3}},           {{2, 3}, {}},
      {{4, 1}, {1, 5}},    {{1}, {7}},          {{2, 1, 3}, {2, 4, 1}}, {{1, 1}, {1}}};
  return k;
}

// The other operand's layout, so that a and b never share one.
Layout other_layout(Layout l) {
  return l == Layout::contiguous ? (Layout::strided) : Layout::contiguous;
}

void check_binary(const BinaryCase& bc, const Tolerance& tol, const Tensor& a, const Tensor& b,
                  DType want_dtype) {
  Tensor y = bc.op(a, b);
  EXPECT_EQ(y.dtype(), want_dtype);
  ref::Array want = ref::binary(to_ref(a), to_ref(b), bc.ref);
  EXPECT_TENSOR_NEAR(y, from_ref(want, DType::f64), tol.rtol, tol.atol);
}

class BinaryFloat : public ::testing::TestWithParam<std::tuple<size_t, DType>> {};

TEST_P(BinaryFloat, MatchesReferenceOnEveryLayout) {
  const BinaryCase& bc = float_binary_cases()[std::get<0>(GetParam())];
  const DType dt = std::get<1>(GetParam());
  const Tolerance tol = rounding_tolerance(dt);
  manual_seed(21);
  for (const auto& c : layout_cases()) {
    SCOPED_TRACE(case_trace(c, dt));
    Tensor a = make_layout(random_ref(c.shape, bc.sample_a), dt, c.layout);
    Tensor b = make_layout(random_ref(c.shape, bc.sample_b), dt, other_layout(c.layout));
    check_binary(bc, tol, a, b, dt);
  }
}

TEST_P(BinaryFloat, Broadcasts) {
  const BinaryCase& bc = float_binary_cases()[std::get<0>(GetParam())];
  const DType dt = std::get<1>(GetParam());
  const Tolerance tol = rounding_tolerance(dt);
  manual_seed(22);
  for (const auto& bcase : broadcast_cases()) {
    SCOPED_TRACE(str_cat("shapes ", bcase.a, " and ", bcase.b, ", dtype ", dt));
    Tensor a = from_ref(random_ref(bcase.a, bc.sample_a), dt);
    Tensor b = from_ref(random_ref(bcase.b, bc.sample_b), dt);
    check_binary(bc, tol, a, b, dt);
  }
  // A transposed (5, 4) view against (3, 1, 4), and an expanded operand (stride 0).
  SCOPED_TRACE("non-contiguous broadcast");
  Tensor a = make_layout(random_ref({5, 4}, bc.sample_a), dt, Layout::transposed);
  Tensor b = from_ref(random_ref({3, 1, 4}, bc.sample_b), dt);
  check_binary(bc, tol, a, b, dt);
  check_binary(bc, tol, b, a, dt);
  Tensor e = from_ref(random_ref({1, 4}, bc.sample_b), dt).expand({5, 4});
  check_binary(bc, tol, a, e, dt);
}

INSTANTIATE_TEST_SUITE_P(AllOps, BinaryFloat,
                         ::testing::Combine(::testing::Range<size_t>(0, 8),
                                            ::testing::Values(DType::f32, DType::f64, DType::bf16,
                                                              DType::f16)),
                         [](const auto& tp) {
                           return std::string(float_binary_cases()[std::get<0>(tp.param)].name) +
                                  "_" + dtype_param_name(std::get<1>(tp.param));
                         });

TEST(BinaryFloat, CaseTableSizeMatchesInstantiation) { EXPECT_EQ(float_binary_cases().size(), 8u); }

// maximum/minimum propagate NaN from either side, as PyTorch's.
TEST(BinaryFloat, MaximumMinimumPropagateNan) {
  for (DType dt : {DType::f32, DType::f64, DType::bf16, DType::f16}) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor a = tensor_of({NAN, 1, 2, NAN}, {4}, dt);
    Tensor b = tensor_of({0, NAN, 3, NAN}, {4}, dt);
    EXPECT_TENSOR_NEAR(maximum(a, b), tensor_of({NAN, NAN, 3, NAN}, {4}, DType::f64), 0, 0);
    EXPECT_TENSOR_NEAR(minimum(a, b), tensor_of({NAN, NAN, 2, NAN}, {4}, DType::f64), 0, 0);
    EXPECT_TRUE(std::isnan(maximum(a, b).to_vector<double>()[0]));
    EXPECT_TRUE(std::isnan(minimum(a, b).to_vector<double>()[1]));
  }
}

// The operator overloads and the scalar forms route to the right op.
TEST(BinaryFloat, OperatorsMatchReference) {
  manual_seed(23);
  ref::Array av = uniform_ref({3, 4}, -3, 3), bv = uniform_ref({3, 4}, 0.5, 2);
  Tensor a = from_ref(av, DType::f64), b = from_ref(bv, DType::f64);
  auto check = [&](const Tensor& got, const std::function<double(double, double)>& f) {
    EXPECT_TENSOR_NEAR(got, from_ref(ref::binary(av, bv, f), DType::f64), 1e-15, 0);
  };
  check(a + b, [](double x, double y) { return x + y; });
  check(a - b, [](double x, double y) { return x - y; });
  check(a * b, [](double x, double y) { return x * y; });
  check(a / b, [](double x, double y) { return x / y; });
  check(a + 2.5, [](double x, double) { return x + 2.5; });
  check(a - 2.5, [](double x, double) { return x - 2.5; });
  check(2.5 - a, [](double x, double) { return 2.5 - x; });
  check(2.5 + a, [](double x, double) { return 2.5 + x; });
  check(a * 3.0, [](double x, double) { return x * 3.0; });
  check(3.0 * a, [](double x, double) { return 3.0 * x; });
  check(a / 4.0, [](double x, double) { return x / 4.0; });
  check(-a, [](double x, double) { return -x; });
}

// ---------------------------------------------------------------------------- binary, integers

const std::vector<BinaryCase>& int_binary_cases() {
  static const std::vector<BinaryCase> k = {
      {"add", [](const Tensor& a, const Tensor& b) { return add(a, b); },
       [](double a, double b) { return a + b; }, nullptr, nullptr},
      {"sub", [](const Tensor& a, const Tensor& b) { return sub(a, b); },
       [](double a, double b) { return a - b; }, nullptr, nullptr},
      {"mul", [](const Tensor& a, const Tensor& b) { return mul(a, b); },
       [](double a, double b) { return a * b; }, nullptr, nullptr},
      {"pow", [](const Tensor& a, const Tensor& b) { return pow(a, b); },
       [](double a, double b) { return std::pow(a, b); }, nullptr, nullptr},
      {"maximum", [](const Tensor& a, const Tensor& b) { return maximum(a, b); },
       [](double a, double b) { return a > b ? a : b; }, nullptr, nullptr},
      {"minimum", [](const Tensor& a, const Tensor& b) { return minimum(a, b); },
       [](double a, double b) { return a < b ? a : b; }, nullptr, nullptr},
  };
  return k;
}

class BinaryInt : public ::testing::TestWithParam<std::tuple<size_t, DType>> {};

TEST_P(BinaryInt, MatchesReferenceExactly) {
  const BinaryCase& bc = int_binary_cases()[std::get<0>(GetParam())];
  const DType dt = std::get<1>(GetParam());
  const IntDTypeInfo info = int_info(dt);
  const bool is_pow = std::string(bc.name) == "pow";
  manual_seed(31);
  auto sample_a = [&](double u) {
    return std::floor(info.is_signed ? uniform_in(u, -12, 13) : uniform_in(u, 0, 13));
  };
  auto sample_b = [&](double u) {
    return is_pow ? std::floor(uniform_in(u, 0, 4)) : sample_a(u);  // exponents 0..3
  };
  auto check = [&](const Tensor& a, const Tensor& b) {
    Tensor y = bc.op(a, b);
    EXPECT_EQ(y.dtype(), dt);
    ref::Array want = ref::binary(to_ref(a), to_ref(b), [&](double x, double z) {
      return ref::wrap_int(bc.ref(x, z), info.bits, info.is_signed);
    });
    EXPECT_TENSOR_NEAR(y, from_ref(want, DType::f64), 0, 0);
  };
  for (const auto& c : layout_cases()) {
    SCOPED_TRACE(case_trace(c, dt));
    check(make_layout(random_ref(c.shape, sample_a), dt, c.layout),
          make_layout(random_ref(c.shape, sample_b), dt, other_layout(c.layout)));
  }
  for (const auto& bcase : broadcast_cases()) {
    SCOPED_TRACE(str_cat("shapes ", bcase.a, " and ", bcase.b, ", dtype ", dt));
    check(from_ref(random_ref(bcase.a, sample_a), dt), from_ref(random_ref(bcase.b, sample_b), dt));
  }
}

INSTANTIATE_TEST_SUITE_P(AllOps, BinaryInt,
                         ::testing::Combine(::testing::Range<size_t>(0, 6),
                                            ::testing::Values(DType::i8, DType::u8, DType::i32,
                                                              DType::i64)),
                         [](const auto& tp) {
                           return std::string(int_binary_cases()[std::get<0>(tp.param)].name) +
                                  "_" + dtype_param_name(std::get<1>(tp.param));
                         });

TEST(BinaryInt, CaseTableSizeMatchesInstantiation) { EXPECT_EQ(int_binary_cases().size(), 6u); }

// Integer pow with a negative exponent: 1 and -1 keep their powers, everything else gives 0
// (core/math.h), the integer part of the true value.
TEST(BinaryInt, PowNegativeExponent) {
  Tensor a = tensor_of({1, -1, -1, 2, -3, 0}, {6}, DType::i32);
  Tensor b = tensor_of({-3, -3, -2, -1, -2, 2}, {6}, DType::i32);
  EXPECT_TENSOR_NEAR(pow(a, b), tensor_of({1, -1, 1, 0, 0, 0}, {6}, DType::f64), 0, 0);
}

// int / int is true division in f32 (PyTorch's torch.div), including division by zero.
TEST(BinaryInt, DivisionIsTrueDivisionInF32) {
  for (DType dt : {DType::i8, DType::u8, DType::i32, DType::i64}) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor a = tensor_of({7, 1, 9, 5, 0}, {5}, dt);
    Tensor b = tensor_of({2, 3, 3, 0, 4}, {5}, dt);
    Tensor y = div(a, b);
    EXPECT_EQ(y.dtype(), DType::f32);
    EXPECT_TENSOR_NEAR(y, tensor_of({3.5, 1.0 / 3.0, 3, INFINITY, 0}, {5}, DType::f64), 1e-7, 0);
  }
}

// ---------------------------------------------------------------------------- comparisons

struct CompareCase {
  const char* name;
  std::function<Tensor(const Tensor&, const Tensor&)> op;
  std::function<bool(double, double)> ref;
};
const std::vector<CompareCase>& compare_cases() {
  static const std::vector<CompareCase> k = {
      {"eq", [](const Tensor& a, const Tensor& b) { return eq(a, b); },
       [](double a, double b) { return a == b; }},
      {"ne", [](const Tensor& a, const Tensor& b) { return ne(a, b); },
       [](double a, double b) { return a != b; }},
      {"lt", [](const Tensor& a, const Tensor& b) { return lt(a, b); },
       [](double a, double b) { return a < b; }},
      {"le", [](const Tensor& a, const Tensor& b) { return le(a, b); },
       [](double a, double b) { return a <= b; }},
      {"gt", [](const Tensor& a, const Tensor& b) { return gt(a, b); },
       [](double a, double b) { return a > b; }},
      {"ge", [](const Tensor& a, const Tensor& b) { return ge(a, b); },
       [](double a, double b) { return a >= b; }},
  };
  return k;
}

class Compare : public ::testing::TestWithParam<std::tuple<size_t, DType>> {};

// Values from a small set (exact in every dtype) so that ties are common.
TEST_P(Compare, ReturnsU8MatchingReference) {
  const CompareCase& cc = compare_cases()[std::get<0>(GetParam())];
  const DType dt = std::get<1>(GetParam());
  const bool is_unsigned = dt == DType::u8;
  manual_seed(41);
  auto sample = [&](double u) {
    const double v = std::floor(uniform_in(u, 0, 5));  // 0..4
    return is_unsigned ? v : v - 2;                    // or -2..2
  };
  auto check = [&](const Tensor& a, const Tensor& b) {
    Tensor y = cc.op(a, b);
    EXPECT_EQ(y.dtype(), DType::u8);
    ref::Array want = ref::binary(to_ref(a), to_ref(b),
                                  [&](double x, double z) { return cc.ref(x, z) ? 1.0 : 0.0; });
    EXPECT_TENSOR_NEAR(y, from_ref(want, DType::f64), 0, 0);
  };
  for (const auto& c : layout_cases()) {
    SCOPED_TRACE(case_trace(c, dt));
    check(make_layout(random_ref(c.shape, sample), dt, c.layout),
          make_layout(random_ref(c.shape, sample), dt, other_layout(c.layout)));
  }
  for (const auto& bcase : broadcast_cases()) {
    SCOPED_TRACE(str_cat("shapes ", bcase.a, " and ", bcase.b));
    check(from_ref(random_ref(bcase.a, sample), dt), from_ref(random_ref(bcase.b, sample), dt));
  }
}

INSTANTIATE_TEST_SUITE_P(AllOps, Compare,
                         ::testing::Combine(::testing::Range<size_t>(0, 6),
                                            ::testing::ValuesIn(kAllDTypes)),
                         [](const auto& tp) {
                           return std::string(compare_cases()[std::get<0>(tp.param)].name) + "_" +
                                  dtype_param_name(std::get<1>(tp.param));
                         });

TEST(Compare, CaseTableSizeMatchesInstantiation) { EXPECT_EQ(compare_cases().size(), 6u); }

// NaN compares unequal to everything, itself included; mixed dtypes compare after promotion.
TEST(Compare, NanAndMixedDTypes) {
  Tensor a = tensor_of({NAN, 1, 2}, {3}, DType::f32);
  Tensor b = tensor_of({NAN, NAN, 2}, {3}, DType::f32);
  EXPECT_TENSOR_NEAR(eq(a, b), tensor_of({0, 0, 1}, {3}, DType::f64), 0, 0);
  EXPECT_TENSOR_NEAR(ne(a, b), tensor_of({1, 1, 0}, {3}, DType::f64), 0, 0);
  EXPECT_TENSOR_NEAR(lt(a, b), tensor_of({0, 0, 0}, {3}, DType::f64), 0, 0);
  // 2.5 (f32) vs 2 (i32): compared in f32, not truncated to 2.
  Tensor f = tensor_of({2.5, 2, 1.5}, {3}, DType::f32);
  Tensor i = tensor_of({2, 2, 2}, {3}, DType::i32);
  EXPECT_TENSOR_NEAR(gt(f, i), tensor_of({1, 0, 0}, {3}, DType::f64), 0, 0);
  EXPECT_TENSOR_NEAR(eq(f, i), tensor_of({0, 1, 0}, {3}, DType::f64), 0, 0);
  EXPECT_EQ(eq(f, i).dtype(), DType::u8);
  // bf16 1.00390625 rounds to 1, f16 holds it exactly: they differ once promoted to f32.
  Tensor x16 = tensor_of({1.00390625}, {1}, DType::f16);
  Tensor xb = tensor_of({1.00390625}, {1}, DType::bf16);
  EXPECT_EQ(gt(x16, xb).item(), 1.0);
}

// ---------------------------------------------------------------------------- where

TEST(Where, MatchesReferenceWithBroadcastingAndLayouts) {
  manual_seed(51);
  struct Shapes {
    ref::Dims c, a, b;
  };
  const std::vector<Shapes> cases = {{{7}, {7}, {7}},         {{1023}, {1023}, {1023}},
                                     {{3, 1, 5}, {4, 5}, {}}, {{4, 5}, {3, 1, 5}, {1, 5}},
                                     {{}, {2, 3}, {2, 3}},    {{2, 1}, {1, 3}, {2, 3}}};
  for (DType dt : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::u8}) {
    for (const auto& s : cases) {
      SCOPED_TRACE(str_cat("cond ", s.c, " a ", s.a, " b ", s.b, " dtype ", dt));
      // Any nonzero condition byte selects a.
      ref::Array cv = random_ref(s.c, [](double u) { return u < 0.5 ? 0.0 : std::floor(u * 8); });
      ref::Array av = uniform_ref(s.a, 0, 100), bv = uniform_ref(s.b, 0, 100);
      Tensor a = from_ref(av, dt), b = from_ref(bv, dt);
      Tensor y = where(from_ref(cv, DType::u8), a, b);
      EXPECT_EQ(y.dtype(), dt);
      EXPECT_TENSOR_NEAR(y, from_ref(ref::where(cv, to_ref(a), to_ref(b)), DType::f64), 0, 0);
    }
  }
  // Non-contiguous operands.
  ref::Array cv = random_ref({31, 33}, [](double u) { return u < 0.5 ? 0.0 : 1.0; });
  ref::Array av = uniform_ref({31, 33}, -1, 1), bv = uniform_ref({31, 33}, -1, 1);
  Tensor y = where(make_layout(cv, DType::u8, Layout::transposed),
                   make_layout(av, DType::f32, Layout::strided),
                   make_layout(bv, DType::f32, Layout::offset));
  EXPECT_TENSOR_NEAR(
      y,
      from_ref(ref::where(cv, to_ref(from_ref(av, DType::f32)), to_ref(from_ref(bv, DType::f32))),
               DType::f64),
      0, 0);
}

TEST(Where, PromotesOperands) {
  Tensor c = tensor_of({1, 0}, {2}, DType::u8);
  Tensor y = where(c, tensor_of({1.5, 2.5}, {2}, DType::bf16), tensor_of({3, 4}, {2}, DType::f16));
  EXPECT_EQ(y.dtype(), DType::f32);
  EXPECT_TENSOR_NEAR(y, tensor_of({1.5, 4}, {2}, DType::f64), 0, 0);
  Tensor z = where(c, tensor_of({1, 2}, {2}, DType::i32), tensor_of({0.5, 0.25}, {2}, DType::f64));
  EXPECT_EQ(z.dtype(), DType::f64);
  EXPECT_TENSOR_NEAR(z, tensor_of({1, 0.25}, {2}, DType::f64), 0, 0);
}

// ---------------------------------------------------------------------------- promotion

TEST(Promotion, TypeTable) {
  EXPECT_EQ(promote_types(DType::i32, DType::f32), DType::f32);
  EXPECT_EQ(promote_types(DType::f32, DType::i64), DType::f32);
  EXPECT_EQ(promote_types(DType::bf16, DType::f16), DType::f32);
  EXPECT_EQ(promote_types(DType::f16, DType::bf16), DType::f32);
  EXPECT_EQ(promote_types(DType::bf16, DType::f32), DType::f32);
  EXPECT_EQ(promote_types(DType::f16, DType::f64), DType::f64);
  EXPECT_EQ(promote_types(DType::i64, DType::bf16), DType::bf16);
  EXPECT_EQ(promote_types(DType::u8, DType::f16), DType::f16);
  EXPECT_EQ(promote_types(DType::i32, DType::i64), DType::i64);
  EXPECT_EQ(promote_types(DType::i8, DType::i32), DType::i32);
  EXPECT_EQ(promote_types(DType::u8, DType::i8), DType::i32);  // no i16: the next that holds both
  EXPECT_EQ(promote_types(DType::u8, DType::u8), DType::u8);
  for (DType t : kAllDTypes) EXPECT_EQ(promote_types(t, t), t);
}

TEST(Promotion, BinaryOpsComputeInThePromotedDType) {
  // i32 + f32 -> f32
  Tensor s = add(tensor_of({1, 2}, {2}, DType::i32), tensor_of({0.5, 0.25}, {2}, DType::f32));
  EXPECT_EQ(s.dtype(), DType::f32);
  EXPECT_TENSOR_NEAR(s, tensor_of({1.5, 2.25}, {2}, DType::f64), 0, 0);
  // bf16 + f16 -> f32, each operand exact in its own dtype: 1 + 2^-10 is exact in f16 only.
  Tensor m = add(tensor_of({1, 256}, {2}, DType::bf16),
                 tensor_of({std::ldexp(1.0, -10), 0.5}, {2}, DType::f16));
  EXPECT_EQ(m.dtype(), DType::f32);
  EXPECT_TENSOR_NEAR(m, tensor_of({1 + std::ldexp(1.0, -10), 256.5}, {2}, DType::f64), 0, 0);
  // int / int -> f32
  Tensor d = tensor_of({1, 7}, {2}, DType::i64) / tensor_of({4, 2}, {2}, DType::i32);
  EXPECT_EQ(d.dtype(), DType::f32);
  EXPECT_TENSOR_NEAR(d, tensor_of({0.25, 3.5}, {2}, DType::f64), 0, 0);
  // u8 + i8 -> i32: no wrap-around at 8 bits.
  Tensor w = add(tensor_of({200}, {1}, DType::u8), tensor_of({100}, {1}, DType::i8));
  EXPECT_EQ(w.dtype(), DType::i32);
  EXPECT_EQ(w.item(), 300.0);
  // f32 * f64 -> f64 keeps the f64 operand's precision.
  Tensor p = mul(tensor_of({3}, {1}, DType::f32), tensor_of({0.1}, {1}, DType::f64));
  EXPECT_EQ(p.dtype(), DType::f64);
  EXPECT_DOUBLE_EQ(p.item(), 3 * 0.1);
  // i64 with a 16-bit float: the float dtype wins.
  EXPECT_EQ(sub(tensor_of({3}, {1}, DType::i64), tensor_of({1}, {1}, DType::f16)).dtype(),
            DType::f16);
  // Broadcast and promotion together.
  Tensor bp = mul(tensor_of({1, 2, 3}, {3, 1}, DType::i32), tensor_of({0.5, 2}, {2}, DType::bf16));
  EXPECT_EQ(bp.dtype(), DType::bf16);
  EXPECT_TENSOR_NEAR(bp, tensor_of({0.5, 2, 1, 4, 1.5, 6}, {3, 2}, DType::f64), 0, 0);
}

// ---------------------------------------------------------------------------- casts

class CastPair : public ::testing::TestWithParam<std::tuple<DType, DType>> {};

// Values every dtype holds exactly survive a cast between any two dtypes, on a contiguous and
// on a transposed source.
TEST_P(CastPair, ExactValuesSurvive) {
  const DType src = std::get<0>(GetParam()), dst = std::get<1>(GetParam());
  std::vector<double> v = {0, 1, 2, 5, 100, 127, 64, 3};
  if (src != DType::u8 && dst != DType::u8) v.insert(v.end(), {-1, -7, -128, -64});
  const int64_t n = int64_t(v.size());
  ref::Array a({2, n / 2}, v);
  for (Layout l : {Layout::contiguous, Layout::transposed}) {
    SCOPED_TRACE(layout_name(l));
    Tensor x = make_layout(a, src, l);
    Tensor y = x.to(dst);
    EXPECT_EQ(y.dtype(), dst);
    EXPECT_EQ(y.shape(), a.shape);
    EXPECT_TENSOR_NEAR(y, from_ref(a, DType::f64), 0, 0);
    EXPECT_EQ(cast(x, dst).dtype(), dst);
    EXPECT_TENSOR_NEAR(cast(x, dst), from_ref(a, DType::f64), 0, 0);
    // copy_ casts too.
    Tensor z = zeros(a.shape, TensorOptions(dst));
    z.copy_(x);
    EXPECT_TENSOR_NEAR(z, from_ref(a, DType::f64), 0, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(AllPairs, CastPair,
                         ::testing::Combine(::testing::ValuesIn(kAllDTypes),
                                            ::testing::ValuesIn(kAllDTypes)),
                         [](const auto& tp) {
                           return dtype_param_name(std::get<0>(tp.param)) + "_to_" +
                                  dtype_param_name(std::get<1>(tp.param));
                         });

// bf16 keeps 8 significant bits: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 and ties to the
// even 1; 1 + 3 * 2^-8 ties to the even 1 + 2^-6; the next float above a tie rounds up; 257 and
// 259 tie between steps of 2; FLT_MAX is past the last tie below inf.
TEST(Cast, Bf16RoundsToNearestEven) {
  const float above_tie = std::nextafter(1.00390625f, 2.0f);
  const std::vector<float> in = {1.00390625f, 1.01171875f,  -1.00390625f,
                                 above_tie,   0.998046875f, 256.5f,
                                 257.0f,      259.0f,       std::numeric_limits<float>::max(),
                                 1e-40f,      -0.0f,        65536.0f};
  const std::vector<double> want = {1.0,   1.015625, -1.0,  1.0078125, 1.0,
                                    256.0, 256.0,    260.0, INFINITY,  std::ldexp(1.0, -133),
                                    0.0,   65536.0};
  std::vector<double> got = to_doubles(from_vector(in, {int64_t(in.size())}).to(DType::bf16));
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ(got[i], want[i]) << "input " << in[i];
    EXPECT_EQ(got[i], ref::round_bf16(double(in[i]))) << "input " << in[i];
  }
  // Every tie between adjacent bf16 values in [1, 2) goes to the even neighbour.
  std::vector<double> ties;
  for (int k = 0; k < 64; ++k) ties.push_back((128 + k + 0.5) / 128.0);
  std::vector<double> t = to_doubles(tensor_of(ties, {64}, DType::f32).to(DType::bf16));
  for (int k = 0; k < 64; ++k) {
    const int even = (k % 2 == 0) ? k : k + 1;
    EXPECT_EQ(t[size_t(k)], (128 + even) / 128.0) << "tie at " << ties[size_t(k)];
  }
}

// Random floats over a wide exponent range (subnormals included) round exactly as the
// reference's round-to-nearest-even.
TEST(Cast, Bf16AndF16MatchReferenceRounding) {
  manual_seed(61);
  ref::Array v = random_ref({20000}, [](double u) {
    const double s = u < 0.5 ? -1.0 : 1.0;
    const double e = std::floor(std::fabs(u - 0.5) * 2 * 180) - 140;  // 2^-140 .. 2^40
    const double m = 1.0 + std::fmod(u * 7919.0, 1.0);
    return ref::round_f32(s * std::ldexp(m, int(e)));
  });
  Tensor x = from_ref(v, DType::f32);
  ref::Array xv = to_ref(x);
  EXPECT_TENSOR_NEAR(x.to(DType::bf16), from_ref(ref::unary(xv, ref::round_bf16), DType::f64), 0,
                     0);
  EXPECT_TENSOR_NEAR(x.to(DType::f16), from_ref(ref::unary(xv, ref::round_f16), DType::f64), 0, 0);
  // And from f64: values exact in f32, so no double rounding is involved.
  Tensor xd = from_ref(xv, DType::f64);
  EXPECT_TENSOR_NEAR(xd.to(DType::f16), from_ref(ref::unary(xv, ref::round_f16), DType::f64), 0, 0);
  // Mid-points between adjacent f16 values tie to even.
  std::vector<double> ties;
  for (int k = 0; k < 64; ++k) ties.push_back((1024 + k + 0.5) / 1024.0);  // between f16 steps
  Tensor t = tensor_of(ties, {64}, DType::f32).to(DType::f16);
  std::vector<double> got = to_doubles(t);
  for (int k = 0; k < 64; ++k) {
    const int even = (k % 2 == 0) ? k : k + 1;
    EXPECT_EQ(got[size_t(k)], (1024 + even) / 1024.0) << "tie at " << ties[size_t(k)];
  }
}

TEST(Cast, F16RoundsOverflowsAndUnderflows) {
  const double sub = std::ldexp(1.0, -24);  // the smallest f16 subnormal
  const std::vector<double> in = {65504,
                                  65519,
                                  65520,
                                  1e5,
                                  -1e5,
                                  1 + std::ldexp(1.0, -11),
                                  1 + 3 * std::ldexp(1.0, -11),
                                  sub,
                                  sub / 2,
                                  sub * 0.75,
                                  sub * 1.5,
                                  sub * 2.5,
                                  std::ldexp(1.0, -14),
                                  -sub / 2,
                                  std::ldexp(1.0, -14) - sub,
                                  1e-10};
  const std::vector<double> want = {65504,
                                    65504,
                                    INFINITY,
                                    INFINITY,
                                    -INFINITY,
                                    1.0,
                                    1 + std::ldexp(1.0, -9),
                                    sub,
                                    0.0,
                                    sub,
                                    2 * sub,
                                    2 * sub,
                                    std::ldexp(1.0, -14),
                                    -0.0,
                                    std::ldexp(1.0, -14) - sub,
                                    0.0};
  Tensor y = tensor_of(in, {int64_t(in.size())}, DType::f32).to(DType::f16);
  std::vector<double> got = to_doubles(y);
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ(got[i], want[i]) << "input " << in[i];
  }
  EXPECT_TRUE(std::signbit(got[13])) << "-2^-25 rounds to -0";
  // f16 subnormals widen exactly.
  EXPECT_EQ(tensor_of({sub * 3}, {1}, DType::f16).to(DType::f32).item(), sub * 3);
  EXPECT_EQ(tensor_of({-sub}, {1}, DType::f16).to(DType::f64).item(), -sub);
}

TEST(Cast, NanAndInfSurviveEveryFloatDType) {
  for (DType src : {DType::f32, DType::f64, DType::bf16, DType::f16}) {
    for (DType dst : {DType::f32, DType::f64, DType::bf16, DType::f16}) {
      SCOPED_TRACE(str_cat(src, " -> ", dst));
      std::vector<double> got = to_doubles(tensor_of({NAN, INFINITY, -INFINITY}, {3}, src).to(dst));
      EXPECT_TRUE(std::isnan(got[0]));
      EXPECT_EQ(got[1], INFINITY);
      EXPECT_EQ(got[2], -INFINITY);
    }
  }
}

// Float to integer truncates toward zero, as C++ and PyTorch.
TEST(Cast, FloatToIntTruncatesTowardZero) {
  for (DType src : {DType::f32, DType::f64, DType::bf16, DType::f16}) {
    for (DType dst : {DType::i8, DType::i32, DType::i64}) {
      SCOPED_TRACE(str_cat(src, " -> ", dst));
      Tensor y = tensor_of({2.75, -2.75, 0.5, -0.5, 126.5, -99.5}, {6}, src).to(dst);
      EXPECT_TENSOR_NEAR(y, tensor_of({2, -2, 0, 0, 126, -99}, {6}, DType::f64), 0, 0);
    }
    Tensor u = tensor_of({2.75, 0.5, 254.5}, {3}, src).to(DType::u8);
    EXPECT_TENSOR_NEAR(u, tensor_of({2, 0, 254}, {3}, DType::f64), 0, 0);
  }
}

// Narrowing integer casts wrap modulo 2^bits.
TEST(Cast, IntegerNarrowingWrapsAround) {
  Tensor x = tensor_of({300, 255, 256, -1, 200}, {5}, DType::i32);
  EXPECT_TENSOR_NEAR(x.to(DType::u8), tensor_of({44, 255, 0, 255, 200}, {5}, DType::f64), 0, 0);
  EXPECT_TENSOR_NEAR(x.to(DType::i8), tensor_of({44, -1, 0, -1, -56}, {5}, DType::f64), 0, 0);
  Tensor big = from_vector(std::vector<int64_t>{(int64_t(1) << 33) + 5, -(int64_t(1) << 40) - 3},
                           {2}, TensorOptions(DType::i64));
  EXPECT_EQ(big.to(DType::i32).to_vector<int32_t>(), (std::vector<int32_t>{5, -3}));
  // i64 -> f64 is exact up to 2^53.
  Tensor p53 =
      from_vector(std::vector<int64_t>{(int64_t(1) << 53) - 1}, {1}, TensorOptions(DType::i64));
  EXPECT_EQ(p53.to(DType::f64).item(), std::ldexp(1.0, 53) - 1);
}

TEST(Cast, F64ToF32RoundsToNearest) {
  const std::vector<double> in = {0.1, 1.0 / 3.0, 1e-40, 1e300, -1e300, 16777217.0};
  std::vector<double> got = to_doubles(tensor_of(in, {6}, DType::f64).to(DType::f32));
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ(got[i], ref::round_f32(in[i])) << "input " << in[i];
  }
  EXPECT_EQ(got[0], double(0.1f));
  EXPECT_EQ(got[3], INFINITY);
  EXPECT_EQ(got[5], 16777216.0);  // 2^24 + 1 ties to the even 2^24
}

TEST(Cast, SameDTypeIsANoOpAndClonesAreIndependent) {
  Tensor x = tensor_of({1, 2, 3}, {3}, DType::f32);
  Tensor same = x.to(DType::f32);
  EXPECT_TRUE(same.same(x));  // no copy, as PyTorch's .to
  Tensor c = x.clone();
  c.fill_(7);
  EXPECT_TENSOR_NEAR(x, tensor_of({1, 2, 3}, {3}, DType::f64), 0, 0);
}

// ---------------------------------------------------------------------------- errors

TEST(ElementwiseErrors, ShapeMismatchNamesBothShapes) {
  Tensor a = zeros({3, 4}), b = zeros({5});
  EXPECT_THAT(error_message([&] { add(a, b); }), AllOf(HasSubstr("[3, 4]"), HasSubstr("[5]")));
  EXPECT_THAT(error_message([&] {
                mul(zeros({2, 3, 4}), zeros({3, 5}));
              }),
              AllOf(HasSubstr("[2, 3, 4]"), HasSubstr("[3, 5]")));
  EXPECT_THAT(error_message([&] { eq(zeros({2}), zeros({3})); }),
              AllOf(HasSubstr("[2]"), HasSubstr("[3]")));
  EXPECT_THAT(error_message([&] { where(zeros({4}, DType::u8), zeros({4}), zeros({2})); }),
              AllOf(HasSubstr("[4]"), HasSubstr("[2]")));
  EXPECT_THROW(broadcast_shapes({2, 3}, {4, 3}), Error);
  EXPECT_EQ(broadcast_shapes({3, 1, 5}, {4, 5}), (Shape{3, 4, 5}));
}

TEST(ElementwiseErrors, UnsupportedDTypesNameTheOpAndDType) {
  // where wants a u8 condition (what comparisons return).
  EXPECT_THAT(error_message([&] { where(zeros({2}), zeros({2}), zeros({2})); }),
              AllOf(HasSubstr("where"), HasSubstr("f32")));
  EXPECT_THAT(error_message([&] { where(zeros({2}, DType::i64), zeros({2}), zeros({2})); }),
              AllOf(HasSubstr("where"), HasSubstr("i64")));
  // Only floating tensors take gradients.
  EXPECT_THAT(error_message([&] { zeros({2}, DType::i32).requires_grad_(); }), HasSubstr("i32"));
  EXPECT_THAT(error_message([&] { clamp(zeros({2}), 1.0, -1.0); }),
              AllOf(HasSubstr("clamp"), HasSubstr("1"), HasSubstr("-1")));
}

TEST(ElementwiseErrors, UndefinedTensorsAreRejected) {
  EXPECT_THROW(add(Tensor(), zeros({1})), Error);
  EXPECT_THROW(exp(Tensor()), Error);
}

// ---------------------------------------------------------------------------- in place

TEST(InPlace, AddAndMulWriteTheRightValues) {
  manual_seed(71);
  ref::Array sv = uniform_ref({4, 5}, -2, 2), ov = uniform_ref({4, 5}, -2, 2);
  Tensor self = from_ref(sv, DType::f64);
  add_(self, from_ref(ov, DType::f64));
  EXPECT_TENSOR_NEAR(
      self, from_ref(ref::binary(sv, ov, [](double a, double b) { return a + b; }), DType::f64),
      1e-15, 0);
  // alpha, broadcasting and a dtype cast of `other`.
  Tensor s2 = from_ref(sv, DType::f32);
  ref::Array row = uniform_ref({5}, -2, 2);
  add_(s2, from_ref(row, DType::f64), -0.5);
  ref::Array s2v = to_ref(from_ref(sv, DType::f32));
  EXPECT_TENSOR_NEAR(
      s2,
      from_ref(ref::binary(s2v, row, [](double a, double b) { return a - 0.5 * b; }), DType::f64),
      1e-6, 1e-7);
  Tensor s3 = from_ref(sv, DType::f64);
  mul_(s3, 3.0);
  EXPECT_TENSOR_NEAR(s3, from_ref(ref::unary(sv, [](double a) { return 3 * a; }), DType::f64),
                     1e-15, 0);
  // Integers.
  Tensor si = tensor_of({1, 2, 3}, {3}, DType::i32);
  add_(si, tensor_of({10, 20, 30}, {3}, DType::i64));
  mul_(si, 2.0);
  EXPECT_TENSOR_NEAR(si, tensor_of({22, 44, 66}, {3}, DType::f64), 0, 0);
}

// In place on a view writes through to the base, and only to the view's elements.
TEST(InPlace, WritesThroughNonContiguousViews) {
  Tensor base = arange(0.0, 12.0, 1.0, TensorOptions(DType::f32)).view({3, 4});
  Tensor col = base.t().select(0, 1);  // base[:, 1]: stride 4
  add_(col, tensor_of({100, 200, 300}, {3}, DType::f32));
  Tensor every_other = base.view({12}).slice(0, 0, 12, 2);
  mul_(every_other, -1.0);
  EXPECT_TENSOR_NEAR(
      base, tensor_of({-0, 101, -2, 3, -4, 205, -6, 7, -8, 309, -10, 11}, {3, 4}, DType::f64), 0,
      0);
}

TEST(InPlace, BumpsTheStorageVersion) {
  Tensor x = zeros({3});
  Tensor view = x.slice(0, 1, 3);
  const uint64_t v0 = x.storage()->version();
  add_(x, ones({3}));
  EXPECT_EQ(x.storage()->version(), v0 + 1);
  mul_(view, 2.0);
  EXPECT_EQ(x.storage()->version(), v0 + 2);  // one counter shared by every view
  // A tensor saved for backward and then modified in place: backward names the op.
  Tensor w = ones({3}, TensorOptions(DType::f32).with_requires_grad());
  Tensor s = tensor_of({1, 2, 3}, {3}, DType::f32);
  Tensor y = mul(w, s);
  add_(s, ones({3}));
  EXPECT_THAT(error_message([&] { sum(y).backward(); }),
              AllOf(HasSubstr("mul"), HasSubstr("in place")));
}

TEST(InPlace, RefusesTensorsThatRequireGrad) {
  Tensor w = ones({2}, TensorOptions(DType::f32).with_requires_grad());
  EXPECT_THAT(error_message([&] { add_(w, ones({2})); }), HasSubstr("add_"));
  EXPECT_THAT(error_message([&] { mul_(w, 2.0); }), HasSubstr("mul_"));
  {
    autograd::NoGradGuard guard;
    add_(w, ones({2}));
    mul_(w, 3.0);
  }
  EXPECT_TENSOR_NEAR(w, tensor_of({6, 6}, {2}, DType::f64), 0, 0);
}

}  // namespace
}  // namespace lowbit::testing
