// Finite-difference checks (tests/common/gradcheck.h, central differences in f64) of the backward
// of every differentiable op in core/ops.h and of the differentiable Tensor views: unary ops
// (inputs kept inside their domains; abs, sign, relu and clamp with kink bands), binary ops with
// broadcasting (the gradient reduced to each input's shape), where, the reductions over several
// dim sets, matmul/bmm/addmm for every transpose flag, softmax/log_softmax on every dim,
// gather/scatter_add/index_select, and view/reshape/permute/transpose/slice/narrow/select/
// expand/squeeze/unsqueeze/flatten/contiguous/clone/to(dtype).
#include "tests/common/gradcheck.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/random.h"
#include "tests/common/test_util.h"
#include "tests/core/core_test_helpers.h"

namespace lowbit::testing {
namespace {

using Inputs = std::vector<Tensor>;

struct GradCase {
  std::string name;
  std::vector<ref::Dims> shapes;         // one per input
  std::function<double(double)> sample;  // u in [0, 1) -> input value
  GradFn f;
  GradcheckOptions opts;
};

double any_value(double u) { return -2.0 + 4.0 * u; }
double positive(double u) { return 0.2 + 2.8 * u; }
double away_from_zero(double u) {
  const double s = u < 0.5 ? -1.0 : 1.0;
  return s * (0.3 + 4.0 * std::fabs(u - 0.5));
}

GradcheckOptions kinks(std::vector<double> at) {
  GradcheckOptions o;
  o.kinks = std::move(at);
  o.kink_band = 1e-3;  // much wider than eps = 1e-6: no difference straddles a kink
  return o;
}

// Values on a grid the target dtype holds exactly, perturbed by exactly one grid step, so a cast
// loses nothing and the difference quotient of a linear op is exact. The analytic gradient,
// though, is the gradient of a tensor of dtype `dt` and is rounded to it (as PyTorch's): rtol is
// half an ulp of `dt`.
GradCase cast_case(const char* name, DType dt, double step) {
  GradcheckOptions o;
  o.eps = step;
  o.rtol = std::max(o.rtol, rounding_tolerance(dt).rtol);
  return {name,
          {{3, 4}},
          [step](double u) { return std::round((u * 8.0 - 4.0) / step) * step; },
          [dt](const Inputs& x) { return x[0].to(dt) * 2.0; },
          o};
}

std::vector<GradCase> unary_cases() {
  const ref::Dims s = {3, 4};
  return {
      {"neg", {s}, any_value, [](const Inputs& x) { return neg(x[0]); }, {}},
      {"abs", {s}, any_value, [](const Inputs& x) { return abs(x[0]); }, kinks({0})},
      {"sign", {s}, any_value, [](const Inputs& x) { return sign(x[0]) * x[0]; }, kinks({0})},
      {"exp", {s}, any_value, [](const Inputs& x) { return exp(x[0]); }, {}},
      {"log", {s}, positive, [](const Inputs& x) { return log(x[0]); }, {}},
      {"sqrt", {s}, positive, [](const Inputs& x) { return sqrt(x[0]); }, {}},
      {"rsqrt", {s}, positive, [](const Inputs& x) { return rsqrt(x[0]); }, {}},
      {"square", {s}, any_value, [](const Inputs& x) { return square(x[0]); }, {}},
      {"reciprocal", {s}, away_from_zero, [](const Inputs& x) { return reciprocal(x[0]); }, {}},
      {"relu", {s}, any_value, [](const Inputs& x) { return relu(x[0]); }, kinks({0})},
      {"sigmoid", {s}, any_value, [](const Inputs& x) { return sigmoid(x[0]); }, {}},
      {"tanh", {s}, any_value, [](const Inputs& x) { return tanh(x[0]); }, {}},
      {"pow_2_5", {s}, positive, [](const Inputs& x) { return pow(x[0], 2.5); }, {}},
      {"pow_3", {s}, any_value, [](const Inputs& x) { return pow(x[0], 3.0); }, {}},
      {"pow_neg_1_5", {s}, positive, [](const Inputs& x) { return pow(x[0], -1.5); }, {}},
      {"clamp",
       {s},
       any_value,
       [](const Inputs& x) { return clamp(x[0], -0.5, 0.75); },
       kinks({-0.5, 0.75})},
      {"add_scalar", {s}, any_value, [](const Inputs& x) { return add(x[0], 2.5); }, {}},
      {"mul_scalar", {s}, any_value, [](const Inputs& x) { return mul(x[0], -1.75); }, {}},
      {"scalar_operators",
       {s},
       away_from_zero,
       [](const Inputs& x) { return (2.5 - x[0]) / 4.0 + 3.0 * x[0] - 1.0; },
       {}},
      // x feeds two ops: both gradients accumulate.
      {"reused_input",
       {s},
       any_value,
       [](const Inputs& x) { return x[0] * x[0] + exp(x[0]) * tanh(x[0]); },
       {}},
  };
}

std::vector<GradCase> binary_cases() {
  const ref::Dims a = {3, 1, 5}, b = {4, 5};
  return {
      {"add_broadcast", {a, b}, any_value, [](const Inputs& x) { return add(x[0], x[1]); }, {}},
      {"sub_broadcast", {a, b}, any_value, [](const Inputs& x) { return sub(x[0], x[1]); }, {}},
      {"mul_broadcast", {a, b}, any_value, [](const Inputs& x) { return mul(x[0], x[1]); }, {}},
      {"div_broadcast",
       {a, b},
       away_from_zero,
       [](const Inputs& x) { return div(x[0], x[1]); },
       {}},
      {"pow_broadcast",
       {a, b},
       [](double u) { return 0.5 + 1.5 * u; },
       [](const Inputs& x) { return pow(x[0], x[1] - 1.25); },
       {}},
      {"maximum_broadcast",
       {a, b},
       any_value,
       [](const Inputs& x) { return maximum(x[0], x[1]); },
       {}},
      {"minimum_broadcast",
       {a, b},
       any_value,
       [](const Inputs& x) { return minimum(x[0], x[1]); },
       {}},
      // Half steps plus 0.1 make every a + b + 0.05 an odd multiple of 0.25: at least 0.25 from
      // the kink at 0, so both sides of it are checked and finite differences never cross it.
      {"add_relu_broadcast",
       {a, b},
       [](double u) { return std::floor(8.0 * u) / 2.0 - 2.0 + 0.1; },
       [](const Inputs& x) { return add_relu(x[0], x[1] + 0.05); },
       {}},
      {"mul_scalar_tensor",
       {{2, 3}, {}},
       any_value,
       [](const Inputs& x) { return mul(x[0], x[1]); },
       {}},
      {"sub_leading_dims",
       {{5}, {2, 3, 5}},
       any_value,
       [](const Inputs& x) { return sub(x[0], x[1]); },
       {}},
      {"where_broadcast",
       {a, b},
       any_value,
       [](const Inputs& x) {
         Tensor cond = tensor_of({1, 0, 0, 1, 1}, {5}, DType::u8);  // broadcast along rows
         return where(cond, x[0], x[1]);
       },
       {}},
      // The mask comes from the input itself (comparisons are not differentiable): a kink at 0.
      {"where_from_compare",
       {{3, 4}},
       any_value,
       [](const Inputs& x) { return where(gt(x[0], zeros({})), x[0] * x[0], exp(x[0])); },
       kinks({0})},
  };
}

std::vector<GradCase> reduce_cases() {
  const ref::Dims s = {3, 4, 5};
  return {
      {"sum_all", {s}, any_value, [](const Inputs& x) { return sum(x[0]); }, {}},
      {"sum_dims_0_2_keepdim",
       {s},
       any_value,
       [](const Inputs& x) {
         return sum(x[0], {0, 2}, true);
       },
       {}},
      {"sum_dim_neg1", {s}, any_value, [](const Inputs& x) { return x[0].sum({-1}); }, {}},
      {"mean_dim_1", {s}, any_value, [](const Inputs& x) { return mean(x[0], {1}); }, {}},
      {"mean_all_keepdim",
       {s},
       any_value,
       [](const Inputs& x) {
         return mean(x[0], {0, 1, 2}, true);
       },
       {}},
      {"var_unbiased_0_2",
       {s},
       any_value,
       [](const Inputs& x) {
         return var(x[0], {0, 2}, true);
       },
       {}},
      {"var_biased_1_keepdim",
       {s},
       any_value,
       [](const Inputs& x) { return var(x[0], {1}, false, true); },
       {}},
      {"amax_dim_1", {s}, any_value, [](const Inputs& x) { return amax(x[0], {1}); }, {}},
      {"amin_dims_0_2",
       {s},
       any_value,
       [](const Inputs& x) {
         return amin(x[0], {0, 2});
       },
       {}},
      {"amax_all", {s}, any_value, [](const Inputs& x) { return amax(x[0]); }, {}},
  };
}

ref::Dims stored(int64_t r, int64_t c, bool t) { return t ? ref::Dims{c, r} : ref::Dims{r, c}; }

std::vector<GradCase> matmul_cases() {
  std::vector<GradCase> out;
  const int64_t m = 3, k = 4, n = 5;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      const std::string suffix = std::string(ta ? "_At" : "_A") + (tb ? "_Bt" : "_B");
      out.push_back({"matmul" + suffix,
                     {stored(m, k, ta), stored(k, n, tb)},
                     any_value,
                     [ta, tb](const Inputs& x) { return matmul(x[0], x[1], ta, tb); },
                     {}});
      ref::Dims as = stored(m, k, ta), bs = stored(k, n, tb);
      out.push_back({"bmm" + suffix,
                     {{2, as[0], as[1]}, {2, bs[0], bs[1]}},
                     any_value,
                     [ta, tb](const Inputs& x) { return bmm(x[0], x[1], ta, tb); },
                     {}});
      out.push_back(
          {"addmm" + suffix,
           {{n}, stored(m, k, ta), stored(k, n, tb)},
           any_value,
           [ta, tb](const Inputs& x) { return addmm(x[0], x[1], x[2], 0.5, -1.5, ta, tb); },
           {}});
    }
  }
  // A bias of shape (m, 1), and operands that are views.
  out.push_back({"addmm_column_bias_views",
                 {{m, 1}, {k, m}, {n, k}},
                 any_value,
                 [](const Inputs& x) { return addmm(x[0], x[1].t(), x[2].t(), 2.0, 1.0); },
                 {}});
  return out;
}

