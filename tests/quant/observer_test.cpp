// Observers (quant/observer.h) through the "uniform" quantizer: min-max and EMA against values
// computed by hand and against PyTorch's observers, numpy-"linear" percentiles, the MSE search
// (argmin, ties to the larger t), the histogram fallback, and the modes that decide when an
// observer runs.
#include "quant/observer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/random.h"
#include "quant/quantizer.h"
#include "quant/uniform.h"
#include "tests/common/test_util.h"
#include "tests/quant/quant_test_util.h"
#include "tests/quant/quantizer_cases.h"
#include "tests/reference/quant_ref.h"

namespace lowbit::quant {
namespace {

using lowbit::testing::tensor_of;
using lowbit::testing::to_doubles;
using ::testing::HasSubstr;
using testing_util::error_of;
namespace ref = lowbit::reference;

std::shared_ptr<UniformQuantizer> uniform(const QuantizerOptions& o) {
  auto q = std::dynamic_pointer_cast<UniformQuantizer>(create_quantizer("uniform", o));
  EXPECT_NE(q, nullptr);
  return q;
}

double min_of(const std::shared_ptr<UniformQuantizer>& q, size_t c = 0) {
  return to_doubles(q->min_val())[c];
}
double max_of(const std::shared_ptr<UniformQuantizer>& q, size_t c = 0) {
  return to_doubles(q->max_val())[c];
}

TEST(MinMaxObserver, RunningExtremesAndPyTorchQParams) {
  auto q = uniform({{"observer", "minmax"}, {"bits", "8"}, {"signed", "false"}});
  q->set_calibrating(true);
  Tensor a = tensor_of({1.0, -2.0, 3.0}, {3}), b = tensor_of({0.5, 4.0}, {2});
  EXPECT_TRUE(q->forward(a).same(a));  // calibration returns the input itself
  q->forward(b);
  q->set_calibrating(false);
  EXPECT_EQ(min_of(q), -2.0);
  EXPECT_EQ(max_of(q), 4.0);
  // PyTorch MinMaxObserver(quint8) on the same two batches: scale 0.0235294122248888, zp 85.
  EXPECT_EQ(to_doubles(q->scale())[0], double(0.0235294122248888f));
  EXPECT_EQ(to_doubles(q->zero_point())[0], 85.0);
}

TEST(MinMaxObserver, PerChannelSymmetricWeightsMatchPyTorch) {
  auto q = uniform({{"role", "weight"}, {"per_channel", "true"}, {"channels", "2"}});
  EXPECT_EQ(q->observer().name(), std::string("minmax"));  // weight default
  EXPECT_TRUE(q->symmetric());
  Tensor w = tensor_of({0.5, -1.5, 0.25, 2.0, 0.1, -0.3}, {2, 3});
  q->set_calibrating(true);
  q->forward(w);
  q->set_calibrating(false);
  EXPECT_EQ(to_doubles(q->min_val()), (std::vector<double>{-1.5, double(-0.3f)}));
  EXPECT_EQ(to_doubles(q->max_val()), (std::vector<double>{0.5, 2.0}));
  // torch PerChannelMinMaxObserver(ch_axis=0, qint8, per_channel_symmetric).
  EXPECT_EQ(to_doubles(q->scale()),
            (std::vector<double>{double(0.0117647061124444f), double(0.01568627543747425f)}));
  EXPECT_EQ(to_doubles(q->zero_point()), (std::vector<double>{0, 0}));
  // And the forward is fake_quantize with those.
  q->eval();
  Tensor y = q->forward(w);
  const std::vector<double> wv = to_doubles(w), s = to_doubles(q->scale());
  for (size_t i = 0; i < wv.size(); ++i) {
    EXPECT_EQ(to_doubles(y)[i], ref::fake_quant(wv[i], s[i / 3], 0, -128, 127)) << i;
  }
}

TEST(EmaObserver, MovingAverageWithC001MatchesHandAndPyTorch) {
  auto q = uniform({{"observer", "ema"}});  // activation default: unsigned, asymmetric
  q->train();
  q->forward(tensor_of({-1.0, 2.0}, {2}));
  EXPECT_EQ(min_of(q), -1.0);  // first batch: taken as is
  EXPECT_EQ(max_of(q), 2.0);
  q->forward(tensor_of({-3.0, 5.0}, {2}));
  q->forward(tensor_of({0.5, 0.7}, {2}));
  // x += c * (cur - x) in fp32, c = 0.01f.
  float mn = -1.0f, mx = 2.0f;
  for (auto [lo, hi] : {std::pair<float, float>{-3.0f, 5.0f}, {0.5f, 0.7f}}) {
    mn = mn + (lo - mn) * 0.01f;
    mx = mx + (hi - mx) * 0.01f;
  }
  EXPECT_EQ(min_of(q), double(mn));
  EXPECT_EQ(max_of(q), double(mx));
  // torch MovingAverageMinMaxObserver(quint8) on the same three batches.
  EXPECT_EQ(min_of(q), -1.0047999620437622);
  EXPECT_EQ(max_of(q), 2.016700029373169);
  EXPECT_EQ(to_doubles(q->scale())[0], 0.011849019676446915);
  EXPECT_EQ(to_doubles(q->zero_point())[0], 85.0);
}

TEST(EmaObserver, ConstantIsAnOption) {
  auto q = uniform({{"observer", "ema"}, {"ema_constant", "0.5"}});
  q->forward(tensor_of({0.0, 2.0}, {2}));
  q->forward(tensor_of({0.0, 4.0}, {2}));
  EXPECT_EQ(max_of(q), 3.0);
  EXPECT_THAT(error_of([] {
                create_quantizer("uniform", {{"ema_constant", "0"}});
              }),
              HasSubstr("ema_constant = '0' is out of range"));
}

TEST(PercentileObserver, NumpyLinearOverAllCalibrationValues) {
  auto q =
      uniform({{"observer", "percentile"}, {"percentile_low", "10"}, {"percentile_high", "90"}});
  q->set_calibrating(true);
  std::vector<double> first, second;
  for (int i = 0; i < 100; ++i) (i % 2 ? first : second).push_back(double(i) - 30.0);
  q->forward(tensor_of(first, {50}));
  q->forward(tensor_of(second, {5, 10}));
  q->set_calibrating(false);
  (void)q->scale();  // the range is computed when the qparams are needed
  // Sorted values -30..69 (M = 100): np.percentile(v, 10) = v[9.9] = -20.1, 90 -> v[89.1] = 59.1.
  EXPECT_NEAR(min_of(q), -20.1, 1e-5);
  EXPECT_NEAR(max_of(q), 59.1, 1e-5);
  EXPECT_DOUBLE_EQ(percentile_linear({0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, 90.0), 8.1);
  EXPECT_DOUBLE_EQ(percentile_linear({0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, 10.0), 0.9);
  EXPECT_DOUBLE_EQ(percentile_linear({5}, 99.99), 5.0);
  EXPECT_DOUBLE_EQ(percentile_linear({1, 3}, 100.0), 3.0);
}

// A distributed run calibrates on each rank's shard, then broadcasts rank 0's buffers: the range
// is fixed when calibration ends, so the buffers written afterwards decide the qparams (the
// stored values of this rank must not be finalised over them). Every stored-values observer.
TEST(PercentileObserver, BuffersWrittenAfterCalibrationDecideTheRange) {
  for (const char* observer : {"percentile", "mse", "kl"}) {
    auto q = uniform({{"observer", observer}});
    q->set_calibrating(true);
    std::vector<double> v;
    for (int i = 0; i < 100; ++i) v.push_back(double(i) - 30.0);
    q->forward(tensor_of(v, {100}));
    q->set_calibrating(false);
    EXPECT_LT(min_of(q), 0.0) << observer;        // computed when calibration ended
    for (auto& [name, b] : q->named_buffers()) {  // what a broadcast from rank 0 writes
      if (name == "min_val") b.copy_(tensor_of({-1.0}, {1}));
      if (name == "max_val") b.copy_(tensor_of({3.0}, {1}));
    }
    EXPECT_NEAR(to_doubles(q->scale())[0], 4.0 / 255.0, 1e-7) << observer;
    EXPECT_EQ(min_of(q), -1.0) << observer;
    EXPECT_EQ(max_of(q), 3.0) << observer;
  }
}

TEST(PercentileObserver, DefaultsAndPerChannel) {
  auto q = uniform({{"observer", "percentile"},
                    {"role", "weight"},
                    {"per_channel", "true"},
                    {"channels", "2"},
                    {"axis", "1"}});
  std::vector<double> v;
  for (int i = 0; i < 1001; ++i) {
    v.push_back(double(i));       // channel 0: 0..1000
    v.push_back(-double(i) / 2);  // channel 1: -500..0
  }
  q->set_calibrating(true);
  q->forward(tensor_of(v, {1001, 2}));
  q->set_calibrating(false);
  (void)q->scale();
  // 0.01 and 99.99 percentiles: positions 0.1 and 999.9.
  EXPECT_NEAR(min_of(q, 0), 0.1, 1e-5);
  EXPECT_NEAR(max_of(q, 0), 999.9, 1e-3);
  EXPECT_NEAR(min_of(q, 1), -499.95, 1e-3);
  EXPECT_NEAR(max_of(q, 1), -0.05, 1e-5);
}

TEST(PercentileObserver, HistogramFallbackIsClose) {
  manual_seed(40);
  auto exact = uniform({{"observer", "percentile"}, {"percentile_high", "99"}});
  auto hist =
      uniform({{"observer", "percentile"}, {"percentile_high", "99"}, {"max_values", "1000"}});
  exact->set_calibrating(true);
  hist->set_calibrating(true);
  for (int b = 0; b < 4; ++b) {
    Tensor x = randn({5000}) * double(1 + b);  // the range grows: re-binning
    exact->forward(x);
    hist->forward(x);
  }
  exact->set_calibrating(false);
  hist->set_calibrating(false);
  (void)exact->scale();
  (void)hist->scale();
  // 2048 bins over about [-16, 16]: a bin is ~0.016 wide.
  EXPECT_NEAR(max_of(hist), max_of(exact), 0.05);
  EXPECT_NEAR(min_of(hist), min_of(exact), 0.05);
}

TEST(MseObserver, ArgminWithTiesToTheLargerT) {
  // 1-bit unsigned, T = 4. Hand-computed squared errors (docs/methods.md, "Observers" qparams,
  // fp32):
  //   [-4, 0, 2, 4]:   t = 1/4: 20, 2/4: 20, 3/4: 24, 4/4: 36  -> tie, take t = 1/2
  //   [-4, -2, -2, -2]: 12, 4, 4, 12                            -> tie, take t = 3/4
  const QuantizerOptions o{
      {"observer", "mse"}, {"bits", "1"}, {"signed", "false"}, {"mse_steps", "4"}};
  auto a = uniform(o);
  a->set_calibrating(true);
  a->forward(tensor_of({-4, 0, 2, 4}, {4}));
  a->set_calibrating(false);
  (void)a->scale();
  EXPECT_EQ(min_of(a), -2.0);
  EXPECT_EQ(max_of(a), 2.0);
  auto b = uniform(o);
  b->set_calibrating(true);
  b->forward(tensor_of({-4, -2, -2, -2}, {4}));
  b->set_calibrating(false);
  (void)b->scale();
  EXPECT_EQ(min_of(b), -3.0);
  EXPECT_EQ(max_of(b), -1.5);
}

TEST(MseObserver, PicksTheLeastSquaredErrorPerChannel) {
  manual_seed(41);
  Tensor w = randn({3, 200});
  {
    autograd::NoGradGuard guard;
    w.select(0, 1).copy_(w.select(0, 1) * 5.0);
    w.select(1, 7).fill_(40.0);  // an outlier: clipping it pays off
  }
  auto q = uniform({{"observer", "mse"},
                    {"role", "weight"},
                    {"per_channel", "true"},
                    {"channels", "3"},
                    {"symmetric", "true"},
                    {"bits", "4"},
                    {"mse_steps", "20"}});
  q->set_calibrating(true);
  q->forward(w);
  q->set_calibrating(false);
  (void)q->scale();
  // Brute force with the reference fake quant and docs/methods.md, "Observers" qparams.
  const std::vector<double> wv = to_doubles(w);
  for (size_t c = 0; c < 3; ++c) {
    std::vector<double> row(wv.begin() + c * 200, wv.begin() + (c + 1) * 200);
    const float lo = float(*std::min_element(row.begin(), row.end()));
    const float hi = float(*std::max_element(row.begin(), row.end()));
    double best = INFINITY;
    float best_t = 0;
    for (int j = 1; j <= 20; ++j) {
      const float t = float(j) / 20.0f;
      const float a = std::max(-std::min(t * lo, 0.0f), std::max(t * hi, 0.0f));
      const float s = std::max(a / (15.0f / 2.0f), 1.1920929e-07f);
      double e = 0;
      for (double v : row) {
        const double d = v - ref::fake_quant(v, s, 0, -8, 7);
        e += d * d;
      }
      if (e <= best) {
        best = e;
        best_t = t;
      }
    }
    EXPECT_EQ(min_of(q, c), double(best_t * lo)) << "channel " << c;
    EXPECT_EQ(max_of(q, c), double(best_t * hi)) << "channel " << c;
  }
  EXPECT_LT(max_of(q, 1), 40.0);  // the outlier was clipped
}

// KL-entropy threshold by hand: |x| counts [6, 2, 1, 1] in 4 bins of width 1 (amax 4), 2 levels
// (1-bit unsigned). i = 2: P = [.6, .4], Q = [6, 2]/8, KL = .6 ln .8 + .4 ln 1.6 = 0.0541;
// i = 3: P = [.6, .2, .2], Q = [6, 1.5, 1.5]/9, KL = .6 ln .9 + .4 ln 1.2 = 0.0097;
// i = 4: P = [.6, .2, .1, .1], Q = [4, 4, 1, 1]/10, KL = .6 ln 1.5 + .2 ln .5 = 0.1046.
// The least is i = 3: threshold 3 (smoothing changes nothing, no bin is empty).
TEST(KlObserver, ThresholdByHand) {
  EXPECT_DOUBLE_EQ(kl_threshold({6, 2, 1, 1}, 4.0, 2), 3.0);
  // [4, 4, 1, 1]: at i = 4 Q equals P (KL 0), every smaller i moves mass: no clipping.
  EXPECT_DOUBLE_EQ(kl_threshold({4, 4, 1, 1}, 4.0, 2), 4.0);
  auto q = uniform({{"observer", "kl"}, {"bits", "1"}, {"signed", "false"}, {"kl_bins", "4"}});
  q->set_calibrating(true);
  q->forward(tensor_of({0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 1.5, 1.5, 2.5, 4.0}, {10}));
  q->set_calibrating(false);
  (void)q->scale();
  EXPECT_DOUBLE_EQ(min_of(q), 0.5);  // the data's own minimum (zero is added by calc_qparams)
  EXPECT_DOUBLE_EQ(max_of(q), 3.0);
}

TEST(KlObserver, OutlierIsClippedAndSignedDataSymmetric) {
  // 4000 values spread over [-1, 1] and one at -50: 8-bit signed (128 levels a side), 2048 bins.
  std::vector<double> v;
  for (int i = 0; i < 4000; ++i) v.push_back(-1.0 + 2.0 * (i + 0.5) / 4000.0);
  v.push_back(-50.0);
  auto q = uniform({{"observer", "kl"}, {"bits", "8"}, {"signed", "true"}});
  q->set_calibrating(true);
  q->forward(tensor_of(v, {int64_t(v.size())}));
  q->set_calibrating(false);
  (void)q->scale();
  // The threshold lands near the bulk (the least candidate is 128 of 2048 bins of 50, 3.125),
  // far from the outlier; max stays the data's own.
  EXPECT_GE(min_of(q), -3.2);
  EXPECT_LT(min_of(q), -0.9);
  EXPECT_FLOAT_EQ(float(max_of(q)), float(v[3999]));
}

TEST(KlObserver, ExactZerosDoNotPullTheThresholdDown) {
  // Half zeros (a post-ReLU tensor), half spread evenly over (0, 1]: at 4 bits the threshold
  // stays near the top (counted in the histogram, the zeros made the least candidate win,
  // 16/2048 of the range).
  std::vector<double> v(4000, 0.0);
  for (int i = 0; i < 4000; ++i) v.push_back((i + 1) / 4000.0);
  auto q = uniform({{"observer", "kl"}, {"bits", "4"}, {"signed", "false"}});
  q->set_calibrating(true);
  q->forward(tensor_of(v, {int64_t(v.size())}));
  q->set_calibrating(false);
  (void)q->scale();
  EXPECT_EQ(min_of(q), 0.0);
  EXPECT_GT(max_of(q), 0.5);
}

LOWBIT_QUANTIZER_TEST_CASES("uniform", {{{"observer", "ema"}}, {8, 6, 6, 16}},
                            {{{"role", "weight"}, {"per_channel", "true"}, {"channels", "16"}},
                             {16, 3, 3, 8}},
                            {{{"observer", "percentile"}}, {4, 5, 5, 8}},
                            {{{"observer", "mse"}, {"role", "weight"}}, {16, 3, 3, 8}});

TEST(UniformQuantizer, WhenObserversRun) {
  // ema/minmax: every training step unless frozen; not in eval.
  auto q = uniform({{"observer", "minmax"}});
  q->train();
  q->forward(tensor_of({0.0, 1.0}, {2}));
  q->forward(tensor_of({0.0, 2.0}, {2}));
  EXPECT_EQ(max_of(q), 2.0);
  q->set_frozen(true);
  q->forward(tensor_of({0.0, 3.0}, {2}));
  EXPECT_EQ(max_of(q), 2.0);
  q->set_frozen(false);
  q->eval();
  q->forward(tensor_of({0.0, 4.0}, {2}));
  EXPECT_EQ(max_of(q), 2.0);
  // Disabled: the input comes back untouched and nothing is observed.
  q->train();
  q->set_enabled(false);
  Tensor x = tensor_of({0.0, 5.0}, {2});
  EXPECT_TRUE(q->forward(x).same(x));
  EXPECT_EQ(max_of(q), 2.0);

  // percentile/mse: only while calibrating, or on the first training batch without statistics.
  auto p =
      uniform({{"observer", "percentile"}, {"percentile_high", "100"}, {"percentile_low", "0"}});
  p->train();
  p->forward(tensor_of({0.0, 1.0}, {2}));
  p->forward(tensor_of({0.0, 7.0}, {2}));
  EXPECT_EQ(max_of(p), 1.0);

  // Eval before anything was observed is an error that says what to do.
  auto e = uniform({});
  e->eval();
  EXPECT_THAT(error_of([&] { e->forward(tensor_of({1.0}, {1})); }), HasSubstr("calibrate it"));
}

TEST(UniformQuantizer, StateDictCarriesTheStatistics) {
  auto a = uniform({{"observer", "ema"}});
  a->forward(tensor_of({-1.0, 3.0}, {2}));
  auto sd = a->state_dict();
  for (const char* k : {"scale", "zero_point", "min_val", "max_val"})
    EXPECT_EQ(sd.count(k), 1u) << k;
  EXPECT_EQ(sd.at("zero_point").dtype(), DType::i32);
  auto b = uniform({{"observer", "ema"}});
  b->load_state_dict(sd);
  b->eval();
  Tensor x = tensor_of({-0.77, 0.1, 2.9}, {3});
  a->eval();
  EXPECT_TENSOR_NEAR(b->forward(x), a->forward(x), 0, 0);
}

}  // namespace
}  // namespace lowbit::quant
