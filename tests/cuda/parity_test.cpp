// CPU-vs-CUDA parity for every op of core/ops.h: the same inputs run on the CPU (the reference)
// and on cuda:0, in several layouts (sizes 1, 7, 1023; a transposed and a step-2 strided view;
// a broadcast). Ops that do the same IEEE operations on both backends must agree exactly (add,
// mul, div, sqrt, casts, compares, where, copies, indexing, max/min, Philox streams); the C
// library and CUDA's math library may differ by an ulp or two in exp/log/tanh/pow, reductions and
// GEMMs sum in different orders, and those get dtype-scaled tolerances (see tol_*). Every suite
// ends in Gpu (ctest label `gpu`) and skips itself without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/ops.h"
#include "core/random.h"
#include "core/tensor.h"
#include "tests/common/test_util.h"

namespace lowbit {
namespace {

using testing::non_contiguous_copy;
using testing::tensor_of;

struct Tol {
  double rtol = 0.0;
  double atol = 0.0;
};
constexpr Tol kExact{0.0, 0.0};

const DType kAllDtypes[] = {DType::f32, DType::f64, DType::bf16, DType::f16,
                            DType::i8,  DType::u8,  DType::i32,  DType::i64};
const DType kFloatDtypes[] = {DType::f32, DType::f64, DType::bf16, DType::f16};

// Tolerance for results of the math library (exp, log, tanh, pow, ...): CUDA's and glibc's
// functions may differ by ~2 ulp in float/double, which rounding to a 16-bit float can turn into
// one ulp of that format.
Tol tol_math(DType t) {
  switch (t) {
    case DType::f32:
      return {2e-6, 1e-6};
    case DType::f64:
      return {1e-13, 1e-14};
    case DType::bf16:
      return {1e-2, 1e-3};  // one bf16 ulp is 2^-8 relative
    case DType::f16:
      return {1e-3, 1e-4};  // one f16 ulp is 2^-11 relative
    default:
      return kExact;
  }
}
// Tolerance for sums of n terms accumulated in a different order (double on both backends for
// reductions; for the float-accumulating softmax and GEMM see their tests).
Tol tol_sum(DType t) {
  switch (t) {
    case DType::f32:
      return {1e-6, 1e-6};
    case DType::f64:
      return {1e-12, 1e-12};
    case DType::bf16:
      return {1e-2, 1e-2};
    case DType::f16:
      return {1e-3, 1e-3};
    default:
      return kExact;
  }
}

std::string dtype_tag(DType t) { return dtype_name(t); }

// Deterministic inputs: uniform in [lo, hi], rounded to multiples of `step` (step 0: no
// rounding; integer dtypes always get integers), so compare ops and max/min see ties. For u8 the
// range is clipped at 0 (a negative double converted to u8 is undefined behaviour).
Tensor make_input(const Shape& shape, DType t, double lo, double hi, uint32_t seed,
                  double step = 0.0) {
  if (t == DType::u8) lo = std::max(lo, 0.0);
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(size_t(numel_of(shape)));
  for (double& x : v) {
    x = dist(gen);
    if (!is_floating(t)) {
      x = std::round(x);
    } else if (step > 0.0) {
      x = std::round(x / step) * step;
    }
  }
  return tensor_of(v, shape, t);
}

Tensor gpu(const Tensor& t) { return t.to(Device::cuda(0)); }

void expect_parity(const Tensor& on_gpu, const Tensor& on_cpu, Tol tol) {
  ASSERT_TRUE(on_gpu.defined() && on_cpu.defined());
  EXPECT_TRUE(on_gpu.is_cuda()) << "the CUDA result lives on " << on_gpu.device();
  EXPECT_TRUE(on_cpu.device().is_cpu());
  EXPECT_EQ(on_gpu.dtype(), on_cpu.dtype());
  EXPECT_TENSOR_NEAR(on_gpu, on_cpu, tol.rtol, tol.atol);
}

// A layout: the base shape inputs are drawn in, and the view each device applies to them.
struct Layout {
  const char* name;
  Shape base;
  std::function<Tensor(const Tensor&)> view;
};

std::vector<Layout> unary_layouts() {
  auto id = [](const Tensor& t) { return t; };
  return {
      {"n1", {1}, id},
      {"n7", {7}, id},
      {"n1023", {1023}, id},
      {"transposed", {33, 31}, [](const Tensor& t) { return non_contiguous_copy(t); }},
      {"step2", {33, 62}, [](const Tensor& t) { return t.slice(1, 0, 62, 2); }},
      {"broadcast",
       {1, 31},
       [](const Tensor& t) {
         return t.expand({33, 31});
       }},
  };
}

// ------------------------------------------------------------------------------------ unary

struct UnaryCase {
  const char* name;
  std::function<Tensor(const Tensor&)> fn;
  bool float_only;
  bool math_lib;          // uses exp/log/tanh/pow: tol_math, else exact
  double lo, hi;          // input range for floats
  double int_lo, int_hi;  // input range for integers (make_input clips u8 at 0)
};

const std::vector<UnaryCase>& unary_cases() {
  static const std::vector<UnaryCase> cases = {
      {"neg", [](const Tensor& x) { return neg(x); }, false, false, -3, 3, -20, 20},
      {"abs", [](const Tensor& x) { return abs(x); }, false, false, -3, 3, -20, 20},
      {"sign", [](const Tensor& x) { return sign(x); }, false, false, -3, 3, -3, 3},
      {"square", [](const Tensor& x) { return square(x); }, false, false, -3, 3, -10, 10},
      {"relu", [](const Tensor& x) { return relu(x); }, false, false, -3, 3, -20, 20},
      // Non-negative bounds: converting a negative bound to u8 would be undefined behaviour.
      {"clamp", [](const Tensor& x) { return clamp(x, 0.5, 2.5); }, false, false, -3, 3, -5, 5},
      {"add_scalar", [](const Tensor& x) { return add(x, 1.5); }, false, false, -3, 3, -20, 20},
      {"mul_scalar", [](const Tensor& x) { return mul(x, 3.0); }, false, false, -3, 3, -20, 20},
      {"pow_scalar", [](const Tensor& x) { return pow(x, 2.0); }, false, true, -3, 3, -10, 10},
      {"exp", [](const Tensor& x) { return exp(x); }, true, true, -4, 4, 0, 0},
      {"log", [](const Tensor& x) { return log(x); }, true, true, 0.05, 5, 0, 0},
      // sqrt and 1/x are correctly rounded on both backends (nvcc's default -prec-sqrt/-prec-div).
      {"sqrt", [](const Tensor& x) { return sqrt(x); }, true, false, 0.0, 5, 0, 0},
      {"rsqrt", [](const Tensor& x) { return rsqrt(x); }, true, false, 0.05, 5, 0, 0},
      {"reciprocal", [](const Tensor& x) { return reciprocal(x); }, true, false, 0.25, 5, 0, 0},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); }, true, true, -6, 6, 0, 0},
      {"tanh", [](const Tensor& x) { return tanh(x); }, true, true, -3, 3, 0, 0},
      {"pow_fractional", [](const Tensor& x) { return pow(x, 1.7); }, true, true, 0.05, 3, 0, 0},
  };
  return cases;
}