std::vector<GradCase> softmax_cases() {
  std::vector<GradCase> out;
  for (int64_t d = 0; d < 3; ++d) {
    out.push_back({"softmax_dim_" + std::to_string(d),
                   {{3, 4, 5}},
                   any_value,
                   [d](const Inputs& x) { return softmax(x[0], d); },
                   {}});
    out.push_back({"log_softmax_dim_" + std::to_string(d),
                   {{3, 4, 5}},
                   any_value,
                   [d](const Inputs& x) { return log_softmax(x[0], d); },
                   {}});
  }
  return out;
}

std::vector<GradCase> index_cases() {
  return {
      {"gather_dim_1",
       {{3, 4}},
       any_value,
       [](const Inputs& x) {
         Tensor idx = tensor_of({0, 3, 3, 1, 2, 2, 0, 0, 1}, {3, 3}, DType::i64);
         return gather(x[0], 1, idx);
       },
       {}},
      {"scatter_add_dim_0",
       {{3, 4}, {5, 4}},
       any_value,
       [](const Inputs& x) {
         Tensor idx = tensor_of({0, 1, 2, 0, 2, 2, 1, 1, 0, 0, 0, 0, 1, 2, 1, 0, 2, 2, 2, 2},
                                {5, 4}, DType::i32);
         return scatter_add(x[0], 0, idx, x[1]);
       },
       {}},
      {"index_select_dim_2",
       {{2, 3, 5}},
       any_value,
       [](const Inputs& x) {
         return index_select(x[0], 2, tensor_of({4, 0, 2, 2, 4}, {5}, DType::i64));
       },
       {}},
      {"index_select_dim_0",
       {{4, 3}},
       any_value,
       [](const Inputs& x) {
         return index_select(x[0], 0, tensor_of({3, 3, 1}, {3}, DType::i32));
       },
       {}},
  };
}

