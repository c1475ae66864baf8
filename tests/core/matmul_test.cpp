// matmul, bmm and addmm against the naive triple loop of tests/reference/matmul_ref.h: every
// transpose combination, odd sizes (1, 7, 33), operands in every layout BLAS can take directly
// (transposed views, rows sliced with a step, offsets) and those it cannot (columns sliced with a
// step), f32, f64 and bf16/f16 (computed in f32 on the CPU), addmm's beta/alpha with a broadcast
// bias, and the error messages.
#include <gmock/gmock.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/ops.h"
#include "core/random.h"
#include "tests/common/test_util.h"
#include "tests/core/core_test_helpers.h"
#include "tests/reference/matmul_ref.h"

namespace lowbit::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

// Unit roundoff of the arithmetic a dtype's GEMM runs in (16-bit floats compute in f32).
double compute_eps(DType dt) {
  return dt == DType::f64 ? std::ldexp(1.0, -53) : std::ldexp(1.0, -24);
}

// The textbook bound of a dot product of length k, |error| <= k u sum|a||b| (as atol, from the
// largest sum|a||b|), plus one rounding of the result to the output dtype (as rtol).
Tolerance gemm_tolerance(DType dt, int64_t k, const ref::Array& abs_product) {
  double scale = 0;
  for (double v : abs_product.data) scale = std::max(scale, v);
  const double rtol = dt == DType::f64 ? 0.0 : rounding_tolerance(dt).rtol;
  return {rtol, 2.0 * double(std::max<int64_t>(k, 1)) * compute_eps(dt) * scale + 1e-300};
}

// Operand layouts for matrices: those of core_test_helpers.h plus rows taken with a step.
enum class MatLayout { contiguous, transposed, row_step, col_step, offset };
const MatLayout kMatLayouts[] = {MatLayout::contiguous, MatLayout::transposed, MatLayout::row_step,
                                 MatLayout::col_step, MatLayout::offset};

const char* mat_layout_name(MatLayout l) {
  switch (l) {
    case MatLayout::contiguous:
      return "contiguous";
    case MatLayout::transposed:
      return "transposed view";
    case MatLayout::row_step:
      return "rows with step 2";
    case MatLayout::col_step:
      return "columns with step 2";
    case MatLayout::offset:
      return "offset";
  }
  return "?";
}

Tensor make_matrix(const ref::Array& v, DType dt, MatLayout l) {
  switch (l) {
    case MatLayout::contiguous:
      return make_layout(v, dt, Layout::contiguous);
    case MatLayout::transposed:
      return make_layout(v, dt, Layout::transposed);
    case MatLayout::col_step:
      return make_layout(v, dt, Layout::strided);
    case MatLayout::offset:
      return make_layout(v, dt, Layout::offset);
    case MatLayout::row_step: {
      // Rows 0, 2, 4, ... of a (2r, c) buffer whose odd rows are NaN.
      const int64_t r = v.shape[0], c = v.shape[1];
      ref::Array base = ref::Array::filled({2 * r, c}, NAN);
      for (int64_t i = 0; i < r; ++i) {
        for (int64_t j = 0; j < c; ++j) base.at({2 * i, j}) = v.at({i, j});
      }
      return from_ref(base, dt).slice(0, 0, 2 * r, 2);
    }
  }
  return Tensor();
}

struct Mnk {
  int64_t m, n, k;
};
const std::vector<Mnk> kSizes = {{1, 1, 1},  {1, 33, 7},   {7, 1, 33}, {33, 7, 7},
                                 {7, 33, 1}, {33, 33, 33}, {7, 7, 7}};

// Stored shape of an operand: (rows, cols), swapped when the op transposes it.
ref::Dims stored(int64_t rows, int64_t cols, bool trans) {
  return trans ? ref::Dims{cols, rows} : ref::Dims{rows, cols};
}

class Matmul : public ::testing::TestWithParam<std::tuple<bool, bool, DType>> {};