struct OpDtype {
  int op;
  DType dtype;
};

std::vector<OpDtype> unary_params() {
  std::vector<OpDtype> v;
  for (int i = 0; i < int(unary_cases().size()); ++i) {
    for (DType t : kAllDtypes) {
      if (unary_cases()[size_t(i)].float_only && !is_floating(t)) continue;
      v.push_back({i, t});
    }
  }
  return v;
}

class UnaryParityGpu : public ::testing::TestWithParam<OpDtype> {};

TEST_P(UnaryParityGpu, MatchesCpu) {
  LOWBIT_SKIP_WITHOUT_GPU();
  const UnaryCase& c = unary_cases()[size_t(GetParam().op)];
  const DType t = GetParam().dtype;
  const double lo = is_floating(t) ? c.lo : c.int_lo;
  const double hi = is_floating(t) ? c.hi : c.int_hi;
  const Tol tol = c.math_lib ? tol_math(t) : kExact;
  uint32_t seed = 1;
  for (const Layout& l : unary_layouts()) {
    SCOPED_TRACE(l.name);
    Tensor x = make_input(l.base, t, lo, hi, seed++);
    expect_parity(c.fn(l.view(gpu(x))), c.fn(l.view(x)), tol);
  }
}

INSTANTIATE_TEST_SUITE_P(Ops, UnaryParityGpu, ::testing::ValuesIn(unary_params()),
                         [](const ::testing::TestParamInfo<OpDtype>& param_info) {
                           return std::string(unary_cases()[size_t(param_info.param.op)].name) +
                                  "_" + dtype_tag(param_info.param.dtype);
                         });

// ----------------------------------------------------------------------------------- binary

struct BinaryCase {
  const char* name;
  std::function<Tensor(const Tensor&, const Tensor&)> fn;
  bool math_lib;
  double a_lo, a_hi, b_lo, b_hi;  // float ranges; integers use the same, rounded
};

const std::vector<BinaryCase>& binary_cases() {
  static const std::vector<BinaryCase> cases = {
      {"add", [](const Tensor& a, const Tensor& b) { return add(a, b); }, false, -9, 9, -9, 9},
      {"sub", [](const Tensor& a, const Tensor& b) { return sub(a, b); }, false, 0, 20, 0, 9},
      {"mul", [](const Tensor& a, const Tensor& b) { return mul(a, b); }, false, -9, 9, -9, 9},
      {"div", [](const Tensor& a, const Tensor& b) { return div(a, b); }, false, -9, 9, 1, 9},
      {"pow", [](const Tensor& a, const Tensor& b) { return pow(a, b); }, true, 1, 4, 0, 3},
      {"maximum", [](const Tensor& a, const Tensor& b) { return maximum(a, b); }, false, 0, 9, 0,
       9},
      {"minimum", [](const Tensor& a, const Tensor& b) { return minimum(a, b); }, false, 0, 9, 0,
       9},
      {"add_relu", [](const Tensor& a, const Tensor& b) { return add_relu(a, b); }, false, -9, 9,
       -9, 9},
      {"eq", [](const Tensor& a, const Tensor& b) { return eq(a, b); }, false, 0, 4, 0, 4},
      {"ne", [](const Tensor& a, const Tensor& b) { return ne(a, b); }, false, 0, 4, 0, 4},
      {"lt", [](const Tensor& a, const Tensor& b) { return lt(a, b); }, false, 0, 4, 0, 4},
      {"le", [](const Tensor& a, const Tensor& b) { return le(a, b); }, false, 0, 4, 0, 4},
      {"gt", [](const Tensor& a, const Tensor& b) { return gt(a, b); }, false, 0, 4, 0, 4},
      {"ge", [](const Tensor& a, const Tensor& b) { return ge(a, b); }, false, 0, 4, 0, 4},
  };
  return cases;
}