std::vector<GradCase> view_cases() {
  GradcheckOptions none;
  return {
      {"view",
       {{3, 4}},
       any_value,
       [](const Inputs& x) {
         return x[0].view({2, -1}) * 2.0;
       },
       none},
      {"reshape_copy",
       {{3, 4}},
       any_value,
       [](const Inputs& x) {
         return x[0].t().reshape({12}) * arange(1.0, 13.0, 1.0, TensorOptions(DType::f64));
       },
       none},
      {"permute",
       {{2, 3, 4}},
       any_value,
       [](const Inputs& x) {
         return exp(x[0].permute({2, 0, 1}));
       },
       none},
      {"transpose",
       {{2, 3, 4}},
       any_value,
       [](const Inputs& x) { return square(x[0].transpose(0, 2)); },
       none},
      {"slice_step",
       {{3, 7}},
       any_value,
       [](const Inputs& x) { return square(x[0].slice(1, 1, 6, 2)); },
       none},
      {"slice_negative",
       {{5, 3}},
       any_value,
       [](const Inputs& x) { return exp(x[0].slice(0, -3, -1)); },
       none},
      {"narrow",
       {{4, 3}},
       any_value,
       [](const Inputs& x) { return square(x[0].narrow(0, 1, 2)); },
       none},
      {"select",
       {{3, 4}},
       any_value,
       [](const Inputs& x) { return x[0].select(1, 2) * x[0].select(0, -1).narrow(0, 0, 3); },
       none},
      {"expand",
       {{3, 1}},
       any_value,
       [](const Inputs& x) {
         return x[0].expand({2, 3, 4}) * tensor_of({1, 2, 3, 4}, {4}, DType::f64);
       },
       none},
      {"squeeze",
       {{3, 1, 4}},
       any_value,
       [](const Inputs& x) { return square(x[0].squeeze(1)) + x[0].squeeze().sum({1}, true); },
       none},
      {"unsqueeze",
       {{3, 4}},
       any_value,
       [](const Inputs& x) {
         return x[0].unsqueeze(1) * tensor_of({1, 2}, {2, 1, 1, 1}, DType::f64);
       },
       none},
      {"flatten",
       {{2, 3, 4}},
       any_value,
       [](const Inputs& x) { return exp(x[0].flatten(1)) + x[0].transpose(0, 1).flatten().sum(); },
       none},
      {"contiguous",
       {{3, 4}},
       any_value,
       [](const Inputs& x) { return square(x[0].t().contiguous()); },
       none},
      {"clone", {{3, 4}}, any_value, [](const Inputs& x) { return x[0].clone() * x[0]; }, none},
      cast_case("to_f32", DType::f32, 1.0 / 1024),
      cast_case("to_bf16", DType::bf16, 1.0 / 16),
      cast_case("to_f16", DType::f16, 1.0 / 256),
  };
}