TEST_P(Matmul, MatchesTripleLoopForEverySizeAndLayout) {
  const auto [ta, tb, dt] = GetParam();
  manual_seed(201);
  for (const auto& s : kSizes) {
    ref::Array av = uniform_ref(stored(s.m, s.k, ta), -1, 1);
    ref::Array bv = uniform_ref(stored(s.k, s.n, tb), -1, 1);
    ref::Array a_in = to_ref(from_ref(av, dt)), b_in = to_ref(from_ref(bv, dt));
    ref::Array want = ref::matmul(a_in, b_in, ta, tb);
    const Tolerance tol = gemm_tolerance(dt, s.k, ref::matmul_abs(a_in, b_in, ta, tb));
    for (MatLayout la : kMatLayouts) {
      for (MatLayout lb : {MatLayout::contiguous, MatLayout::transposed, MatLayout::row_step,
                           MatLayout::col_step}) {
        if (la != MatLayout::contiguous && lb != MatLayout::contiguous && la != lb) continue;
        SCOPED_TRACE(str_cat("m ", s.m, " n ", s.n, " k ", s.k, ", a ", mat_layout_name(la), ", b ",
                             mat_layout_name(lb)));
        Tensor y = matmul(make_matrix(av, dt, la), make_matrix(bv, dt, lb), ta, tb);
        EXPECT_EQ(y.dtype(), dt);
        EXPECT_EQ(y.shape(), (Shape{s.m, s.n}));
        EXPECT_TENSOR_NEAR(y, from_ref(want, DType::f64), tol.rtol, tol.atol);
      }
    }
  }
}

TEST_P(Matmul, BmmMatchesTripleLoopPerBatch) {
  const auto [ta, tb, dt] = GetParam();
  manual_seed(202);
  const int64_t batch = 3;
  for (const auto& s : kSizes) {
    ref::Dims as = stored(s.m, s.k, ta), bs = stored(s.k, s.n, tb);
    ref::Array av = uniform_ref({batch, as[0], as[1]}, -1, 1);
    ref::Array bv = uniform_ref({batch, bs[0], bs[1]}, -1, 1);
    ref::Array a_in = to_ref(from_ref(av, dt)), b_in = to_ref(from_ref(bv, dt));
    ref::Array want = ref::bmm(a_in, b_in, ta, tb);
    ref::Array abs_want = ref::bmm(ref::unary(a_in, [](double x) { return std::fabs(x); }),
                                   ref::unary(b_in, [](double x) { return std::fabs(x); }), ta, tb);
    const Tolerance tol = gemm_tolerance(dt, s.k, abs_want);
    // Batch-major contiguous; transposed matrices; every matrix stored transposed with the batch
    // in the middle of the storage (permuted); columns with a step (copied before BLAS).
    for (Layout la : {Layout::contiguous, Layout::transposed, Layout::permuted, Layout::strided}) {
      SCOPED_TRACE(str_cat("m ", s.m, " n ", s.n, " k ", s.k, ", a ", layout_name(la)));
      Tensor a = make_layout(av, dt, la);
      Tensor b =
          make_layout(bv, dt, la == Layout::contiguous ? Layout::transposed : Layout::contiguous);
      Tensor y = bmm(a, b, ta, tb);
      EXPECT_EQ(y.dtype(), dt);
      EXPECT_EQ(y.shape(), (Shape{batch, s.m, s.n}));
      EXPECT_TENSOR_NEAR(y, from_ref(want, DType::f64), tol.rtol, tol.atol);
    }
  }
  // One matrix shared by every batch (batch stride 0).
  ref::Array av = uniform_ref(stored(7, 5, ta), -1, 1);
  ref::Array bv = uniform_ref({batch, tb ? 4 : 5, tb ? 5 : 4}, -1, 1);
  Tensor a = from_ref(av, dt).unsqueeze(0).expand({batch, av.shape[0], av.shape[1]});
  Tensor y = bmm(a, from_ref(bv, dt), ta, tb);
  ref::Array a_in = to_ref(a), b_in = to_ref(from_ref(bv, dt));
  EXPECT_TENSOR_NEAR(y, from_ref(ref::bmm(a_in, b_in, ta, tb), DType::f64),
                     rounding_tolerance(dt).rtol, 1e-5);
}