struct BinaryLayout {
  const char* name;
  Shape a_base, b_base;
  std::function<Tensor(const Tensor&)> view;  // applied to both operands
};

std::vector<BinaryLayout> binary_layouts() {
  auto id = [](const Tensor& t) { return t; };
  return {
      {"n1", {1}, {1}, id},
      {"n7", {7}, {7}, id},
      {"n1023", {1023}, {1023}, id},
      {"transposed", {33, 31}, {33, 31}, [](const Tensor& t) { return non_contiguous_copy(t); }},
      {"step2", {33, 62}, {33, 62}, [](const Tensor& t) { return t.slice(1, 0, 62, 2); }},
      {"broadcast", {33, 1}, {1, 31}, id},
      {"scalar_rhs", {5, 7}, {}, id},
  };
}

std::vector<OpDtype> binary_params() {
  std::vector<OpDtype> v;
  for (int i = 0; i < int(binary_cases().size()); ++i) {
    for (DType t : kAllDtypes) v.push_back({i, t});
  }
  return v;
}

class BinaryParityGpu : public ::testing::TestWithParam<OpDtype> {};

TEST_P(BinaryParityGpu, MatchesCpu) {
  LOWBIT_SKIP_WITHOUT_GPU();
  const BinaryCase& c = binary_cases()[size_t(GetParam().op)];
  const DType t = GetParam().dtype;
  // Integer pow on the CPU and GPU is the same repeated squaring: exact.
  const Tol tol = c.math_lib ? tol_math(t) : kExact;
  uint32_t seed = 100;
  for (const BinaryLayout& l : binary_layouts()) {
    SCOPED_TRACE(l.name);
    // Quarter steps make ties (eq, maximum) likely and keep add/sub/mul exact in 16-bit floats.
    Tensor a = make_input(l.a_base, t, c.a_lo, c.a_hi, seed++, 0.25);
    Tensor b = make_input(l.b_base, t, c.b_lo, c.b_hi, seed++, 0.25);
    expect_parity(c.fn(l.view(gpu(a)), l.view(gpu(b))), c.fn(l.view(a), l.view(b)), tol);
  }
}

INSTANTIATE_TEST_SUITE_P(Ops, BinaryParityGpu, ::testing::ValuesIn(binary_params()),
                         [](const ::testing::TestParamInfo<OpDtype>& param_info) {
                           return std::string(binary_cases()[size_t(param_info.param.op)].name) +
                                  "_" + dtype_tag(param_info.param.dtype);
                         });

TEST(BinaryMiscParityGpu, MixedDtypesPromote) {
  LOWBIT_SKIP_WITHOUT_GPU();
  Tensor a = make_input({9, 5}, DType::i32, -9, 9, 7);
  Tensor b = make_input({5}, DType::bf16, -3, 3, 8, 0.25);
  Tensor c = make_input({9, 1}, DType::f16, -3, 3, 9, 0.25);
  expect_parity(add(gpu(a), gpu(b)), add(a, b), kExact);
  expect_parity(mul(gpu(b), gpu(c)), mul(b, c), kExact);
  expect_parity(div(gpu(a), gpu(a) + 100.0), div(a, a + 100.0), kExact);
  expect_parity(lt(gpu(a), gpu(c)), lt(a, c), kExact);
}

TEST(BinaryMiscParityGpu, OperatorsAndInPlace) {
  LOWBIT_SKIP_WITHOUT_GPU();
  Tensor a = make_input({17, 3}, DType::f32, -2, 2, 11);
  Tensor b = make_input({3}, DType::f32, -2, 2, 12);
  Tensor ga = gpu(a), gb = gpu(b);
  expect_parity(ga + gb * 2.0 - 1.0, a + b * 2.0 - 1.0, kExact);
  expect_parity(3.0 - ga / gb, 3.0 - a / b, kExact);
  expect_parity(-ga, -a, kExact);
  Tensor acc_cpu = a.clone(), acc_gpu = ga.clone();
  add_(acc_cpu, b, 0.5);
  add_(acc_gpu, gb, 0.5);
  mul_(acc_cpu, 3.0);
  mul_(acc_gpu, 3.0);
  expect_parity(acc_gpu, acc_cpu, kExact);
}

TEST(BinaryMiscParityGpu, NanPropagatesThroughMaximumAndMinimum) {
  LOWBIT_SKIP_WITHOUT_GPU();
  Tensor a = tensor_of({1.0, NAN, 3.0, NAN}, {4});
  Tensor b = tensor_of({NAN, 2.0, 1.0, NAN}, {4});
  expect_parity(maximum(gpu(a), gpu(b)), maximum(a, b), kExact);
  expect_parity(minimum(gpu(a), gpu(b)), minimum(a, b), kExact);
  expect_parity(eq(gpu(a), gpu(b)), eq(a, b), kExact);
  expect_parity(ne(gpu(a), gpu(b)), ne(a, b), kExact);
}

// ------------------------------------------------------------------------------------ where

class WhereParityGpu : public ::testing::TestWithParam<DType> {};