std::vector<GradCase> all_cases() {
  std::vector<GradCase> out;
  for (auto&& group : {unary_cases(), binary_cases(), reduce_cases(), matmul_cases(),
                       softmax_cases(), index_cases(), view_cases()}) {
    for (auto& c : group) out.push_back(c);
  }
  return out;
}

const std::vector<GradCase>& cases() {
  static const std::vector<GradCase> k = all_cases();
  return k;
}

class Gradcheck : public ::testing::TestWithParam<size_t> {};

TEST_P(Gradcheck, MatchesFiniteDifferences) {
  const GradCase& c = cases()[GetParam()];
  manual_seed(500 + GetParam());
  Inputs inputs;
  for (const auto& s : c.shapes) inputs.push_back(from_ref(random_ref(s, c.sample), DType::f64));
  EXPECT_TRUE(gradcheck(c.f, inputs, c.opts));
}

INSTANTIATE_TEST_SUITE_P(AllOps, Gradcheck, ::testing::Range<size_t>(0, cases().size()),
                         [](const auto& tp) { return cases()[tp.param].name; });

// gradcheck itself must notice a wrong backward: a custom op whose gradient is off by 10%.
struct WrongSquare : autograd::Function<WrongSquare> {
  static constexpr const char* kName = "wrong_square";
  static Tensor forward(autograd::FunctionCtx& ctx, const Tensor& x) {
    ctx.save_for_backward({x});
    return x * x;
  }
  static std::vector<Tensor> backward(autograd::FunctionCtx& ctx, const std::vector<Tensor>& g) {
    return {g[0] * ctx.saved_tensors()[0] * 2.2};
  }
};

TEST(GradcheckSelfTest, CatchesAWrongGradient) {
  manual_seed(600);
  Tensor x = from_ref(uniform_ref({3}, 0.5, 2), DType::f64);
  EXPECT_FALSE(gradcheck([](const Inputs& in) { return WrongSquare::apply(in[0]); }, {x}));
  EXPECT_TRUE(gradcheck([](const Inputs& in) { return square(in[0]); }, {x}));
}