TEST_P(Matmul, AddmmBetaAlphaAndBroadcastBias) {
  const auto [ta, tb, dt] = GetParam();
  manual_seed(203);
  const int64_t m = 7, n = 33, k = 5;
  ref::Array av = uniform_ref(stored(m, k, ta), -1, 1), bv = uniform_ref(stored(k, n, tb), -1, 1);
  ref::Array a_in = to_ref(from_ref(av, dt)), b_in = to_ref(from_ref(bv, dt));
  const ref::Dims bias_shapes[] = {{m, n}, {n}, {1, n}, {m, 1}, {}};
  const double betas[] = {1.0, 0.5, 0.0, -2.0};
  const double alphas[] = {1.0, -1.5, 0.25};
  for (const auto& cs : bias_shapes) {
    ref::Array cv = uniform_ref(cs, -1, 1);
    ref::Array c_in = to_ref(from_ref(cv, dt));
    for (double beta : betas) {
      for (double alpha : alphas) {
        SCOPED_TRACE(str_cat("bias ", cs, ", beta ", beta, ", alpha ", alpha));
        Tensor y = addmm(from_ref(cv, dt), make_matrix(av, dt, MatLayout::transposed),
                         make_matrix(bv, dt, MatLayout::row_step), beta, alpha, ta, tb);
        EXPECT_EQ(y.dtype(), dt);
        EXPECT_EQ(y.shape(), (Shape{m, n}));
        ref::Array want = ref::addmm(c_in, a_in, b_in, beta, alpha, ta, tb);
        ref::Array scale = ref::addmm(ref::unary(c_in, [](double x) { return std::fabs(x); }),
                                      ref::unary(a_in, [](double x) { return std::fabs(x); }),
                                      ref::unary(b_in, [](double x) { return std::fabs(x); }),
                                      std::fabs(beta), std::fabs(alpha), ta, tb);
        const Tolerance tol = gemm_tolerance(dt, k + 1, scale);
        EXPECT_TENSOR_NEAR(y, from_ref(want, DType::f64), tol.rtol, tol.atol);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTransposes, Matmul,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool(),
                                            ::testing::Values(DType::f32, DType::f64, DType::bf16,
                                                              DType::f16)),
                         [](const auto& tp) {
                           return std::string(std::get<0>(tp.param) ? "At" : "A") + "_" +
                                  (std::get<1>(tp.param) ? "Bt" : "B") + "_" +
                                  dtype_name(std::get<2>(tp.param));
                         });

// beta = 0 ignores the bias entirely, NaN included (BLAS and PyTorch semantics).
TEST(Addmm, BetaZeroIgnoresNanBias) {
  Tensor c = full({2, 2}, NAN, TensorOptions(DType::f32));
  Tensor a = tensor_of({1, 2, 3, 4}, {2, 2}, DType::f32);
  Tensor y = addmm(c, a, a, 0.0, 1.0);
  EXPECT_TENSOR_NEAR(y, tensor_of({7, 10, 15, 22}, {2, 2}, DType::f64), 0, 0);
  // The caller's bias is not modified.
  EXPECT_TRUE(std::isnan(c.to_vector<double>()[0]));
}

TEST(Matmul, EmptyInnerDimGivesZerosAndEmptyOuterDimsGiveEmpty) {
  Tensor y = matmul(zeros({3, 0}), zeros({0, 4}));
  EXPECT_EQ(y.shape(), (Shape{3, 4}));
  EXPECT_TENSOR_NEAR(y, zeros({3, 4}), 0, 0);
  EXPECT_EQ(matmul(zeros({0, 5}), zeros({5, 2})).shape(), (Shape{0, 2}));
  Tensor z = addmm(tensor_of({1, 2}, {2}, DType::f32), zeros({3, 0}), zeros({0, 2}), 3.0, 1.0);
  EXPECT_TENSOR_NEAR(z, tensor_of({3, 6, 3, 6, 3, 6}, {3, 2}, DType::f64), 0, 0);
  EXPECT_EQ(bmm(zeros({0, 2, 3}), zeros({0, 3, 4})).shape(), (Shape{0, 2, 4}));
}

// Inputs are not modified and results do not alias them.
TEST(Matmul, LeavesInputsAlone) {
  manual_seed(204);
  ref::Array av = uniform_ref({4, 4}, -1, 1);
  Tensor a = from_ref(av, DType::f32);
  Tensor c = from_ref(av, DType::f32);
  Tensor y = addmm(c, a, a.t(), 2.0, 1.0);
  EXPECT_TENSOR_NEAR(a, from_ref(av, DType::f32), 0, 0);
  EXPECT_TENSOR_NEAR(c, from_ref(av, DType::f32), 0, 0);
  EXPECT_FALSE(y.storage() == c.storage());
}

TEST(Matmul, Tf32FlagRoundTrips) {
  EXPECT_FALSE(allow_tf32());
  set_allow_tf32(true);
  EXPECT_TRUE(allow_tf32());
  set_allow_tf32(false);
  EXPECT_FALSE(allow_tf32());
}

TEST(MatmulErrors, InnerDimMismatchNamesBothShapes) {
  EXPECT_THAT(error_message([] {
                matmul(zeros({2, 3}), zeros({4, 5}));
              }),
              AllOf(HasSubstr("matmul"), HasSubstr("[2, 3]"), HasSubstr("[4, 5]")));
  EXPECT_THAT(error_message([] {
                matmul(zeros({2, 3}), zeros({3, 5}), true, false);
              }),
              AllOf(HasSubstr("[2, 3]"), HasSubstr("[3, 5]")));
  EXPECT_THAT(error_message([] {
                bmm(zeros({2, 3, 4}), zeros({2, 5, 6}));
              }),
              AllOf(HasSubstr("bmm"), HasSubstr("[2, 3, 4]"), HasSubstr("[2, 5, 6]")));
  EXPECT_THAT(error_message([] {
                bmm(zeros({2, 3, 4}), zeros({3, 4, 6}));
              }),
              AllOf(HasSubstr("batch"), HasSubstr("[2, 3, 4]"), HasSubstr("[3, 4, 6]")));
  EXPECT_THAT(error_message([] {
                addmm(zeros({2, 2}), zeros({2, 3}), zeros({2, 2}));
              }),
              AllOf(HasSubstr("addmm"), HasSubstr("[2, 3]"), HasSubstr("[2, 2]")));
}

TEST(MatmulErrors, BadRanksAndBiasShapesNameTheShapes) {
  EXPECT_THAT(error_message([] {
                matmul(zeros({2, 3, 4}), zeros({4, 5}));
              }),
              AllOf(HasSubstr("matmul"), HasSubstr("[2, 3, 4]")));
  EXPECT_THAT(error_message([] {
                bmm(zeros({3, 4}), zeros({4, 5}));
              }),
              AllOf(HasSubstr("bmm"), HasSubstr("[3, 4]")));
  EXPECT_THAT(error_message([] {
                addmm(zeros({3}), zeros({2, 2}), zeros({2, 4}));
              }),
              AllOf(HasSubstr("addmm"), HasSubstr("[3]"), HasSubstr("[2, 4]")));
}

TEST(MatmulErrors, AddmmNamesItsOperands) {
  EXPECT_THAT(error_message([] {
                addmm(zeros({2, 4}), zeros({2, 3, 1}), zeros({3, 4}));
              }),
              HasSubstr("addmm: wants 2-D a and b, got [2, 3, 1] and [3, 4]"));
  EXPECT_THAT(error_message([] {
                addmm(zeros({2, 4}), zeros({2, 3}), Tensor());
              }),
              HasSubstr("addmm: wants 2-D a and b, got [2, 3] and undefined"));
  EXPECT_THAT(error_message([] {
                addmm(Tensor(), zeros({2, 3}), zeros({3, 4}));
              }),
              HasSubstr("addmm: the added tensor c is undefined"));
  EXPECT_THAT(error_message([] {
                bmm(zeros({2, 3, 4}), Tensor());
              }),
              HasSubstr("bmm: wants 3-D operands (B, M, K), got [2, 3, 4] and undefined"));
}

TEST(MatmulErrors, UnsupportedDTypesAreNamed) {
  for (DType dt : {DType::i32, DType::i64, DType::u8, DType::i8}) {
    EXPECT_THAT(error_message([dt] {
                  matmul(zeros({2, 2}, dt), zeros({2, 2}, dt));
                }),
                AllOf(HasSubstr("matmul"), HasSubstr(dtype_name(dt))));
    EXPECT_THAT(error_message([dt] {
                  bmm(zeros({1, 2, 2}, dt), zeros({1, 2, 2}, dt));
                }),
                AllOf(HasSubstr("bmm"), HasSubstr(dtype_name(dt))));
  }
  EXPECT_THAT(error_message([] {
                matmul(zeros({2, 2}), zeros({2, 2}, DType::f64));
              }),
              AllOf(HasSubstr("matmul"), HasSubstr("f32"), HasSubstr("f64")));
}

}  // namespace
}  // namespace lowbit::testing