TEST_P(WhereParityGpu, MatchesCpu) {
  LOWBIT_SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  Tensor cond = make_input({33, 31}, DType::u8, 0, 1, 21);
  Tensor a = make_input({33, 31}, t, 0, 50, 22, 0.5);
  Tensor b = make_input({33, 31}, t, 0, 50, 23, 0.5);
  expect_parity(where(gpu(cond), gpu(a), gpu(b)), where(cond, a, b), kExact);
  // Strided operands and a broadcast condition.
  Tensor c1 = make_input({33, 1}, DType::u8, 0, 1, 24);
  expect_parity(where(gpu(c1), non_contiguous_copy(gpu(a)), gpu(b).slice(0, 0, 1)),
                where(c1, non_contiguous_copy(a), b.slice(0, 0, 1)), kExact);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, WhereParityGpu, ::testing::ValuesIn(kAllDtypes),
                         [](const ::testing::TestParamInfo<DType>& param_info) {
                           return dtype_tag(param_info.param);
                         });

// ------------------------------------------------------------------------- copy, cast, fill

struct CastPair {
  DType from, to;
};

std::vector<CastPair> cast_params() {
  std::vector<CastPair> v;
  for (DType a : kAllDtypes) {
    for (DType b : kAllDtypes) v.push_back({a, b});
  }
  return v;
}

class CastParityGpu : public ::testing::TestWithParam<CastPair> {};

TEST_P(CastParityGpu, MatchesCpu) {
  LOWBIT_SKIP_WITHOUT_GPU();
  const CastPair p = GetParam();
  // [0, 100] with quarter steps: representable or rounded identically everywhere, and in range
  // for u8 and i8 (out-of-range float-to-int conversion is undefined in C++).
  Tensor x = make_input({33, 31}, p.from, 0, 100, 31, 0.25);
  expect_parity(cast(gpu(x), p.to), cast(x, p.to), kExact);
  expect_parity(gpu(non_contiguous_copy(x)).to(p.to), non_contiguous_copy(x).to(p.to), kExact);
  expect_parity(non_contiguous_copy(gpu(x)).to(p.to), non_contiguous_copy(x).to(p.to), kExact);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CastParityGpu, ::testing::ValuesIn(cast_params()),
                         [](const ::testing::TestParamInfo<CastPair>& param_info) {
                           return dtype_tag(param_info.param.from) + "_to_" +
                                  dtype_tag(param_info.param.to);
                         });

TEST(CopyParityGpu, RoundTripsEveryDtypeBitExactly) {
  LOWBIT_SKIP_WITHOUT_GPU();
  for (DType t : kAllDtypes) {
    SCOPED_TRACE(dtype_name(t));
    Tensor x = make_input({1023}, t, 0, 100, 41);
    Tensor back = gpu(x).to(Device::cpu());
    EXPECT_TENSOR_NEAR(back, x, 0.0, 0.0);
    // A strided CPU tensor to the GPU and back, and a strided GPU view back to the CPU.
    Tensor y = make_input({33, 31}, t, 0, 100, 42);
    EXPECT_TENSOR_NEAR(gpu(non_contiguous_copy(y)).to(Device::cpu()), y, 0.0, 0.0);
    EXPECT_TENSOR_NEAR(non_contiguous_copy(gpu(y)).to(Device::cpu()), y, 0.0, 0.0);
  }
}

TEST(CopyParityGpu, CopyIntoStridedAndBroadcast) {
  LOWBIT_SKIP_WITHOUT_GPU();
  for (DType t : {DType::f32, DType::bf16, DType::i64, DType::u8}) {
    SCOPED_TRACE(dtype_name(t));
    Tensor src = make_input({1, 31}, DType::f64, 0, 50, 43, 0.5);
    Tensor dst_cpu = zeros({31, 33}, t).transpose(0, 1);
    Tensor dst_gpu = zeros({31, 33}, TensorOptions(t, Device::cuda())).transpose(0, 1);
    dst_cpu.copy_(src);
    dst_gpu.copy_(gpu(src));  // broadcast, cast and strided destination at once
    expect_parity(dst_gpu, dst_cpu, kExact);
    Tensor from_cpu = zeros({33, 31}, TensorOptions(t, Device::cuda()));
    from_cpu.copy_(src);  // across devices, broadcast and cast
    expect_parity(from_cpu, dst_cpu.contiguous(), kExact);
    expect_parity(gpu(dst_cpu).clone(), dst_cpu.clone(), kExact);
    expect_parity(dst_gpu.contiguous(), dst_cpu.contiguous(), kExact);
  }
}

TEST(FillParityGpu, FullZerosOnesAndStridedFill) {
  LOWBIT_SKIP_WITHOUT_GPU();
  for (DType t : kAllDtypes) {
    SCOPED_TRACE(dtype_name(t));
    const TensorOptions cpu_o(t), gpu_o(t, Device::cuda());
    expect_parity(full({7, 3}, 3.75, gpu_o), full({7, 3}, 3.75, cpu_o), kExact);
    expect_parity(zeros({1023}, gpu_o), zeros({1023}, cpu_o), kExact);
    expect_parity(ones({1}, gpu_o), ones({1}, cpu_o), kExact);
    Tensor c = zeros({8, 10}, cpu_o), g = zeros({8, 10}, gpu_o);
    c.slice(1, 1, 10, 3).fill_(-2.0 * is_floating(t) + 5.0);
    g.slice(1, 1, 10, 3).fill_(-2.0 * is_floating(t) + 5.0);
    expect_parity(g, c, kExact);
    c.transpose(0, 1).fill_(0.0);
    g.transpose(0, 1).fill_(0.0);
    expect_parity(g, c, kExact);
  }
  expect_parity(arange(0.0, 100.0, 0.5, TensorOptions(DType::f32, Device::cuda())),
                arange(0.0, 100.0, 0.5, DType::f32), kExact);
}

