// PreCropping (prune/precrop.h): SynFlow scores against naive loops on a tiny net, scores that
// stay finite on a deep net, the channel constraints on ResNet, MobileNetV2 and VGG, the
// analytic parameter count against the cropped model, the masks of the pai baseline, and the
// option errors.
#include "prune/precrop.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "core/ops.h"
#include "core/random.h"
#include "layers/basic.h"
#include "layers/conv2d.h"
#include "layers/pooling.h"
#include "models/registry.h"
#include "prune/graph.h"
#include "tests/common/test_util.h"
#include "tests/prune/prune_test_util.h"

namespace lowbit::prune {
namespace {

using ::testing::HasSubstr;

// Conv2d(2 -> 3, 3x3, padding 1, no bias) -> global average pool -> Linear(3 -> 2) on an all-ones
// 4x4 input. With every weight |w| and the bias zero, R = sum_o sum_k |L[o,k]| a_k with
// a_k = mean_pq sum_{r,s,c} |W[k,r,s,c]| 1[(p+r-1, q+s-1) inside], so by hand
//   dR/dW[k,r,s,c] = (sum_o |L[o,k]|) * n(r, s) / 16, n(r, s) = positions where the tap is inside,
//   dR/dL[o,k]     = a_k,
// and SynFlow's score is |w| times that.
TEST(Synflow, ScoresMatchNaiveLoopsOnATinyNet) {
  manual_seed(31);
  auto m = std::make_shared<layers::Sequential>();
  auto conv = std::make_shared<layers::Conv2d>(
      layers::Conv2dOptions(2, 3, 3).with_padding(1).with_bias(false));
  auto lin = std::make_shared<layers::Linear>(3, 2, true);
  m->add(conv);
  m->add(std::make_shared<layers::GlobalAvgPool2d>());
  m->add(std::make_shared<layers::Flatten>());
  m->add(lin);
  const std::vector<float> w = conv->weight().to_vector<float>();  // KRSC (3, 3, 3, 2)
  const std::vector<float> l = lin->weight().to_vector<float>();   // (2, 3)
  const Tensor w_before = conv->weight().clone();

  std::vector<ScoredLayer> s = synflow_scores(*m, {4, 4, 2}, 1.0, 1);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].name, "0");
  EXPECT_EQ(s[1].name, "3");
  auto inside = [](int r, int s2) {  // positions p, q in [0, 4) whose tap (r, s) is inside
    int n = 0;
    for (int p = 0; p < 4; ++p) {
      for (int q = 0; q < 4; ++q)
        n += (p + r - 1 >= 0 && p + r - 1 < 4 && q + s2 - 1 >= 0 && q + s2 - 1 < 4);
    }
    return n;
  };
  std::vector<double> want_w(w.size()), a(3, 0.0);
  for (int k = 0; k < 3; ++k) {
    const double lk = std::fabs(l[size_t(k)]) + std::fabs(l[size_t(3 + k)]);
    for (int r = 0; r < 3; ++r) {
      for (int c2 = 0; c2 < 3; ++c2) {
        for (int c = 0; c < 2; ++c) {
          const size_t i = size_t(((k * 3 + r) * 3 + c2) * 2 + c);
          want_w[i] = std::fabs(w[i]) * lk * inside(r, c2) / 16.0;
          a[size_t(k)] += std::fabs(w[i]) * inside(r, c2) / 16.0;
        }
      }
    }
  }
  std::vector<double> want_l(6);
  for (int o = 0; o < 2; ++o) {
    for (int k = 0; k < 3; ++k)
      want_l[size_t(o * 3 + k)] = std::fabs(l[size_t(o * 3 + k)]) * a[size_t(k)];
  }
  // Exact up to one positive factor (the overflow guard's scaling): compare normalised.
  const std::vector<float> got_w = s[0].score.to_vector<float>(),
                           got_l = s[1].score.to_vector<float>();
  double sum_got = 0, sum_want = 0;
  for (size_t i = 0; i < got_w.size(); ++i) sum_got += got_w[i], sum_want += want_w[i];
  for (size_t i = 0; i < got_l.size(); ++i) sum_got += got_l[i], sum_want += want_l[i];
  ASSERT_GT(sum_got, 0.0);
  const double f = sum_want / sum_got;
  for (size_t i = 0; i < got_w.size(); ++i)
    EXPECT_NEAR(got_w[i] * f, want_w[i], 1e-5 * sum_want) << i;
  for (size_t i = 0; i < got_l.size(); ++i)
    EXPECT_NEAR(got_l[i] * f, want_l[i], 1e-5 * sum_want) << i;
  // The model's values are restored (signs, biases).
  EXPECT_TENSOR_NEAR(conv->weight(), w_before, 0, 0);
}