// Gradients reach leaves of other dtypes in their own dtype, reduced over broadcast dims.
TEST(GradBroadcast, GradientHasTheInputsShapeAndDType) {
  Tensor a = ones({3, 1, 5}, TensorOptions(DType::f32).with_requires_grad());
  Tensor b = ones({5}, TensorOptions(DType::bf16).with_requires_grad());
  Tensor y = mul(a, b) + a;  // (3, 1, 5) f32
  sum(y * tensor_of({2}, {1}, DType::f32).expand({4, 1})).backward();
  EXPECT_EQ(a.grad().shape(), (Shape{3, 1, 5}));
  EXPECT_EQ(a.grad().dtype(), DType::f32);
  EXPECT_EQ(b.grad().shape(), (Shape{5}));
  EXPECT_EQ(b.grad().dtype(), DType::bf16);
  // Each y element is used 4 times with weight 2: d/da = (b + 1) * 8 = 16, d/db = 3 * a * 8 = 24.
  EXPECT_TENSOR_NEAR(a.grad(), full({3, 1, 5}, 16.0, DType::f64), 0, 0);
  EXPECT_TENSOR_NEAR(b.grad(), full({5}, 24.0, DType::f64), 0, 0);
}

// At the points finite differences cannot check, the gradients follow PyTorch's conventions.
TEST(GradEdge, TiesAndBoundaries) {
  Tensor x = tensor_of({1, 2, 5}, {3}, DType::f64), y = tensor_of({1, 3, 5}, {3}, DType::f64);
  x.requires_grad_();
  y.requires_grad_();
  sum(maximum(x, y)).backward();  // ties split evenly
  EXPECT_TENSOR_NEAR(x.grad(), tensor_of({0.5, 0, 0.5}, {3}, DType::f64), 0, 0);
  EXPECT_TENSOR_NEAR(y.grad(), tensor_of({0.5, 1, 0.5}, {3}, DType::f64), 0, 0);
  x.zero_grad();
  y.zero_grad();
  sum(minimum(x, y)).backward();
  EXPECT_TENSOR_NEAR(x.grad(), tensor_of({0.5, 1, 0.5}, {3}, DType::f64), 0, 0);
  EXPECT_TENSOR_NEAR(y.grad(), tensor_of({0.5, 0, 0.5}, {3}, DType::f64), 0, 0);
  // clamp passes the gradient on its bounds (lo <= x <= hi); relu and abs give 0 at 0.
  Tensor c = tensor_of({-1, 1, 2, -2, 0}, {5}, DType::f64);
  c.requires_grad_();
  sum(clamp(c, -1, 1)).backward();
  EXPECT_TENSOR_NEAR(c.grad(), tensor_of({1, 1, 0, 0, 1}, {5}, DType::f64), 0, 0);
  c.zero_grad();
  sum(relu(c) + abs(c)).backward();
  EXPECT_TENSOR_NEAR(c.grad(), tensor_of({-1, 2, 2, -1, 0}, {5}, DType::f64), 0, 0);
}

// pow at a zero base or a zero exponent: finite gradients, as PyTorch's (0 * log(0) and
// 0 * 0^-1 would be NaN).
TEST(GradEdge, PowAtZeroBaseAndZeroExponent) {
  Tensor a = tensor_of({0, 0, 2}, {3}, DType::f64), e = tensor_of({2, 0, 0}, {3}, DType::f64);
  a.requires_grad_();
  e.requires_grad_();
  sum(pow(a, e)).backward();
  EXPECT_TENSOR_NEAR(a.grad(), tensor_of({0, 0, 0}, {3}, DType::f64), 0, 0);
  EXPECT_TENSOR_NEAR(e.grad(), tensor_of({0, 0, std::log(2.0)}, {3}, DType::f64), 1e-15, 0);
  Tensor z = zeros({2}, TensorOptions(DType::f64).with_requires_grad());
  sum(pow(z, 0.0)).backward();
  EXPECT_TENSOR_NEAR(z.grad(), zeros({2}, DType::f64), 0, 0);
  z.zero_grad();
  sum(pow(z, 2.0)).backward();
  EXPECT_TENSOR_NEAR(z.grad(), zeros({2}, DType::f64), 0, 0);
}

// .grad keeps the leaf's dtype across backward calls that bring gradients of another dtype.
TEST(GradDType, LeafGradKeepsItsDTypeAcrossBackwards) {
  Tensor x = ones({4}, TensorOptions(DType::bf16).with_requires_grad());
  for (int i = 1; i <= 3; ++i) {
    x.view({2, 2}).sum().backward(scalar_tensor(1.0, TensorOptions(DType::f64)));
    EXPECT_EQ(x.grad().dtype(), DType::bf16) << "after backward " << i;
    EXPECT_TENSOR_NEAR(x.grad(), full({4}, double(i), DType::f64), 0, 0);
  }
}

}  // namespace
}  // namespace lowbit::testing