// ------------------------------------------------------------------------------- reductions

struct ReduceShape {
  const char* name;
  Shape shape;
  std::vector<int64_t> dims;
  bool keepdim;
};

std::vector<ReduceShape> reduce_shapes() {
  return {
      {"all_n1", {1}, {}, false},
      {"all_n7", {7}, {}, false},
      {"all_n1023", {1023}, {}, false},
      {"rows_33x31", {33, 31}, {1}, false},
      {"cols_33x31", {33, 31}, {0}, true},
      {"long_rows_4x5000", {4, 5000}, {1}, false},    // one block per row
      {"short_rows_3000x3", {3000, 3}, {-1}, false},  // one thread per row
      {"middle_4x9x5", {4, 9, 5}, {1}, true},
      {"two_dims_4x9x5", {4, 9, 5}, {0, 2}, false},
  };
}

class ReduceParityGpu : public ::testing::TestWithParam<DType> {};

TEST_P(ReduceParityGpu, SumMeanVar) {
  LOWBIT_SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  uint32_t seed = 200;
  for (const ReduceShape& r : reduce_shapes()) {
    SCOPED_TRACE(r.name);
    Tensor x = make_input(r.shape, t, -3, 3, seed++);
    Tensor g = gpu(x);
    expect_parity(sum(g, r.dims, r.keepdim), sum(x, r.dims, r.keepdim), tol_sum(t));
    if (is_floating(t)) {
      expect_parity(mean(g, r.dims, r.keepdim), mean(x, r.dims, r.keepdim), tol_sum(t));
      if (numel_of(r.shape) > 1) {
        // var is several ops (mean, subtract, square, sum): tolerance of a sum, doubled.
        Tol tv = tol_sum(t);
        tv.rtol *= 2;
        tv.atol *= 2;
        expect_parity(var(g, r.dims, true, r.keepdim), var(x, r.dims, true, r.keepdim), tv);
      }
    }
  }
  // Strided input (the reduction makes it contiguous first).
  Tensor y = make_input({33, 31}, t, 0, 3, seed++);
  expect_parity(sum(non_contiguous_copy(gpu(y)), {0}), sum(non_contiguous_copy(y), {0}),
                tol_sum(t));
}

