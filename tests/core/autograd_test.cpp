// The autograd engine: accumulation, backward with a given gradient, retain_graph, no-grad,
// detach, hooks, the custom-function API and the in-place-after-save error.
#include "core/autograd.h"

#include <gmock/gmock.h>

#include "core/ops.h"
#include "core/random.h"
#include "tests/common/gradcheck.h"
#include "tests/common/test_util.h"

namespace lowbit {
namespace {

using ::testing::HasSubstr;
using testing::tensor_of;
using testing::to_doubles;

using testing::error_of;

TEST(Autograd, SimpleChainRule) {
  Tensor x = tensor_of({1, 2, 3}, {3}).requires_grad_();
  Tensor y = sum(x * x * 3.0);  // dy/dx = 6x
  y.backward();
  EXPECT_EQ(to_doubles(x.grad()), (std::vector<double>{6, 12, 18}));
  EXPECT_TRUE(x.is_leaf());
  EXPECT_FALSE(y.is_leaf());
  EXPECT_EQ(y.grad_fn()->name(), "sum");
}

TEST(Autograd, GradientsAccumulateAcrossBackwardCalls) {
  Tensor x = tensor_of({1, 2}, {2}).requires_grad_();
  sum(x * 2.0).backward();
  sum(x * 3.0).backward();
  EXPECT_EQ(to_doubles(x.grad()), (std::vector<double>{5, 5}));
  x.zero_grad();
  EXPECT_FALSE(x.grad().defined());
}

TEST(Autograd, DiamondGraphSumsBothPaths) {
  Tensor x = tensor_of({2}, {1}).requires_grad_();
  Tensor a = x * 3.0, b = exp(x);
  Tensor y = sum(a * b);  // d/dx 3x e^x = 3 e^x (1 + x)
  y.backward();
  EXPECT_NEAR(x.grad().item(), 3 * std::exp(2.0) * 3.0, 1e-4);
}

TEST(Autograd, BackwardWithExplicitGradient) {
  Tensor x = tensor_of({1, 2, 3}, {3}).requires_grad_();
  Tensor y = x * x;
  y.backward(tensor_of({1, 0, -1}, {3}));
  EXPECT_EQ(to_doubles(x.grad()), (std::vector<double>{2, 0, -6}));
}

TEST(Autograd, NonScalarWithoutGradientIsAnError) {
  Tensor x = ones({3}).requires_grad_();
  Tensor y = x * 2.0;
  EXPECT_THAT(error_of([&] { y.backward(); }), HasSubstr("non-scalar"));
}

TEST(Autograd, SecondBackwardNeedsRetainGraph) {
  Tensor x = tensor_of({1, 2}, {2}).requires_grad_();
  Tensor y = sum(exp(x));
  y.backward(Tensor(), /*retain_graph=*/true);
  y.backward();
  EXPECT_NEAR(to_doubles(x.grad())[1], 2 * std::exp(2.0), 1e-4);
  EXPECT_THAT(error_of([&] { y.backward(); }), HasSubstr("second time"));
}

TEST(Autograd, NoGradGuardStopsRecording) {
  Tensor x = ones({2}).requires_grad_();
  {
    autograd::NoGradGuard guard;
    Tensor y = x * 2.0;
    EXPECT_FALSE(y.requires_grad());
    EXPECT_FALSE(autograd::grad_enabled());
  }
  EXPECT_TRUE(autograd::grad_enabled());
  EXPECT_TRUE((x * 2.0).requires_grad());
}

TEST(Autograd, DetachCutsTheGraph) {
  Tensor x = tensor_of({3}, {1}).requires_grad_();
  Tensor y = x * x.detach();  // d/dx = x (the detached factor is a constant)
  EXPECT_FALSE(x.detach().requires_grad());
  sum(y).backward();
  EXPECT_DOUBLE_EQ(x.grad().item(), 3.0);
}

TEST(Autograd, IntegerTensorsCannotRequireGrad) {
  Tensor i = zeros({2}, DType::i64);
  EXPECT_THAT(error_of([&] { i.requires_grad_(); }), HasSubstr("i64"));
}

TEST(Autograd, LeafHookSeesAndReplacesGradient) {
  Tensor x = tensor_of({1, 2}, {2}).requires_grad_();
  std::vector<double> seen;
  x.register_hook([&](const Tensor& g) {
    seen = to_doubles(g);
    return g * 10.0;
  });
  sum(x * 2.0).backward();
  EXPECT_EQ(seen, (std::vector<double>{2, 2}));
  EXPECT_EQ(to_doubles(x.grad()), (std::vector<double>{20, 20}));
}

TEST(Autograd, PostAccumulateHookSeesTheAccumulatedGradOncePerBackward) {
  // x is used twice: the hook must run once, after both contributions were summed into .grad,
  // and see the sum of earlier backward passes too (gradient accumulation).
  Tensor x = tensor_of({1, 2}, {2}).requires_grad_();
  std::vector<std::vector<double>> seen;
  x.register_post_accumulate_grad_hook(
      [&](const Tensor& leaf) { seen.push_back(to_doubles(leaf.grad())); });
  sum(x * 2.0 + x * x).backward();
  sum(x * 3.0).backward();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0], (std::vector<double>{4, 6}));
  EXPECT_EQ(seen[1], (std::vector<double>{7, 9}));
  Tensor h = x * 2.0;
  EXPECT_THAT(error_of([&] { h.register_post_accumulate_grad_hook([](const Tensor&) {}); }),
              HasSubstr("leaf"));
}