// Iterative pruning: the final masks keep round(density * N) weights, and every round only
// removes (a weight pruned once stays pruned).
TEST(Synflow, KeepsTheDensityAndStaysFiniteOnADeepNet) {
  manual_seed(32);
  auto m = models::create_model("mobilenet_v2", testing::zoo_options(1, 28));
  std::vector<ScoredLayer> s = synflow_scores(*m, {28, 28, 1}, 0.1, 4);
  int64_t kept = 0, total = 0;
  for (const auto& l : s) {
    kept += l.kept;
    total += l.total;
    for (float v : l.score.to_vector<float>()) ASSERT_TRUE(std::isfinite(v)) << l.name;
    EXPECT_EQ(l.kept, int64_t(sum(l.mask).item())) << l.name;
  }
  EXPECT_EQ(kept, std::llround(0.1 * double(total)));
}

// Every constraint of the crop on a zoo model: the output and input widths, depthwise convs,
// residual groups (one width), the classifier, the counts against the ratio rule, the analytic
// count against the model.
void check_constraints(const std::string& name, const models::ModelOptions& o, double budget,
                       const std::string& method) {
  SCOPED_TRACE(name + " " + method);
  manual_seed(33);
  auto m = models::create_model(name, o);
  const Shape sample{o.input_size, o.input_size, o.in_channels};
  const ChannelGraph before = trace_channel_graph(*m, sample);
  const int64_t params_before = m->num_parameters();
  PrecropOptions opt;
  opt.method = method;
  opt.budget = budget;
  opt.iterations = 3;
  PrecropPlan plan = plan_precrop(*m, opt, sample);
  apply_precrop(*m, plan, sample);
  // The model runs and keeps its classes.
  Tensor y = testing::eval_forward(*m, randn({2, o.input_size, o.input_size, o.in_channels}));
  EXPECT_EQ(y.shape(), (Shape{2, 10}));
  EXPECT_EQ(m->num_parameters(), plan.report.params_after);  // the analytic count is exact
  EXPECT_NEAR(double(plan.report.params_after) / double(params_before), budget, 0.05);
  const ChannelGraph after = trace_channel_graph(*m, sample);
  ASSERT_EQ(after.layers.size(), before.layers.size());
  std::map<std::string, double> density;
  for (const auto& l : plan.report.layers) density[l.name] = l.density;
  for (size_t i = 0; i < after.layers.size(); ++i) {
    const GraphLayer& a = after.layers[i];
    const GraphLayer& b = before.layers[i];
    ASSERT_EQ(a.name, b.name);
    if (a.kind == LayerKind::depthwise) {
      EXPECT_EQ(a.in_channels, a.out_channels) << a.name;
      EXPECT_EQ(a.conv()->options().groups, a.out_channels) << a.name;
    }
    if (a.kind == LayerKind::linear) {
      EXPECT_EQ(a.out_channels, b.out_channels) << a.name;
    }
    if (i == 0) {
      EXPECT_EQ(a.in_channels, b.in_channels) << "the input is never cropped";
    }
  }
  for (const ChannelGroup& g : before.groups) {
    if (!g.removable || g.roots.empty() || g.has_input) {
      // Untouched: the input's channels, option-A residual streams (zero-padded shortcuts).
      for (int mi : g.members) {
        EXPECT_EQ(after.layers[size_t(mi)].out_channels, before.layers[size_t(mi)].out_channels)
            << "fixed group member " << before.layers[size_t(mi)].name;
      }
      continue;
    }
    const int64_t width = after.layers[size_t(g.members.front())].out_channels;
    for (int mi : g.members) {  // one width per group (residual adds, depthwise, BN)
      EXPECT_EQ(after.layers[size_t(mi)].out_channels, width) << after.layers[size_t(mi)].name;
    }
    ASSERT_TRUE(plan.kept.count(g.id));
    EXPECT_EQ(width, plan.kept.at(g.id));
    if (method == "precrop") {  // K' = max(1, round(min(1, t max_roots sqrt(p)) K))
      double rho = 0;
      for (int r : g.roots)
        rho = std::max(rho, std::sqrt(density.at(before.layers[size_t(r)].name)));
      const int64_t want = std::max<int64_t>(
          1, std::llround(std::min(1.0, plan.report.scale * rho) * double(g.channels)));
      EXPECT_EQ(width, want) << before.layers[size_t(g.members.front())].name;
    }
  }
}