TEST_P(ReduceParityGpu, MaxMinArgmaxArgminExactWithTies) {
  LOWBIT_SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  uint32_t seed = 300;
  for (const ReduceShape& r : reduce_shapes()) {
    SCOPED_TRACE(r.name);
    // Few distinct values: many ties, so the first-index rule is exercised.
    Tensor x = make_input(r.shape, t, 0, 6, seed++, 1.0);
    Tensor g = gpu(x);
    expect_parity(amax(g, r.dims, r.keepdim), amax(x, r.dims, r.keepdim), kExact);
    expect_parity(amin(g, r.dims, r.keepdim), amin(x, r.dims, r.keepdim), kExact);
    const int64_t dim = r.dims.empty() ? 0 : r.dims[0];
    expect_parity(argmax(g, dim, r.keepdim), argmax(x, dim, r.keepdim), kExact);
    expect_parity(argmin(g, dim, r.keepdim), argmin(x, dim, r.keepdim), kExact);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ReduceParityGpu, ::testing::ValuesIn(kAllDtypes),
                         [](const ::testing::TestParamInfo<DType>& param_info) {
                           return dtype_tag(param_info.param);
                         });

TEST(ReduceMiscParityGpu, NanPropagatesAndWinsArgmax) {
  LOWBIT_SKIP_WITHOUT_GPU();
  for (int64_t r : {5, 3000}) {  // thread-per-row and block-per-row paths
    SCOPED_TRACE(r);
    std::vector<double> v(size_t(2 * r));
    for (size_t i = 0; i < v.size(); ++i) v[i] = double(i % 17);
    v[size_t(r / 2)] = NAN;
    v[size_t(r - 1)] = NAN;  // two NaNs in row 0: the first one wins
    Tensor x = tensor_of(v, {2, r});
    Tensor g = gpu(x);
    expect_parity(amax(g, {1}), amax(x, {1}), kExact);
    expect_parity(amin(g, {1}), amin(x, {1}), kExact);
    expect_parity(argmax(g, 1), argmax(x, 1), kExact);
    expect_parity(argmin(g, 1), argmin(x, 1), kExact);
    expect_parity(sum(g, {1}), sum(x, {1}), tol_sum(DType::f32));
  }
}

// ----------------------------------------------------------------------------------- matmul

struct GemmShape {
  int64_t m, k, n;
};
const GemmShape kGemmShapes[] = {{1, 1, 1}, {7, 13, 5}, {64, 96, 33}, {1, 200, 3}};

// GEMM results differ by summation order; f32 sums k products with |x| < 1: k * eps relative.
Tol tol_gemm(DType t, int64_t k) {
  switch (t) {
    case DType::f32:
      return {1e-5, 2e-6 * double(k)};
    case DType::f64:
      return {1e-12, 1e-13 * double(k)};
    // CPU: f32 math rounded once to 16 bits; cuBLAS: f32 accumulate, rounded once: 1 ulp apart.
    case DType::bf16:
      return {1e-2, 1e-2};
    case DType::f16:
      return {2e-3, 2e-3};
    default:
      return kExact;
  }
}

class MatmulParityGpu : public ::testing::TestWithParam<DType> {};

TEST_P(MatmulParityGpu, AllTransposesAndShapes) {
  LOWBIT_SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  ASSERT_FALSE(allow_tf32()) << "TF32 is off by default";
  uint32_t seed = 400;
  for (const GemmShape& s : kGemmShapes) {
    for (int ta = 0; ta < 2; ++ta) {
      for (int tb = 0; tb < 2; ++tb) {
        SCOPED_TRACE(::testing::Message()
                     << s.m << "x" << s.k << "x" << s.n << " ta " << ta << " tb " << tb);
        Tensor a = make_input(ta ? Shape{s.k, s.m} : Shape{s.m, s.k}, t, -1, 1, seed++);
        Tensor b = make_input(tb ? Shape{s.n, s.k} : Shape{s.k, s.n}, t, -1, 1, seed++);
        expect_parity(matmul(gpu(a), gpu(b), ta, tb), matmul(a, b, ta, tb), tol_gemm(t, s.k));
      }
    }
  }
  // Operands that are transposed views (cuBLAS gets them as flagged transposes).
  Tensor a = make_input({40, 24}, t, -1, 1, seed++);
  Tensor b = make_input({16, 40}, t, -1, 1, seed++);
  expect_parity(matmul(gpu(a).t(), gpu(b).t()), matmul(a.t(), b.t()), tol_gemm(t, 40));
  expect_parity(matmul(non_contiguous_copy(gpu(a)), non_contiguous_copy(gpu(b)), true, true),
                matmul(non_contiguous_copy(a), non_contiguous_copy(b), true, true),
                tol_gemm(t, 40));
}

TEST_P(MatmulParityGpu, BmmAndAddmm) {
  LOWBIT_SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  Tensor a = make_input({3, 17, 9}, t, -1, 1, 501);
  Tensor b = make_input({3, 9, 11}, t, -1, 1, 502);
  expect_parity(bmm(gpu(a), gpu(b)), bmm(a, b), tol_gemm(t, 9));
  Tensor bt = make_input({3, 11, 9}, t, -1, 1, 503);
  expect_parity(bmm(gpu(a), gpu(bt), false, true), bmm(a, bt, false, true), tol_gemm(t, 9));
  Tensor x = make_input({17, 9}, t, -1, 1, 504);
  Tensor w = make_input({11, 9}, t, -1, 1, 505);
  Tensor c = make_input({11}, t, -1, 1, 506);  // broadcasts over rows, as a Linear bias
  expect_parity(addmm(gpu(c), gpu(x), gpu(w), 0.5, 2.0, false, true),
                addmm(c, x, w, 0.5, 2.0, false, true), tol_gemm(t, 9));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, MatmulParityGpu, ::testing::ValuesIn(kFloatDtypes),
                         [](const ::testing::TestParamInfo<DType>& param_info) {
                           return dtype_tag(param_info.param);
                         });

TEST(MatmulMiscParityGpu, Tf32IsCloseButOptIn) {
  LOWBIT_SKIP_WITHOUT_GPU();
  Tensor a = make_input({64, 256}, DType::f32, -1, 1, 601);
  Tensor b = make_input({256, 48}, DType::f32, -1, 1, 602);
  const Tensor expect = matmul(a, b);
  set_allow_tf32(true);
  Tensor got = matmul(gpu(a), gpu(b));
  set_allow_tf32(false);
  // TF32 keeps 10 mantissa bits per input: ~1e-3 relative per product, sqrt(k)-ish growth.
  expect_parity(got, expect, {1e-2, 5e-2});
}

TEST(MatmulMiscParityGpu, EmptyInnerDimension) {
  LOWBIT_SKIP_WITHOUT_GPU();
  Tensor a = zeros({4, 0}), b = zeros({0, 3});
  expect_parity(matmul(gpu(a), gpu(b)), matmul(a, b), kExact);
  Tensor c = make_input({4, 3}, DType::f32, -1, 1, 603);
  expect_parity(addmm(gpu(c), gpu(a), gpu(b), 0.5), addmm(c, a, b, 0.5), kExact);
}

// ---------------------------------------------------------------------------------- softmax

// Softmax accumulates in float (double for f64) in a different order: a few float ulps.
Tol tol_softmax(DType t) {
  switch (t) {
    case DType::f32:
      return {1e-5, 1e-6};
    case DType::f64:
      return {1e-12, 1e-14};
    case DType::bf16:
      return {1e-2, 1e-3};
    case DType::f16:
      return {2e-3, 1e-4};
    default:
      return kExact;
  }
}

class SoftmaxParityGpu : public ::testing::TestWithParam<DType> {};

TEST_P(SoftmaxParityGpu, ForwardShapesAndDims) {
  LOWBIT_SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  const Tol tol = tol_softmax(t);
  struct Case {
    Shape shape;
    int64_t dim;
  };
  const Case cases[] = {{{1}, 0},      {{7}, 0},       {{1023}, -1},    {{33, 31}, -1},
                        {{33, 31}, 0}, {{4, 5000}, 1}, {{1000, 10}, 1}, {{4, 9, 5}, 1}};
  uint32_t seed = 700;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << shape_str(c.shape) << " dim " << c.dim);
    Tensor x = make_input(c.shape, t, -4, 4, seed++);
    expect_parity(softmax(gpu(x), c.dim), softmax(x, c.dim), tol);
    expect_parity(log_softmax(gpu(x), c.dim), log_softmax(x, c.dim), tol);
  }
  Tensor y = make_input({33, 31}, t, -4, 4, seed++);
  expect_parity(softmax(non_contiguous_copy(gpu(y)), -1), softmax(non_contiguous_copy(y), -1), tol);
}