TEST(Autograd, NonLeafHookChangesUpstreamGradient) {
  Tensor x = tensor_of({1, 2}, {2}).requires_grad_();
  Tensor h = x * 3.0;
  int calls = 0;
  h.register_hook([&](const Tensor& g) {
    ++calls;
    return g * 0.0;
  });
  sum(h * h).backward();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(to_doubles(x.grad()), (std::vector<double>{0, 0}));
}

TEST(Autograd, RetainGradKeepsNonLeafGradient) {
  Tensor x = tensor_of({1, 2}, {2}).requires_grad_();
  Tensor h = x * 3.0;
  h.retain_grad();
  sum(h * h).backward();
  EXPECT_EQ(to_doubles(h.grad()), (std::vector<double>{6, 12}));
  Tensor h2 = x * 3.0;
  sum(h2 * h2).backward();
  EXPECT_FALSE(h2.grad().defined());
}

TEST(Autograd, InPlaceAfterSaveNamesTheOp) {
  Tensor x = tensor_of({1, 2}, {2}).requires_grad_();
  Tensor e = exp(x);        // exp saves its output
  Tensor y = sum(e * 2.0);  // mul_scalar saves nothing
  {
    autograd::NoGradGuard guard;
    e.fill_(0.0);
  }
  const std::string msg = error_of([&] { y.backward(); });
  EXPECT_THAT(msg, HasSubstr("exp"));
  EXPECT_THAT(msg, HasSubstr("modified in place"));
}

TEST(Autograd, InPlaceOnTensorRequiringGradRefused) {
  Tensor x = ones({2}).requires_grad_();
  EXPECT_THAT(error_of([&] { x.fill_(2.0); }), HasSubstr("requires grad"));
  EXPECT_THAT(error_of([&] { add_(x, ones({2})); }), HasSubstr("requires grad"));
  autograd::NoGradGuard guard;
  add_(x, ones({2}), 0.5);
  EXPECT_EQ(to_doubles(x), (std::vector<double>{1.5, 1.5}));
}

TEST(Autograd, GradientsFlowThroughViews) {
  Tensor x = arange(0.0, 6.0, 1.0, DType::f32).requires_grad_();
  Tensor y = x.view({2, 3}).t().slice(0, 1, 3);  // rows 1..2 of the (3, 2) transpose
  sum(y * y).backward();
  EXPECT_EQ(to_doubles(x.grad()), (std::vector<double>{0, 2, 4, 0, 8, 10}));
}

TEST(Autograd, BroadcastGradientReducesToInputShape) {
  Tensor a = ones({3, 1}).requires_grad_();
  Tensor b = ones({4}).requires_grad_();
  sum(a * b).backward();
  EXPECT_EQ(a.grad().shape(), (Shape{3, 1}));
  EXPECT_EQ(to_doubles(a.grad()), (std::vector<double>{4, 4, 4}));
  EXPECT_EQ(to_doubles(b.grad()), (std::vector<double>{3, 3, 3, 3}));
}

