// Quantizer plugins (quant/quantizer.h and one file per quantizer): the registry and option
// errors; LSQ and LSQ+ initialisation and gradient scale; PACT, DoReFa, DSQ, binary, ternary and
// pow2 forward and backward against the references of tests/reference/quant_ref.h, finite
// differences where the function is smooth (clip and scale gradients in the clipped region,
// DSQ's soft surrogate, the exact XNOR scale term); modes and tree helpers; the way a layer owns
// its quantizers. Each quantizer declares its cases for the generic suites
// (quantizer_generic_test.cpp: CPU round trips, CPU-vs-CUDA parity) next to its tests.
#include "quant/quantizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/random.h"
#include "layers/module.h"
#include "quant/binary.h"
#include "quant/dorefa.h"
#include "quant/dsq.h"
#include "quant/lsq.h"
#include "quant/lsq_plus.h"
#include "quant/pact.h"
#include "quant/pow2.h"
#include "quant/ternary.h"
#include "quant/uniform.h"
#include "tests/common/gradcheck.h"
#include "tests/common/test_util.h"
#include "tests/quant/quant_test_util.h"
#include "tests/quant/quantizer_cases.h"
#include "tests/reference/quant_ref.h"

namespace lowbit::quant {
namespace {

using lowbit::testing::tensor_of;
using lowbit::testing::to_doubles;
using ::testing::HasSubstr;
using testing_util::channel_of;
using testing_util::error_of;
namespace ref = lowbit::reference;

template <typename T>
std::shared_ptr<T> make(const std::string& name, const QuantizerOptions& o) {
  auto q = std::dynamic_pointer_cast<T>(create_quantizer(name, o));
  EXPECT_NE(q, nullptr) << name;
  return q;
}

// --- registry and options -------------------------------------------------------------------

TEST(QuantizerRegistry, UnknownNameListsTheKnownOnes) {
  try {
    create_quantizer("lsqq");
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("unknown quantizer 'lsqq'"));
    EXPECT_THAT(e.what(), HasSubstr("lsq, lsq_plus, pact"));
  }
}

TEST(QuantizerOptions, ErrorsNameKeyValueAndWhatIsAllowed) {
  auto err = [](const std::string& name, const QuantizerOptions& o) {
    try {
      create_quantizer(name, o);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_THAT(
      err("lsq", {{"bitz", "4"}}),
      HasSubstr("quantizer 'lsq': unknown option 'bitz' = '4'; allowed options: axis, bits"));
  EXPECT_THAT(err("lsq", {{"bits", "0"}}),
              HasSubstr("bits = '0' is out of range; allowed: 1 to 16"));
  EXPECT_THAT(err("lsq", {{"bits", "four"}}), HasSubstr("bits = 'four' is not an integer"));
  EXPECT_THAT(err("uniform", {{"signed", "maybe"}}),
              HasSubstr("signed = 'maybe' is not a bool; allowed: true, false"));
  EXPECT_THAT(err("uniform", {{"observer", "entropy"}}),
              HasSubstr("observer = 'entropy' is not allowed; allowed: ema, kl, minmax, "
                        "mse, percentile"));
  EXPECT_THAT(err("uniform", {{"role", "bias"}}),
              HasSubstr("role = 'bias' is not allowed; allowed: weight, activation"));
  EXPECT_THAT(err("uniform", {{"observer", "minmax"}, {"percentile_high", "99"}}),
              HasSubstr("unknown option 'percentile_high'"));
  EXPECT_THAT(err("lsq", {{"per_channel", "true"}}), HasSubstr("activations are per-tensor"));
  EXPECT_THAT(err("lsq", {{"role", "weight"}, {"per_channel", "true"}}),
              HasSubstr("needs the option channels"));
  EXPECT_THAT(err("uniform", {{"bits", "1"}, {"signed", "true"}, {"role", "weight"}}),
              HasSubstr("quantizer 'uniform': bits = 1 with signed = true"));
  EXPECT_THAT(err("pact", {{"signed", "true"}}), HasSubstr("unknown option 'signed'"));
  EXPECT_THAT(err("pact", {{"per_channel", "true"}}), HasSubstr("unknown option 'per_channel'"));
  EXPECT_THAT(err("lsq", {{"channels", "0"}}), HasSubstr("channels = '0' is out of range"));
  EXPECT_EQ(err("pact", {{"channels", "16"}}), "");  // a layer may always pass its channel count
  EXPECT_EQ(err("dorefa", {{"role", "weight"}, {"channels", "16"}}), "");
  EXPECT_THAT(err("pact", {{"role", "weight"}}), HasSubstr("allowed: activation"));
  EXPECT_THAT(err("pact", {{"alpha", "0"}}), HasSubstr("alpha = '0' is out of range; allowed: (0"));
  EXPECT_THAT(err("binary", {{"bits", "2"}}), HasSubstr("allowed: 1 to 1"));
  EXPECT_THAT(err("ternary", {{"role", "activation"}}), HasSubstr("allowed: weight"));
  EXPECT_THAT(err("dsq", {{"alpha", "1.5"}}), HasSubstr("alpha = '1.5' is out of range"));
  EXPECT_THAT(err("lsq", {{"grad_scale", "sometimes"}}),
              HasSubstr("allowed: auto, elements, none"));
  EXPECT_THAT(err("dorefa", {{"role", "activation"}, {"dorefa_grid", "modified"}}),
              HasSubstr("unknown option 'dorefa_grid'"));
}

// A quantizer whose codes do not fit its bits (17 levels in 4 bits) is refused at construction.
class WideRangeQuantizer : public Quantizer {
 public:
  explicit WideRangeQuantizer(OptionReader& r) : Quantizer(r, QuantizerTraits{}) {
    set_range(QuantRange{-8, 8});
  }
  std::string type_name() const override { return "WideRangeQuantizer"; }

 protected:
  Tensor quantize(const Tensor& x) override { return x; }
};

TEST(QuantizerOptions, CodesMustFitTheBits) {
  OptionReader r4("wide", {{"bits", "4"}});
  EXPECT_THAT(error_of([&] { check_code_range(WideRangeQuantizer(r4)); }),
              HasSubstr("quantizer 'wide': its codes -8..8 are 17 levels, more than bits = 4 can "
                        "hold (16)"));
  OptionReader r5("wide", {{"bits", "5"}});
  check_code_range(WideRangeQuantizer(r5));  // 17 <= 32
  for (const std::string& name : quantizer_names()) check_code_range(*create_quantizer(name));
}

TEST(QuantizerOptions, TypedSettersAndSpec) {
  QuantizerOptions o;
  o.set("role", "weight")
      .set("bits", 3)
      .set("narrow_range", true)
      .set("per_channel", true)
      .set("channels", int64_t(6))
      .set("axis", -1);
  auto q = create_quantizer("uniform", o);
  EXPECT_EQ(q->spec().role, QuantRole::weight);
  EXPECT_EQ(q->bits(), 3);
  EXPECT_TRUE(q->spec().is_signed);
  EXPECT_EQ(q->spec().range.qmin, -3);
  EXPECT_EQ(q->spec().range.qmax, 3);
  EXPECT_EQ(q->spec().axis, -1);
  EXPECT_EQ(q->spec().channels, 6);
  EXPECT_EQ(q->type_name(), "UniformQuantizer");
  EXPECT_THAT(q->str(), HasSubstr("uniform, role=weight, bits=3, range=[-3, 3], per_channel"));
  QuantizerOptions d;
  d.set("alpha", 0.25);
  EXPECT_EQ(make<DsqQuantizer>("dsq", d)->alpha().item(), 0.25);
}

// --- LSQ --------------------------------------------------------------------------------------

LOWBIT_QUANTIZER_TEST_CASES("lsq",
                            {{{"role", "weight"}, {"per_channel", "true"}, {"channels", "16"}},
                             {16, 3, 3, 8}},
                            {{}, {8, 6, 6, 16}});

TEST(LsqQuantizer, InitialisesFromTheFirstTensorAndRegistersTheScale) {
  auto q = make<LsqQuantizer>("lsq", {{"role", "weight"}, {"bits", "4"}});
  ASSERT_EQ(q->named_parameters().size(), 1u);
  EXPECT_EQ(q->named_parameters()[0].first, "scale");
  EXPECT_TRUE(q->scale().requires_grad());
  EXPECT_FALSE(q->initialized());
  Tensor w = tensor_of({0.5, -1.0, 0.25, 2.25}, {4});
  q->forward(w);
  // s0 = 2 * mean|w| / sqrt(Qp) = 2 * 1.0 / sqrt(7) (docs/methods.md, "LSQ")
  EXPECT_NEAR(q->scale().item(), 2.0 / std::sqrt(7.0), 1e-7);
  EXPECT_TRUE(q->initialized());
  q->forward(w * 10.0);  // initialised once
  EXPECT_NEAR(q->scale().item(), 2.0 / std::sqrt(7.0), 1e-7);
  EXPECT_EQ(q->state_dict().at("initialized").item(), 1.0);
}

TEST(LsqQuantizer, CalibrationAveragesOverBatchesAndPerChannel) {
  auto q = make<LsqQuantizer>("lsq", {{"role", "activation"}, {"bits", "2"}});  // Qp = 3
  q->set_calibrating(true);
  Tensor a = tensor_of({1.0, 3.0}, {1, 2}), b = tensor_of({2.0, 2.0, 4.0, 4.0}, {1, 4});
  EXPECT_TRUE(q->forward(a).same(a));
  q->forward(b);
  q->set_calibrating(false);
  EXPECT_NEAR(q->scale().item(), 2.0 * (16.0 / 6.0) / std::sqrt(3.0), 1e-6);

  auto w = make<LsqQuantizer>(
      "lsq",
      {{"role", "weight"}, {"per_channel", "true"}, {"channels", "2"}, {"bits", "3"}});  // Qp = 3
  w->forward(tensor_of({1.0, -1.0, 3.0, -3.0, 6.0, 0.0}, {2, 3}));
  EXPECT_TENSOR_NEAR(
      w->scale(), tensor_of({2.0 * (5.0 / 3.0) / std::sqrt(3.0), 2.0 * 3.0 / std::sqrt(3.0)}, {2}),
      1e-6, 0);
}

TEST(LsqQuantizer, ObserverInitialisation) {
  // init: minmax, per-channel signed 4 bits (-8..7): s0 = max|w| / 7.5 per channel, PyTorch's
  // symmetric qparams; set when calibration ends, from every batch.
  auto w = make<LsqQuantizer>(
      "lsq", {{"role", "weight"}, {"per_channel", "true"}, {"channels", "2"}, {"init", "minmax"}});
  w->set_calibrating(true);
  w->forward(tensor_of({1.0, -1.0, 3.0, -3.0, 6.0, 0.0}, {2, 3}));
  w->forward(tensor_of({0.0, 0.0, -4.0, 0.0, 0.0, 0.0}, {2, 3}));
  EXPECT_FALSE(w->initialized());
  w->set_calibrating(false);
  EXPECT_TRUE(w->initialized());
  EXPECT_TENSOR_NEAR(w->scale(), tensor_of({4.0 / 7.5, 6.0 / 7.5}, {2}), 1e-6, 0);
  // Unsigned 8-bit activations: x_max / 255, negatives ignored; without calibration, from the
  // first tensor.
  auto a = make<LsqQuantizer>("lsq", {{"bits", "8"}, {"init", "minmax"}});
  a->forward(tensor_of({-9.0, 0.5, 5.1, 2.0}, {1, 4}));
  EXPECT_NEAR(a->scale().item(), 5.1 / 255.0, 1e-7);
  // mse: the step whose fake-quant error is least among t * max|x| / 7.5, t = j / T (4 bits);
  // on Gaussian values the best step clips the tails (t < 1), unlike minmax.
  manual_seed(11);
  const Tensor x = randn({1, 2000});
  const std::vector<double> v = to_doubles(x);
  double amax = 0.0;
  for (double xi : v) amax = std::max(amax, std::fabs(xi));
  auto m = make<LsqQuantizer>("lsq", {{"role", "weight"}, {"init", "mse"}, {"mse_steps", "50"}});
  m->forward(x);
  double best_err = INFINITY, best_s = 0.0;
  for (int j = 1; j <= 50; ++j) {
    const double s = (j / 50.0) * amax / 7.5;
    double e = 0.0;
    for (double xi : v) {
      const double q = std::clamp(std::nearbyint(xi / s), -8.0, 7.0) * s;
      e += (xi - q) * (xi - q);
    }
    if (e <= best_err) best_err = e, best_s = s;
  }
  EXPECT_LT(best_s, 0.9 * amax / 7.5);
  EXPECT_NEAR(m->scale().item(), best_s, 1e-5);
  // Its repr names the init; bad names are rejected with the allowed ones.
  EXPECT_THAT(m->extra_repr(), HasSubstr("init=mse, mse_steps=50"));
  try {
    create_quantizer("lsq", {{"init", "bogus"}});
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("init = 'bogus' is not allowed; allowed: lsq, "));
  }
}

TEST(LsqQuantizer, GradientScaleFollowsMethods31) {
  manual_seed(50);
  // Weights, per-channel KRSC (4, 3, 3, 2): N = R*S*C = 18 per scale; 4-bit signed Qp = 7.
  Tensor w = randn({4, 3, 3, 2});
  Tensor up = randn({4, 3, 3, 2});
  auto scaled =
      make<LsqQuantizer>("lsq", {{"role", "weight"}, {"per_channel", "true"}, {"channels", "4"}});
  auto plain = make<LsqQuantizer>(
      "lsq",
      {{"role", "weight"}, {"per_channel", "true"}, {"channels", "4"}, {"grad_scale", "none"}});
  EXPECT_DOUBLE_EQ(scaled->grad_scale(w), 1.0 / std::sqrt(18.0 * 7.0));
  sum(scaled->forward(w) * up).backward();
  sum(plain->forward(w) * up).backward();
  EXPECT_TENSOR_NEAR(scaled->scale().grad(), plain->scale().grad() * (1.0 / std::sqrt(126.0)), 1e-6,
                     1e-9);
  // Activations NHWC (2, 4, 4, 3): N = H*W*C = 48 features per sample, unsigned Qp = 15.
  auto act = make<LsqQuantizer>("lsq", {});
  EXPECT_DOUBLE_EQ(act->grad_scale(zeros({2, 4, 4, 3})), 1.0 / std::sqrt(48.0 * 15.0));
  auto all = make<LsqQuantizer>("lsq", {{"grad_scale", "elements"}});
  EXPECT_DOUBLE_EQ(all->grad_scale(zeros({2, 4, 4, 3})), 1.0 / std::sqrt(96.0 * 15.0));
}

TEST(LsqQuantizer, ClampAndFreeze) {
  auto q = make<LsqQuantizer>("lsq", {});
  q->forward(tensor_of({1.0, 2.0}, {2}));
  {
    autograd::NoGradGuard guard;
    q->scale().fill_(-3.0);
  }
  EXPECT_THAT(error_of([&] { q->forward(tensor_of({1.0}, {1})); }), HasSubstr("got -3"));
  q->clamp_parameters();
  EXPECT_EQ(q->scale().item(), double(float(kMinLearnedScale)));
  q->set_frozen(true);
  Tensor x = tensor_of({1.0, 2.0}, {2}).requires_grad_();
  sum(q->forward(x)).backward();
  EXPECT_FALSE(q->scale().grad().defined());
}

// --- LSQ+ -------------------------------------------------------------------------------------

LOWBIT_QUANTIZER_TEST_CASES("lsq_plus", {{}, {8, 6, 6, 16}});

TEST(LsqPlusQuantizer, InitialisationRules) {
  // Activations: s = (max - min) / (qmax - qmin), beta = min - s * qmin (unsigned: beta = min).
  auto a = make<LsqPlusQuantizer>("lsq_plus", {{"bits", "2"}});  // 0..3
  EXPECT_EQ(a->named_parameters().size(), 2u);                   // scale, offset
  a->forward(tensor_of({-0.6, 0.3, 2.4}, {3}));
  EXPECT_NEAR(a->scale().item(), 1.0, 1e-6);
  EXPECT_NEAR(a->offset().item(), -0.6, 1e-6);
  // Weights: beta = 0, s = max(|mu - 3 sd|, |mu + 3 sd|) / 2^(b-1), offset not learned.
  auto w = make<LsqPlusQuantizer>("lsq_plus", {{"role", "weight"}, {"bits", "4"}});
  EXPECT_EQ(w->named_parameters().size(), 1u);
  const std::vector<double> v{1.0, 2.0, 3.0, 6.0};
  w->forward(tensor_of(v, {4}));
  const double mu = 3.0, sd = std::sqrt((4.0 + 1.0 + 0.0 + 9.0) / 3.0);
  EXPECT_NEAR(w->scale().item(), std::max(std::fabs(mu - 3 * sd), mu + 3 * sd) / 8.0, 1e-6);
  EXPECT_EQ(w->offset().item(), 0.0);
}

// LSQ and LSQ+ share LsqQuantizerBase: the same g for the same options and input, the same
// "initialized" flag (set by the first forward, carried by the state dict), the same clamp.
TEST(LsqPlusQuantizer, SharesGradScaleAndInitialisationFlagWithLsq) {
  const Tensor x = zeros({2, 4, 4, 3});
  for (const char* mode : {"auto", "elements", "none"}) {
    auto lsq = make<LsqQuantizer>("lsq", {{"grad_scale", mode}});
    auto plus = make<LsqPlusQuantizer>("lsq_plus", {{"grad_scale", mode}});
    EXPECT_DOUBLE_EQ(plus->grad_scale(x), lsq->grad_scale(x)) << mode;
  }
  auto q = make<LsqPlusQuantizer>("lsq_plus", {{"bits", "2"}});
  EXPECT_FALSE(q->initialized());
  q->forward(tensor_of({-0.6, 0.3, 2.4}, {3}));
  EXPECT_TRUE(q->initialized());
  EXPECT_EQ(q->state_dict().at("initialized").item(), 1.0);
  auto loaded = make<LsqPlusQuantizer>("lsq_plus", {{"bits", "2"}});
  loaded->load_state_dict(q->state_dict());
  EXPECT_TRUE(loaded->initialized());
  {
    autograd::NoGradGuard guard;
    q->scale().fill_(-1.0);
  }
  q->clamp_parameters();
  EXPECT_FLOAT_EQ(float(q->scale().item()), float(kMinLearnedScale));
}

// --- PACT -------------------------------------------------------------------------------------

LOWBIT_QUANTIZER_TEST_CASES("pact", {{{"alpha", "2.0"}, {"gradient", "calibrated"}}, {8, 6, 6, 16}},
                            {{{"alpha", "2.0"}}, {8, 6, 6, 16}});

TEST(Pact, ForwardAndBackwardMatchReference) {
  manual_seed(60);
  for (bool calibrated : {false, true}) {
    for (double alpha : {2.5, -2.5}) {
      Tensor x = (randn({300}) * 2.0 + 1.0).requires_grad_();
      Tensor a = full({1}, alpha).requires_grad_();
      Tensor up = randn({300});
      Tensor y = pact_quantize(x, a, 3, calibrated, 0.0);
      sum(y * up).backward();
      const std::vector<double> xv = to_doubles(x), uv = to_doubles(up);
      std::vector<double> want(xv.size()), want_dx(xv.size());
      double da = 0;
      for (size_t i = 0; i < xv.size(); ++i) {
        const ref::PactElem e = ref::pact(xv[i], alpha, 3, calibrated);
        want[i] = e.y;
        want_dx[i] = uv[i] * e.dx;
        da += uv[i] * e.dalpha;
      }
      EXPECT_TENSOR_NEAR(y, tensor_of(want, {300}), 0, 0);
      EXPECT_TENSOR_NEAR(x.grad(), tensor_of(want_dx, {300}), 0, 0);
      EXPECT_NEAR(a.grad().item(), da, 1e-4 * (1 + std::fabs(da)));
    }
  }
}

TEST(Pact, AlphaGradientMatchesFiniteDifferencesOutsideTheRangeAndDecay) {
  // Above alpha y_q = alpha exactly, below 0 it is 0: smooth in alpha there.
  Tensor x = tensor_of({3.5, 4.0, -1.0, 6.0, -0.2}, {5});
  auto f = [](const std::vector<Tensor>& in) { return pact_quantize(in[0], in[1], 4); };
  EXPECT_TRUE(lowbit::testing::gradcheck(f, {x, tensor_of({2.0}, {1})}));
  // The L2 regulariser alpha_decay * alpha^2 adds 2 * alpha_decay * alpha.
  Tensor a = full({1}, 2.0).requires_grad_();
  sum(pact_quantize(tensor_of({5.0}, {1}), a, 4, false, 0.1)).backward();
  EXPECT_NEAR(a.grad().item(), 1.0 + 2 * 0.1 * 2.0, 1e-6);
  auto q = make<PactQuantizer>("pact", {{"alpha_decay", "0.5"}});
  EXPECT_EQ(q->alpha().item(), 10.0);  // docs/methods.md, "PACT" default alpha0
  sum(q->forward(tensor_of({12.0}, {1}))).backward();
  EXPECT_NEAR(q->alpha().grad().item(), 1.0 + 2 * 0.5 * 10.0, 1e-5);
}

// --- CG-PACT (docs/methods.md, "CG-PACT")
// -------------------------------------------------------------------

LOWBIT_QUANTIZER_TEST_CASES("cg_pact", {{{"alpha", "2.0"}}, {8, 6, 6, 16}});

// The forward is homogeneous of degree one: q(t x, t alpha) = t q(x, alpha) exactly (the codes
// round(x n / alpha) do not change along the ray), so its derivative along the ray is q itself
// and finite differences along (x, alpha) never cross a rounding step. The gradients of a
// quantizer that takes the STE dq/dx = 1 inside the range must then satisfy
// x dq/dx + alpha dq/dalpha = q: CG-PACT's does (its dq/dalpha = (q - x) / alpha), plain PACT's
// (dq/dalpha = 0 inside) does not.
double ray_gradient_gap(bool calibrated) {
  manual_seed(62);
  const double alpha = 4.0, eps = 1e-6;
  // f64: the codes are computed in double, so the ray keeps them up to eps.
  Tensor x0 = (rand({400}, TensorOptions(DType::f64)) * 7.0 - 1.0);
  Tensor w = randn({400}, TensorOptions(DType::f64));
  auto loss = [&](double t) {
    return sum(pact_quantize(x0 * t, full({1}, alpha * t, TensorOptions(DType::f64)), 3,
                             calibrated) *
               w)
        .item();
  };
  const double fd = (loss(1 + eps) - loss(1 - eps)) / (2 * eps);
  Tensor x = x0.detach().requires_grad_();
  Tensor a = full({1}, alpha, TensorOptions(DType::f64)).requires_grad_();
  sum(pact_quantize(x, a, 3, calibrated) * w).backward();
  const double analytic = sum(x.grad() * x0).item() + a.grad().item() * alpha;
  EXPECT_NEAR(fd, loss(1.0), 1e-6 * (1 + std::fabs(fd)));  // the ray derivative is q itself
  return std::fabs(analytic - fd);
}

TEST(CgPact, GradientMatchesFiniteDifferencesAlongTheScalingRay) {
  EXPECT_LT(ray_gradient_gap(true), 1e-6);
  // Plain PACT misses the inside term sum(w (q - x)) by far more: the check can fail.
  EXPECT_GT(ray_gradient_gap(false), 1.0);
}

TEST(CgPact, ClipGradientMatchesFiniteDifferencesAwayFromRoundingSteps) {
  // Per element, with the codes held (x and alpha both moved less than to the next step), the
  // forward's alpha-derivative is q / alpha inside, 1 above alpha, 0 below 0; CG-PACT adds the
  // STE term -x / alpha * dq/dx inside. Elements within 1e-3 of a step are skipped.
  const int bits = 3;
  const double alpha = 2.5, n = 7.0, h = 1e-7;
  std::vector<double> xs;
  for (double v = -1.0; v <= 4.0; v += 0.0371) xs.push_back(v);
  Tensor a = full({1}, alpha, TensorOptions(DType::f64));
  int checked_inside = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const double u = xs[i] * n / alpha;
    if (std::fabs(u - std::floor(u) - 0.5) < 1e-3 || std::fabs(xs[i] - alpha) < 1e-3) continue;
    Tensor ai = a.detach().requires_grad_();
    Tensor xi = full({1}, xs[i], TensorOptions(DType::f64)).requires_grad_();
    sum(pact_quantize(xi, ai, bits, true)).backward();
    auto q = [&](double al) {
      return pact_quantize(full({1}, xs[i], TensorOptions(DType::f64)),
                           full({1}, al, TensorOptions(DType::f64)), bits, true)
          .item();
    };
    const double fd_alpha = (q(alpha + h) - q(alpha - h)) / (2 * h);
    const double ste = xi.grad().item() * (-xs[i] / alpha);
    EXPECT_NEAR(ai.grad().item(), fd_alpha + ste, 1e-6) << "x = " << xs[i];
    if (xs[i] > 0 && xs[i] < alpha) {
      ++checked_inside;
      EXPECT_NEAR(ai.grad().item(), (q(alpha) - xs[i]) / alpha, 1e-12);
    }
  }
  EXPECT_GT(checked_inside, 40);
}

TEST(CgPact, IsPactWithTheCalibratedGradientAndSatInitialClip) {
  auto cg = make<CgPactQuantizer>("cg_pact", {{"bits", "3"}});
  EXPECT_EQ(cg->type_name(), "CgPactQuantizer");
  EXPECT_TRUE(cg->calibrated());
  EXPECT_EQ(cg->alpha().item(), 8.0);  // docs/methods.md, "CG-PACT": the SAT code's conv value
  EXPECT_EQ(make<CgPactQuantizer>("cg_pact", {{"alpha", "10"}})->alpha().item(), 10.0);
  // Same forward and gradients as pact with gradient: calibrated.
  auto pc =
      make<PactQuantizer>("pact", {{"bits", "3"}, {"alpha", "8"}, {"gradient", "calibrated"}});
  manual_seed(63);
  Tensor x0 = randn({2, 5, 5, 4}) * 4.0 + 2.0;
  Tensor xa = x0.detach().requires_grad_(), xb = x0.detach().requires_grad_();
  Tensor ya = cg->forward(xa), yb = pc->forward(xb);
  EXPECT_TENSOR_NEAR(ya, yb, 0, 0);
  sum(ya * x0).backward();
  sum(yb * x0).backward();
  EXPECT_TENSOR_NEAR(xa.grad(), xb.grad(), 0, 0);
  EXPECT_TENSOR_NEAR(cg->alpha().grad(), pc->alpha().grad(), 0, 0);
  // gradient is not an option of cg_pact (it is always calibrated), nor are weights.
  EXPECT_THAT(error_of([] {
                create_quantizer("cg_pact", {{"gradient", "pact"}});
              }),
              HasSubstr("gradient"));
  EXPECT_THAT(error_of([] {
                create_quantizer("cg_pact", {{"role", "weight"}});
              }),
              HasSubstr("weight"));
}

// PACT's integer form (ONNX export, docs/export.md): codes [0, 2^b - 1] at s = |alpha| / n, zero
// point 0; the forward's value is q s within one f32 rounding, and its code is the form's code
// clamp(round(x / s), 0, n) except next to a rounding tie.
TEST(Pact, IntegerFormGivesTheForwardsCodes) {
  for (int64_t bits : {2, 4, 8}) {
    auto q = make<PactQuantizer>("pact", {{"bits", std::to_string(bits)}, {"alpha", "3.7"}});
    {
      autograd::NoGradGuard ng;
      q->alpha().fill_(-3.7);  // a learned clip may turn negative: the forward uses |alpha|
    }
    const std::optional<IntegerForm> f = q->integer_form();
    ASSERT_TRUE(f.has_value());
    const int64_t n = (int64_t(1) << bits) - 1;
    EXPECT_EQ(f->range.qmin, 0);
    EXPECT_EQ(f->range.qmax, n);
    ASSERT_EQ(f->scale.size(), 1u);
    EXPECT_EQ(f->zero_point, std::vector<int64_t>{0});
    EXPECT_EQ(f->scale[0], double(float(3.7f / float(n))));  // |alpha| / n as an f32
    manual_seed(64);
    Tensor x = randn({4000}) * 3.0 + 1.0;
    const std::vector<double> xv = to_doubles(x), yv = to_doubles(q->forward(x));
    const double s = f->scale[0];
    int64_t ties = 0;
    for (size_t i = 0; i < xv.size(); ++i) {
      const double u = xv[i] / s;
      const double code = std::clamp(std::nearbyint(u), 0.0, double(n));
      EXPECT_NEAR(code * s, yv[i], 3.7 * 0x1p-22) << xv[i];
      if (std::fabs(std::fabs(u - std::floor(u)) - 0.5) < 1e-4)
        ++ties;
      else
        EXPECT_EQ(std::nearbyint(yv[i] / s), code) << xv[i];
    }
    EXPECT_LT(ties, 10);
  }
  // No form while disabled or calibrating.
  auto q = make<PactQuantizer>("pact", {{"bits", "4"}});
  q->set_enabled(false);
  EXPECT_FALSE(q->integer_form().has_value());
  q->set_enabled(true);
  q->set_calibrating(true);
  EXPECT_FALSE(q->integer_form().has_value());
}

// --- DoReFa ------------------------------------------------------------------------------------

// DoReFa uses tanh in the forward: on CUDA an element at a rounding boundary may move one level
// (2 / (2^b - 1)); the gradient (1 - t^2) / m differs by ulps.
LOWBIT_QUANTIZER_TEST_CASES("dorefa",
                            {{{"role", "weight"}}, {16, 3, 3, 8}, 2.0 / 15.0 + 1e-6, 1e-5},
                            {{{"role", "activation"}}, {8, 6, 6, 16}});

TEST(Dorefa, WeightsMatchReferenceBothGrids) {
  manual_seed(61);
  Tensor w = randn({6, 3, 3, 4}) * 0.7;
  const std::vector<double> wv = to_doubles(w);
  double m = 0;
  for (double v : wv) m = std::max(m, std::fabs(std::tanh(v)));
  for (int bits : {2, 4}) {
    for (bool modified : {false, true}) {
      Tensor wg = w.detach().requires_grad_();
      Tensor y = dorefa_quantize(wg, bits, true, modified);
      Tensor up = randn(w.shape());
      sum(y * up).backward();
      const std::vector<double> yv = to_doubles(y), gv = to_doubles(wg.grad()), uv = to_doubles(up);
      for (size_t i = 0; i < wv.size(); ++i) {
        // fp32 tanh vs double: a value at a rounding boundary could move a level; none here.
        ASSERT_NEAR(yv[i], ref::dorefa_weight(wv[i], m, bits, modified), 1e-6) << i;
        ASSERT_NEAR(gv[i], uv[i] * ref::dorefa_weight_grad(wv[i], m), 1e-5) << i;
      }
      // Levels: 2^b values in [-1, 1].
      std::vector<double> levels = yv;
      std::sort(levels.begin(), levels.end());
      levels.erase(std::unique(levels.begin(), levels.end()), levels.end());
      EXPECT_LE(levels.size(), size_t(1) << bits);
      EXPECT_GE(levels.front(), -1.0);
      EXPECT_LE(levels.back(), 1.0);
    }
  }
}

TEST(Dorefa, OneBitWeightsAndActivations) {
  Tensor w = tensor_of({0.5, -1.5, 0.0, 2.0}, {4}).requires_grad_();
  Tensor y = dorefa_quantize(w, 1, true);
  EXPECT_TENSOR_NEAR(y, tensor_of({1.0, -1.0, 1.0, 1.0}, {4}), 0, 0);  // mean|w| = 1
  Tensor up = tensor_of({1, 2, 3, 4}, {4});
  sum(y * up).backward();
  EXPECT_TENSOR_NEAR(w.grad(), up, 0, 0);  // identity straight-through

  auto q = make<DorefaQuantizer>("dorefa", {{"bits", "2"}});
  Tensor x = tensor_of({-0.5, 0.1, 0.2, 0.5, 0.9, 1.0, 1.7}, {7}).requires_grad_();
  Tensor a = q->forward(x);
  std::vector<double> want;
  for (double v : to_doubles(x)) want.push_back(ref::dorefa_activation(v, 2));
  EXPECT_TENSOR_NEAR(a, tensor_of(want, {7}), 1e-7, 0);
  sum(a).backward();
  EXPECT_TENSOR_NEAR(x.grad(), tensor_of({0, 1, 1, 1, 1, 1, 0}, {7}), 0, 0);
}

// --- DSQ ---------------------------------------------------------------------------------------

// DSQ's backward uses tanh/log: CUDA's and glibc's differ by ulps.
LOWBIT_QUANTIZER_TEST_CASES(
    "dsq",
    {{{"role", "weight"}, {"per_channel", "true"}, {"channels", "16"}}, {16, 3, 3, 8}, 0, 1e-5});

TEST(Dsq, ForwardIsTheHardQuantizer) {
  manual_seed(62);
  Tensor x = randn({500}) * 2.0;
  Tensor y = dsq_quantize(x, full({1}, -1.5), full({1}, 2.0), full({1}, 0.2), 3);
  std::vector<double> want;
  for (double v : to_doubles(x)) want.push_back(ref::dsq_hard(v, -1.5, 2.0, 3));
  EXPECT_TENSOR_NEAR(y, tensor_of(want, {500}), 1e-6, 1e-6);  // fp32 vs double steps
}

TEST(Dsq, BackwardMatchesFiniteDifferencesOfTheSoftStaircase) {
  // Gradients of dsq_quantize (f64) against central differences of l + Delta * soft(y), with the
  // interval index held constant (docs/methods.md, "DSQ"), per channel along axis 1.
  manual_seed(63);
  const int bits = 2;
  const Shape shape{4, 3};
  std::vector<double> xv = to_doubles(randn(shape) * 1.5);
  xv[0] = -5.0;  // below l
  xv[4] = 6.0;   // above u
  const std::vector<double> lo{-1.0, -2.0, -0.5}, hi{1.5, 1.0, 2.5}, al{0.2, 0.35, 0.1};
  Tensor x = tensor_of(xv, shape, DType::f64).requires_grad_();
  Tensor l = tensor_of(lo, {3}, DType::f64).requires_grad_();
  Tensor u = tensor_of(hi, {3}, DType::f64).requires_grad_();
  Tensor a = tensor_of(al, {3}, DType::f64).requires_grad_();
  Tensor up = randn(shape, DType::f64);
  sum(dsq_quantize(x, l, u, a, bits, 1) * up).backward();
  const std::vector<double> uv = to_doubles(up);
  std::vector<double> dx(xv.size()), dl(3, 0.0), du(3, 0.0), da(3, 0.0);
  const double eps = 1e-6;
  for (size_t i = 0; i < xv.size(); ++i) {
    const size_t c = size_t(channel_of(shape, 1, int64_t(i)));
    const double i0 = ref::dsq_interval(xv[i], lo[c], hi[c], bits);
    auto f = [&](double xx, double ll, double uu, double aa) {
      return ref::dsq_soft(xx, ll, uu, aa, bits, i0);
    };
    dx[i] = uv[i] * (f(xv[i] + eps, lo[c], hi[c], al[c]) - f(xv[i] - eps, lo[c], hi[c], al[c])) /
            (2 * eps);
    dl[c] += uv[i] * (f(xv[i], lo[c] + eps, hi[c], al[c]) - f(xv[i], lo[c] - eps, hi[c], al[c])) /
             (2 * eps);
    du[c] += uv[i] * (f(xv[i], lo[c], hi[c] + eps, al[c]) - f(xv[i], lo[c], hi[c] - eps, al[c])) /
             (2 * eps);
    da[c] += uv[i] * (f(xv[i], lo[c], hi[c], al[c] + eps) - f(xv[i], lo[c], hi[c], al[c] - eps)) /
             (2 * eps);
  }
  EXPECT_TENSOR_NEAR(x.grad(), tensor_of(dx, shape), 1e-6, 1e-7);
  EXPECT_TENSOR_NEAR(l.grad(), tensor_of(dl, {3}), 1e-6, 1e-7);
  EXPECT_TENSOR_NEAR(u.grad(), tensor_of(du, {3}), 1e-6, 1e-7);
  EXPECT_TENSOR_NEAR(a.grad(), tensor_of(da, {3}), 1e-6, 1e-7);
}

TEST(DsqQuantizer, InitAndClamp) {
  auto q = make<DsqQuantizer>("dsq", {{"bits", "3"}});
  EXPECT_EQ(q->named_parameters().size(), 3u);  // lower, upper, alpha
  q->forward(tensor_of({-0.5, 0.25, 3.0}, {3}));
  EXPECT_EQ(q->lower().item(), -0.5);
  EXPECT_EQ(q->upper().item(), 3.0);
  EXPECT_NEAR(q->alpha().item(), 0.2, 1e-7);
  {
    autograd::NoGradGuard guard;
    q->alpha().fill_(0.9);
  }
  q->clamp_parameters();
  EXPECT_EQ(q->alpha().item(), 0.5);
  auto fixed = make<DsqQuantizer>("dsq", {{"learn_alpha", "false"}});
  EXPECT_EQ(fixed->named_parameters().size(), 2u);
}

// --- binary / ternary ---------------------------------------------------------------------------

// Binary scales are means over the channel, summed in a different order on the GPU.
LOWBIT_QUANTIZER_TEST_CASES("binary", {{{"role", "weight"}}, {16, 3, 3, 8}, 1e-6, 1e-5},
                            {{{"role", "activation"}}, {8, 6, 6, 16}});
LOWBIT_QUANTIZER_TEST_CASES("ternary", {{{"per_channel", "true"}}, {16, 3, 3, 8}, 1e-6, 0});

TEST(Binary, PerChannelScaleAndExactBackward) {
  manual_seed(64);
  const Shape shape{3, 2, 2, 4};  // KRSC, n = 16 per output channel
  Tensor w = (randn(shape) * 0.8).requires_grad_();
  auto q = make<BinaryQuantizer>("binary", {{"role", "weight"}});
  Tensor y = q->forward(w);
  Tensor up = randn(shape);
  sum(y * up).backward();
  const std::vector<double> wv = to_doubles(w), uv = to_doubles(up);
  std::vector<double> a(3, 0.0), s(3, 0.0);
  for (size_t i = 0; i < wv.size(); ++i) {
    a[i / 16] += std::fabs(wv[i]) / 16.0;
    s[i / 16] += ref::sign(wv[i]) * uv[i];
  }
  std::vector<double> want(wv.size()), want_dw(wv.size());
  for (size_t i = 0; i < wv.size(); ++i) {
    const size_t k = i / 16;
    want[i] = a[k] * ref::sign(wv[i]);
    want_dw[i] = a[k] * (std::fabs(wv[i]) <= 1.0 ? uv[i] : 0.0) + ref::sign(wv[i]) / 16.0 * s[k];
  }
  EXPECT_TENSOR_NEAR(y, tensor_of(want, shape), 1e-6, 0);
  EXPECT_TENSOR_NEAR(w.grad(), tensor_of(want_dw, shape), 1e-5, 1e-6);
  // sign(0) = +1, never 0 (docs/methods.md, "Notation"); activations: plain sign with the clipped
  // STE.
  auto act = make<BinaryQuantizer>("binary", {{"role", "activation"}});
  Tensor x = tensor_of({0.0, -0.0, -0.3, 1.5, -2.0}, {5}).requires_grad_();
  Tensor b = act->forward(x);
  EXPECT_TENSOR_NEAR(b, tensor_of({1, 1, -1, 1, -1}, {5}), 0, 0);
  sum(b).backward();
  EXPECT_TENSOR_NEAR(x.grad(), tensor_of({1, 1, 1, 0, 0}, {5}), 0, 0);
}

TEST(Binary, ScaleTermMatchesFiniteDifferences) {
  // With every |w| > 1 the clipped STE term is 0 and the gradient is the exact derivative of
  // a_k * sign(w) through a_k = mean|w[k]|: finite differences apply.
  std::vector<double> v;
  for (int i = 0; i < 12; ++i) v.push_back((i % 3 == 0 ? -1.0 : 1.0) * (1.5 + 0.1 * i));
  auto f = [](const std::vector<Tensor>& in) { return binarize(in[0], true, true, 0); };
  EXPECT_TRUE(lowbit::testing::gradcheck(f, {tensor_of(v, {3, 4})}));
  auto ft = [](const std::vector<Tensor>& in) { return binarize(in[0], true, false); };
  EXPECT_TRUE(lowbit::testing::gradcheck(ft, {tensor_of(v, {3, 4})}));
}

TEST(Ternary, ThresholdScaleAndIdentityBackward) {
  Tensor w = tensor_of({0.1, -0.9, 0.5, 1.3, -0.05, 0.0, 0.7, -2.0}, {2, 4}).requires_grad_();
  auto q = make<TernaryQuantizer>("ternary", {});
  EXPECT_EQ(q->role(), QuantRole::weight);
  Tensor y = q->forward(w);
  // Per tensor: mean|w| = 5.55 / 8, Delta = 0.7 * that = 0.485625; kept: 0.9, 0.5, 1.3, 0.7, 2.0
  // with mean a = 1.08.
  EXPECT_TENSOR_NEAR(y, tensor_of({0, -1.08, 1.08, 1.08, 0, 0, 1.08, -1.08}, {2, 4}), 1e-6, 1e-7);
  sum(y * 3.0).backward();
  EXPECT_TENSOR_NEAR(w.grad(), full({2, 4}, 3.0), 0, 0);
  // Per channel: row 0 mean 0.7 -> Delta 0.49 keeps 0.9, 0.5, 1.3 (a = 0.9); row 1 mean 0.6875
  // -> Delta 0.48125 keeps 0.7, 2.0 (a = 1.35).
  auto pc = make<TernaryQuantizer>("ternary", {{"per_channel", "true"}});
  EXPECT_TENSOR_NEAR(pc->forward(w.detach()),
                     tensor_of({0, -0.9, 0.9, 0.9, 0, 0, 1.35, -1.35}, {2, 4}), 1e-6, 1e-7);
  // An all-zero channel stays zero.
  EXPECT_TENSOR_NEAR(ternarize(zeros({2, 3}), 0.7, true, 0), zeros({2, 3}), 0, 0);
}

// --- pow2 --------------------------------------------------------------------------------------

LOWBIT_QUANTIZER_TEST_CASES("pow2",
                            {{{"role", "weight"}, {"per_channel", "true"}, {"channels", "16"}},
                             {16, 3, 3, 8}});

TEST(Pow2, RoundsScalesToTheNearestPowerOfTwoInLog2) {
  EXPECT_EQ(round_pow2(0.3f), 0.25f);  // log2 = -1.74
  EXPECT_EQ(round_pow2(0.36f), 0.5f);  // -1.47
  EXPECT_EQ(round_pow2(1.0f), 1.0f);
  EXPECT_EQ(round_pow2(0.75f), 1.0f);  // -0.415
  EXPECT_EQ(round_pow2(0.7f), 0.5f);   // -0.515
  EXPECT_EQ(round_pow2(3.0f), 4.0f);   // 1.585
  EXPECT_EQ(round_pow2(0.0196078f), 0.015625f);
  // Just below and above 2^-0.5 (not a float): 0.70710677f rounds down, the next float up.
  EXPECT_EQ(round_pow2(0.70710677f), 0.5f);
  EXPECT_EQ(round_pow2(std::nextafter(0.70710677f, 1.0f)), 1.0f);
  EXPECT_EQ(round_pow2(1e-30), std::ldexp(1.0, -100));  // double too
}

TEST(Pow2Quantizer, UniformWithPowerOfTwoScales) {
  // Symmetric signed 8-bit on [-1, 2.5]: calc_qparams gives 2.5 / 127.5, rounded to 2^-6.
  auto q = make<Pow2Quantizer>("pow2", {{"role", "weight"}});
  Tensor w = tensor_of({-1.0, 0.3, 2.5, 1.01}, {4}).requires_grad_();
  Tensor y = q->forward(w);
  EXPECT_EQ(to_doubles(q->scale())[0], 0.015625);
  std::vector<double> want;
  for (double v : to_doubles(w)) want.push_back(ref::fake_quant(v, 0.015625, 0, -128, 127));
  EXPECT_TENSOR_NEAR(y, tensor_of(want, {4}), 0, 0);
  sum(y).backward();  // straight-through
  EXPECT_TENSOR_NEAR(w.grad(), tensor_of({1, 1, 0, 1}, {4}), 0, 0);
  // Asymmetric unsigned on [-0.37, 0.81]: s = 0.0046274513 -> 2^-8, z = round(0.37 * 256) = 95.
  auto a = make<Pow2Quantizer>("pow2", {{"observer", "minmax"}});
  a->forward(tensor_of({-0.37, 0.81}, {2}));
  EXPECT_EQ(to_doubles(a->scale())[0], 1.0 / 256.0);
  EXPECT_EQ(to_doubles(a->zero_point())[0], 95.0);
}

// --- modes, trees, ownership ---------------------------------------------------------------------

// How a quantized layer owns its quantizers (the QConv2d / QLinear pattern): as named children,
// so their parameters and buffers join the layer's, and train/eval/to() reach them.
class TinyQLinear : public layers::Module {
 public:
  TinyQLinear(int64_t in, int64_t out) {
    weight_ = randn({out, in}) * 0.3;
    register_parameter("weight", &weight_);
    weight_quantizer_ = register_module(
        "weight_quantizer",
        create_quantizer("lsq", QuantizerOptions{{"role", "weight"},
                                                 {"per_channel", "true"},
                                                 {"channels", std::to_string(out)}}));
    input_quantizer_ =
        register_module("input_quantizer", create_quantizer("uniform", {{"observer", "ema"}}));
  }
  Tensor forward(const Tensor& x) override {
    return matmul(input_quantizer_->forward(x), weight_quantizer_->forward(weight_), false, true);
  }
  std::string type_name() const override { return "TinyQLinear"; }