TEST_P(SoftmaxParityGpu, Backward) {
  LOWBIT_SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  Tol tol = tol_softmax(t);
  tol.atol = std::max(tol.atol, tol.rtol * 0.1);  // gradients near 0 cancel: absolute slack
  for (bool use_log : {false, true}) {
    for (int64_t r : {10, 3000}) {
      SCOPED_TRACE(::testing::Message() << (use_log ? "log_softmax" : "softmax") << " R " << r);
      Tensor x = make_input({6, r}, t, -3, 3, uint32_t(800 + r));
      Tensor w = make_input({6, r}, t, -1, 1, uint32_t(900 + r));
      auto grad_on = [&](Device d) {
        Tensor xd = x.to(d).detach().requires_grad_();
        Tensor y = use_log ? log_softmax(xd, -1) : softmax(xd, -1);
        (y * w.to(d)).sum().backward();
        return xd.grad();
      };
      expect_parity(grad_on(Device::cuda()), grad_on(Device::cpu()), tol);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, SoftmaxParityGpu, ::testing::ValuesIn(kFloatDtypes),
                         [](const ::testing::TestParamInfo<DType>& param_info) {
                           return dtype_tag(param_info.param);
                         });

// --------------------------------------------------------------------------------- indexing

class IndexParityGpu : public ::testing::TestWithParam<DType> {};

TEST_P(IndexParityGpu, GatherIndexSelectScatterAdd) {
  LOWBIT_SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  for (DType it : {DType::i32, DType::i64}) {
    SCOPED_TRACE(dtype_name(it));
    Tensor x = make_input({6, 9, 5}, t, 0, 20, 1001);
    // gather along each dim: index has x's shape except along dim.
    Tensor i0 = make_input({4, 9, 5}, it, 0, 5, 1002);
    Tensor i1 = make_input({6, 12, 5}, it, 0, 8, 1003);
    Tensor i2 = make_input({6, 9, 2}, it, 0, 4, 1004);
    expect_parity(gather(gpu(x), 0, gpu(i0)), gather(x, 0, i0), kExact);
    expect_parity(gather(gpu(x), 1, gpu(i1)), gather(x, 1, i1), kExact);
    expect_parity(gather(gpu(x), -1, gpu(i2)), gather(x, -1, i2), kExact);

    Tensor sel = make_input({7}, it, 0, 8, 1005);
    expect_parity(index_select(gpu(x), 1, gpu(sel)), index_select(x, 1, sel), kExact);
    expect_parity(index_select(gpu(x), 0, gpu(sel) * 0 + 5), index_select(x, 0, sel * 0 + 5),
                  kExact);

    // scatter_add adds in the same order on both backends (one thread per column): exact even
    // for floats, with repeated indices.
    Tensor self = make_input({6, 9, 5}, t, 0, 10, 1006, 0.5);
    Tensor src = make_input({6, 30, 5}, t, 0, 3, 1007, 0.5);
    Tensor si = make_input({6, 30, 5}, it, 0, 8, 1008);
    expect_parity(scatter_add(gpu(self), 1, gpu(si), gpu(src)), scatter_add(self, 1, si, src),
                  kExact);
    Tensor src0 = make_input({20, 9, 5}, t, 0, 3, 1009, 0.5);
    Tensor si0 = make_input({20, 9, 5}, it, 0, 5, 1010);
    expect_parity(scatter_add(gpu(self), 0, gpu(si0), gpu(src0)), scatter_add(self, 0, si0, src0),
                  kExact);
  }
}

TEST_P(IndexParityGpu, OneHot) {
  LOWBIT_SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  for (DType it : {DType::i32, DType::i64}) {
    Tensor labels = make_input({1023}, it, 0, 9, 1101);
    expect_parity(one_hot(gpu(labels), 10, t), one_hot(labels, 10, t), kExact);
    Tensor grid = make_input({4, 7}, it, 0, 2, 1102);
    expect_parity(one_hot(gpu(grid), 3, t), one_hot(grid, 3, t), kExact);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, IndexParityGpu, ::testing::ValuesIn(kAllDtypes),
                         [](const ::testing::TestParamInfo<DType>& param_info) {
                           return dtype_tag(param_info.param);
                         });

// ----------------------------------------------------------------------------------- random

TEST(RandomParityGpu, SameSeedSameStreamOnBothDevices) {
  LOWBIT_SKIP_WITHOUT_GPU();
  const TensorOptions gpu_f32(DType::f32, Device::cuda()), gpu_f64(DType::f64, Device::cuda());
  auto draw = [](const TensorOptions& f32, const TensorOptions& f64, const TensorOptions& i64) {
    manual_seed(1234);
    std::vector<Tensor> v;
    v.push_back(rand({1023}, f32));
    v.push_back(rand({7, 3}, f64));
    v.push_back(randn({1023}, f32));
    v.push_back(randn({513}, f64));
    v.push_back(randint(-5, 17, {1023}, i64));
    v.push_back(randint(0, 1000000, {64}, TensorOptions(DType::i32, i64.device)));
    v.push_back(rand({100}, TensorOptions(DType::bf16, f32.device)));
    return v;
  };
  std::vector<Tensor> c = draw(DType::f32, DType::f64, DType::i64);
  std::vector<Tensor> g = draw(gpu_f32, gpu_f64, TensorOptions(DType::i64, Device::cuda()));
  ASSERT_EQ(c.size(), g.size());
  // Uniforms and integers are exact arithmetic on Philox words (random_ops.cu disables FMA
  // contraction). Normals go through log and cos, whose CUDA and glibc results may differ in
  // the last double bit; rounded to f32 that is invisible but for a 1-ulp tie, hence 1e-6.
  expect_parity(g[0], c[0], kExact);
  expect_parity(g[1], c[1], kExact);
  expect_parity(g[2], c[2], {1e-6, 1e-7});
  expect_parity(g[3], c[3], {1e-14, 1e-15});
  expect_parity(g[4], c[4], kExact);
  expect_parity(g[5], c[5], kExact);
  expect_parity(g[6], c[6], kExact);
}

TEST(RandomParityGpu, SuccessiveDrawsDiffer) {
  LOWBIT_SKIP_WITHOUT_GPU();
  manual_seed(7);
  Tensor a = rand({256}, TensorOptions(DType::f32, Device::cuda()));
  Tensor b = rand({256}, TensorOptions(DType::f32, Device::cuda()));
  EXPECT_GT(amax(abs(a - b)).item(), 0.1);
  EXPECT_GE(amin(a).item(), 0.0);
  EXPECT_LT(amax(a).item(), 1.0);
}

// --------------------------------------------------------------------------------- autograd

// Gradients of a small network-like graph on both devices: matmul, bias broadcast, relu, tanh,
// sigmoid, log_softmax + gather (a cross-entropy), mean, var, maximum, where, clamp, exp, div.
std::vector<Tensor> composite_grads(Device d, const Tensor& x0, const Tensor& w0, const Tensor& b0,
                                    const Tensor& labels0) {
  Tensor x = x0.to(d).detach().requires_grad_();
  Tensor w = w0.to(d).detach().requires_grad_();
  Tensor b = b0.to(d).detach().requires_grad_();
  Tensor labels = labels0.to(d);
  Tensor h = relu(matmul(x, w) + b);
  Tensor z = tanh(h) * 0.5 + sigmoid(h - 1.0) + clamp(h, 0.1, 2.0);
  z = maximum(z, exp(-h)) / (1.0 + square(h).mean({1}, true));
  Tensor logp = log_softmax(z, -1);
  Tensor nll = neg(gather(logp, 1, labels.unsqueeze(1))).mean();
  Tensor reg = var(w, {0}).sum() * 0.1 + where(gt(b, zeros_like(b)), b, b * 0.01).sum() * 0.01;
  Tensor loss = nll + reg;
  loss.backward();
  return {loss.detach(), x.grad(), w.grad(), b.grad()};
}

TEST(AutogradParityGpu, CompositeGraphGradients) {
  LOWBIT_SKIP_WITHOUT_GPU();
  for (DType t : {DType::f32, DType::f64}) {
    SCOPED_TRACE(dtype_name(t));
    Tensor x = make_input({16, 12}, t, -1, 1, 1201);
    Tensor w = make_input({12, 10}, t, -1, 1, 1202);
    Tensor b = make_input({10}, t, -0.5, 0.5, 1203);
    Tensor labels = make_input({16}, DType::i64, 0, 9, 1204);
    std::vector<Tensor> c = composite_grads(Device::cpu(), x, w, b, labels);
    std::vector<Tensor> g = composite_grads(Device::cuda(), x, w, b, labels);
    const Tol tol = t == DType::f32 ? Tol{1e-4, 1e-5} : Tol{1e-10, 1e-12};
    for (size_t i = 0; i < c.size(); ++i) {
      SCOPED_TRACE(i == 0 ? "loss" : i == 1 ? "dx" : i == 2 ? "dw" : "db");
      expect_parity(g[i], c[i], tol);
    }
  }
}

TEST(AutogradParityGpu, ScatterIndexSelectAndBroadcastGradients) {
  LOWBIT_SKIP_WITHOUT_GPU();
  Tensor x0 = make_input({5, 8}, DType::f32, -2, 2, 1301);
  Tensor s0 = make_input({5, 3}, DType::f32, -2, 2, 1302);
  Tensor idx = make_input({5, 3}, DType::i64, 0, 7, 1303);
  Tensor sel = make_input({6}, DType::i64, 0, 4, 1304);
  auto grads = [&](Device d) {
    Tensor x = x0.to(d).detach().requires_grad_();
    Tensor s = s0.to(d).detach().requires_grad_();
    Tensor y = scatter_add(x, 1, idx.to(d), s);
    Tensor z = index_select(y, 0, sel.to(d)) * x.sum({0}, true);
    (z * z).sum().backward();
    return std::vector<Tensor>{x.grad(), s.grad()};
  };
  std::vector<Tensor> c = grads(Device::cpu()), g = grads(Device::cuda());
  expect_parity(g[0], c[0], {1e-5, 1e-5});
  expect_parity(g[1], c[1], {1e-5, 1e-5});
}

}  // namespace
}  // namespace lowbit