// The worked example of docs/autograd.md: a straight-through rounding op with a learned scale.
struct RoundSte : autograd::Function<RoundSte> {
  static constexpr const char* kName = "round_ste";
  // y = round(x / s) * s
  static Tensor forward(autograd::FunctionCtx& ctx, const Tensor& x, const Tensor& s) {
    ctx.save_for_backward({x, s});
    Tensor q = x / s;
    Tensor r = q - (q - floor_half_even(q));
    return r * s;
  }
  static std::vector<Tensor> backward(autograd::FunctionCtx& ctx, const std::vector<Tensor>& g) {
    auto saved = ctx.saved_tensors();
    const Tensor& x = saved[0];
    const Tensor& s = saved[1];
    Tensor q = x / s;
    Tensor grad_x = g[0];  // straight through
    // d/ds [round(x/s) s] = round(x/s) - x/s (LSQ-style)
    Tensor grad_s = sum(g[0] * (floor_half_even(q) - q));
    return {grad_x, grad_s.reshape(s.shape())};
  }
  static Tensor floor_half_even(const Tensor& q) {
    // round half to even through the f32 -> i32 -> f32 path would truncate; do it by hand.
    std::vector<double> v = to_doubles(q);
    for (double& e : v) e = std::nearbyint(e);
    return from_vector(v, q.shape(), TensorOptions(q.dtype(), q.device()));
  }
};

TEST(AutogradFunction, CustomForwardAndBackward) {
  Tensor x = tensor_of({0.4, 1.3, -2.6}, {3}).requires_grad_();
  Tensor s = tensor_of({0.5}, {1}).requires_grad_();
  Tensor y = RoundSte::apply(x, s);
  EXPECT_EQ(to_doubles(y), (std::vector<double>{0.5, 1.5, -2.5}));
  EXPECT_EQ(y.grad_fn()->name(), "round_ste");
  sum(y * 2.0).backward();
  EXPECT_EQ(to_doubles(x.grad()), (std::vector<double>{2, 2, 2}));
  // sum over elements of 2 * (round(x/s) - x/s) = 2 * ((1 - 0.8) + (3 - 2.6) + (-5 + 5.2))
  EXPECT_NEAR(s.grad().item(), 2 * (0.2 + 0.4 + 0.2), 1e-5);
}

TEST(AutogradFunction, NoRecordingWithoutGrad) {
  Tensor x = tensor_of({0.4}, {1});
  Tensor s = tensor_of({0.5}, {1});
  EXPECT_FALSE(RoundSte::apply(x, s).requires_grad());
}

TEST(AutogradFunction, SavedTensorModifiedInPlaceIsNamed) {
  Tensor x = tensor_of({0.4, 1.3}, {2}).requires_grad_();
  Tensor s = tensor_of({0.5}, {1});
  Tensor y = RoundSte::apply(x * 1.0, s);
  {
    autograd::NoGradGuard guard;
    s.fill_(1.0);
  }
  EXPECT_THAT(error_of([&] { sum(y).backward(); }), HasSubstr("round_ste"));
}

struct Cube : autograd::Function<Cube> {
  static constexpr const char* kName = "cube";
  static Tensor forward(autograd::FunctionCtx& ctx, const Tensor& x) {
    ctx.save_for_backward({x});
    return x * x * x;
  }
  static std::vector<Tensor> backward(autograd::FunctionCtx& ctx, const std::vector<Tensor>& g) {
    Tensor x = ctx.saved_tensors()[0];
    return {g[0] * x * x * 3.0};
  }
};

struct SplitHalves : autograd::Function<SplitHalves> {
  static constexpr const char* kName = "split_halves";
  static std::vector<Tensor> forward(autograd::FunctionCtx&, const Tensor& x) {
    const int64_t h = x.size(0) / 2;
    return {x.slice(0, 0, h).clone(), x.slice(0, h, x.size(0)).clone()};
  }
  static std::vector<Tensor> backward(autograd::FunctionCtx&, const std::vector<Tensor>& g) {
    Tensor out = zeros({g[0].size(0) + g[1].size(0)}, TensorOptions(g[0].dtype(), g[0].device()));
    out.slice(0, 0, g[0].size(0)).copy_(g[0]);
    out.slice(0, g[0].size(0), out.size(0)).copy_(g[1]);
    return {out};
  }
};

TEST(AutogradFunction, MultipleOutputsAndUnusedOutputGetsZeros) {
  Tensor x = tensor_of({1, 2, 3, 4}, {4}).requires_grad_();
  auto parts = SplitHalves::apply(x);
  sum(parts[1] * 5.0).backward();  // parts[0] unused: its gradient is zeros
  EXPECT_EQ(to_doubles(x.grad()), (std::vector<double>{0, 0, 5, 5}));
}

TEST(AutogradFunction, GradcheckOfCustomSmoothFunction) {
  manual_seed(2);
  EXPECT_TRUE(testing::gradcheck([](const std::vector<Tensor>& in) { return Cube::apply(in[0]); },
                                 {randn({5})}));
}

}  // namespace
}  // namespace lowbit