 private:
  Tensor weight_;
  QuantizerPtr weight_quantizer_, input_quantizer_;
};

TEST(QuantizerTree, LayersOwnQuantizersAsChildren) {
  manual_seed(70);
  auto layer = std::make_shared<TinyQLinear>(5, 3);
  std::map<std::string, Tensor> params;
  for (auto& [n, p] : layer->named_parameters()) params[n] = p;
  EXPECT_EQ(params.count("weight_quantizer.scale"), 1u);
  EXPECT_EQ(params.at("weight_quantizer.scale").shape(), (Shape{3}));
  const auto sd = layer->state_dict();
  EXPECT_EQ(sd.count("input_quantizer.scale"), 1u);
  EXPECT_EQ(sd.count("input_quantizer.min_val"), 1u);
  EXPECT_EQ(sd.count("weight_quantizer.initialized"), 1u);

  auto qs = find_quantizers(*layer);
  ASSERT_EQ(qs.size(), 2u);
  EXPECT_EQ(qs[0].first, "weight_quantizer");
  EXPECT_EQ(qs[1].first, "input_quantizer");

  Tensor x = rand({4, 5});
  set_calibrating(*layer, true);
  Tensor yc = layer->forward(x);  // calibration: float result
  EXPECT_TENSOR_NEAR(yc, matmul(x, params.at("weight"), false, true), 1e-6, 1e-6);
  set_calibrating(*layer, false);
  Tensor y = layer->forward(x);
  sum(y).backward();
  EXPECT_TRUE(params.at("weight_quantizer.scale").grad().defined());
  EXPECT_TRUE(params.at("weight").grad().defined());
  clamp_quantizer_parameters(*layer);
  set_quantization_enabled(*layer, false);
  EXPECT_TENSOR_NEAR(layer->forward(x), yc, 0, 0);
  set_quantizers_frozen(*layer, true);
  EXPECT_TRUE(qs[0].second->frozen());
}

TEST(QuantizerTree, ChecksTheChannelAxis) {
  auto q =
      create_quantizer("lsq", {{"role", "weight"}, {"per_channel", "true"}, {"channels", "4"}});
  EXPECT_THAT(error_of([&] {
                q->forward(zeros({3, 2}));
              }),
              HasSubstr("per-channel parameters have 4 elements but the input has 3 along axis 0"));
  EXPECT_THAT(error_of([&] { q->forward(zeros({4}, DType::i32)); }), HasSubstr("floating"));
}

}  // namespace
}  // namespace lowbit::quant