TEST(Precrop, ChannelCountsSatisfyEveryConstraintOnResNetMobileNetV2AndVgg) {
  check_constraints("resnet20", testing::zoo_options(1, 16), 0.25, "precrop");
  check_constraints("mobilenet_v2", testing::zoo_options(1, 28), 0.25, "precrop");
  check_constraints("vgg16_bn", testing::zoo_options(3, 32), 0.1, "precrop");
  check_constraints("mobilenet_v2", testing::zoo_options(1, 28), 0.5, "random");
}

// The crop re-initialises with the default init for the new fan-in: U(+-1/sqrt(fan_in)).
TEST(Precrop, CroppedNetworkIsReinitialisedForItsNewFanIn) {
  manual_seed(34);
  auto m = models::create_model("resnet20", testing::zoo_options(1, 16));
  PrecropOptions opt;
  opt.budget = 0.2;
  opt.iterations = 2;
  apply_precrop(*m, plan_precrop(*m, opt, {16, 16, 1}), {16, 16, 1});
  for (auto& [name, mod] : m->named_modules()) {
    auto* c = dynamic_cast<layers::Conv2d*>(mod.get());
    if (c == nullptr) continue;
    const auto& o = c->options();
    const double bound =
        1.0 / std::sqrt(double(o.in_channels / o.groups * o.kernel[0] * o.kernel[1]));
    const double mx = amax(abs(c->weight())).item();
    EXPECT_LE(mx, bound + 1e-7) << name;
    EXPECT_GT(mx, 0.5 * bound) << name;  // drawn for this fan-in, not a smaller one
  }
}

// pai: the full network with the score's masks; the masked weights are zero, the masks are
// buffers (state dicts), and the densities are those precrop crops to.
TEST(Precrop, PaiMasksTheScoresDensities) {
  manual_seed(35);
  auto m = models::create_model("resnet20", testing::zoo_options(1, 16));
  PrecropOptions opt;
  opt.method = "pai";
  opt.budget = 0.1;
  opt.iterations = 3;
  PrecropPlan plan = plan_precrop(*m, opt, {16, 16, 1});
  apply_precrop(*m, plan, {16, 16, 1});
  int64_t zeros_in_masks = 0, zero_weights = 0;
  for (auto& [name, mod] : m->named_modules()) {
    Tensor w, mask;
    if (auto* c = dynamic_cast<layers::Conv2d*>(mod.get())) {
      w = c->weight(), mask = c->weight_mask();
    } else if (auto* l = dynamic_cast<layers::Linear*>(mod.get())) {
      w = l->weight(), mask = l->weight_mask();
    } else {
      continue;
    }
    ASSERT_TRUE(mask.defined()) << name;
    EXPECT_EQ(mask.shape(), w.shape());
    zeros_in_masks += mask.numel() - int64_t(sum(mask).item());
    for (float v : w.to_vector<float>()) zero_weights += v == 0.0f;
    EXPECT_TRUE(m->state_dict().count(name + ".weight_mask")) << name;
  }
  EXPECT_EQ(zero_weights, zeros_in_masks);
  EXPECT_EQ(plan.report.params_after, m->num_parameters() - zeros_in_masks);
  EXPECT_EQ(m->num_parameters(), plan.report.params_before);
}

TEST(Precrop, BadOptionsNameTheKey) {
  auto err = [](PrecropOptions o) {
    try {
      o.validate();
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  PrecropOptions o;
  o.budget = 0;
  EXPECT_THAT(err(o), HasSubstr("budget: 0 is out of range (0, 1]"));
  o.budget = 1.5;
  EXPECT_THAT(err(o), HasSubstr("budget: 1.5"));
  o = {};
  o.score = "grasp";
  EXPECT_THAT(err(o), AllOf(HasSubstr("score: 'grasp'"), HasSubstr("synflow, snip")));
  o = {};
  o.method = "magic";
  EXPECT_THAT(err(o), HasSubstr("method: 'magic'"));
  o = {};
  EXPECT_EQ(err(o), "");
}

}  // namespace
}  // namespace lowbit::prune
