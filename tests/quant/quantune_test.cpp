// Quantune, grid and random search (quant/quantune.h): the one-hot encoding and the index
// arithmetic of a space, the XGBoost wrapper learning a known function, and every search finding
// the optimum of a synthetic objective.
#include "quant/quantune.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <vector>

#include "tests/quant/quant_test_util.h"

namespace lowbit::quant {
namespace {

using ::testing::HasSubstr;

ConfigSpace space5() {
  return ConfigSpace({{"a", {"a0", "a1", "a2", "a3"}},
                      {"b", {"b0", "b1", "b2"}},
                      {"c", {"c0", "c1"}},
                      {"d", {"d0", "d1", "d2"}},
                      {"e", {"e0", "e1"}}});
}

TEST(ConfigSpace, IndexOneHotAndValues) {
  const ConfigSpace s = space5();
  EXPECT_EQ(s.size(), 4 * 3 * 2 * 3 * 2);
  EXPECT_EQ(s.encoded_size(), 4 + 3 + 2 + 3 + 2);
  std::set<Config> seen;
  for (int64_t i = 0; i < s.size(); ++i) {
    const Config c = s.config(i);
    EXPECT_EQ(s.index(c), i);
    seen.insert(c);
    const std::vector<float> h = s.one_hot(c);
    float total = 0;
    for (float v : h) total += v;
    EXPECT_EQ(total, 5.0f);
  }
  EXPECT_EQ(int64_t(seen.size()), s.size());
  // Last knob fastest: index 1 is e1, index 2 is d1.
  EXPECT_EQ(s.config(1), (Config{0, 0, 0, 0, 1}));
  EXPECT_EQ(s.config(2), (Config{0, 0, 0, 1, 0}));
  EXPECT_EQ(s.one_hot({1, 2, 0, 0, 1}),
            (std::vector<float>{0, 1, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1}));
  EXPECT_EQ(s.describe({1, 2, 0, 0, 1}), "a=a1 b=b2 c=c0 d=d0 e=e1");
  EXPECT_EQ(s.value_index("d", "d2"), 2);
  EXPECT_THAT(testing_util::error_of([&] { s.value_index("d", "d9"); }),
              HasSubstr("knob d: unknown value 'd9'; allowed: d0, d1, d2"));
  EXPECT_THAT(testing_util::error_of([&] { s.value_index("z", "d0"); }),
              HasSubstr("unknown knob 'z'"));
}

// An additive objective with one interaction and a unique maximum at {3, 1, 1, 2, 0}.
double synthetic(const Config& c) {
  static const double w[5][4] = {{0.0, 0.1, 0.05, 0.3},
                                 {0.0, 0.2, 0.1, 0},
                                 {0.0, 0.15, 0, 0},
                                 {0.1, 0.0, 0.25, 0},
                                 {0.05, 0.0, 0, 0}};
  double v = 0.5;
  for (size_t i = 0; i < 5; ++i) v += w[i][c[i]];
  if (c[0] == 3 && c[3] == 2) v += 0.05;
  return v;
}
const Config kBest{3, 1, 1, 2, 0};

TEST(Search, GridAndRandomOverTheWholeSpaceFindTheOptimum) {
  const ConfigSpace s = space5();
  SearchOptions o;
  const SearchResult g = grid_search(s, synthetic, o);
  EXPECT_EQ(int64_t(g.measured.size()), s.size());
  EXPECT_EQ(g.best.config, kBest);
  EXPECT_DOUBLE_EQ(g.best.value, synthetic(kBest));
  o.seed = 11;
  const SearchResult r = random_search(s, synthetic, o);
  EXPECT_EQ(int64_t(r.measured.size()), s.size());
  EXPECT_EQ(r.best.config, kBest);
  // Distinct configurations, and a budget is respected.
  std::set<Config> seen;
  for (const auto& m : r.measured) seen.insert(m.config);
  EXPECT_EQ(int64_t(seen.size()), s.size());
  o.budget = 10;
  EXPECT_EQ(random_search(s, synthetic, o).measured.size(), 10u);
  EXPECT_EQ(grid_search(s, synthetic, o).measured.size(), 10u);
}

// A cost model that knows the objective: Quantune then measures the optimum in its first round.
class Oracle : public CostModel {
 public:
  explicit Oracle(const ConfigSpace& s) : s_(s) {}
  void fit(const std::vector<std::vector<float>>& x, const std::vector<float>& y) override {
    fits_ += 1;
    EXPECT_EQ(x.size(), y.size());
  }
  std::vector<float> predict(const std::vector<std::vector<float>>& x) override {
    std::vector<float> out;
    for (const auto& h : x) {
      Config c;
      size_t off = 0;
      for (const auto& k : s_.knobs()) {
        for (size_t j = 0; j < k.values.size(); ++j) {
          if (h[off + j] == 1.0f) c.push_back(int64_t(j));
        }
        off += k.values.size();
      }
      out.push_back(float(synthetic(c)));
    }
    return out;
  }
  int fits_ = 0;

 private:
  const ConfigSpace& s_;
};

TEST(Search, QuantuneLoopWithAnOracleStopsAfterPatienceRounds) {
  const ConfigSpace s = space5();
  Oracle oracle(s);
  SearchOptions o;
  o.seed = 1;
  const SearchResult r = quantune_search(s, synthetic, o, oracle);
  EXPECT_EQ(r.best.config, kBest);
  // 8 initial, then a round that finds the optimum and 3 without improvement: 4 rounds of 4
  // (+1 random with probability 0.1 each).
  EXPECT_EQ(r.rounds, 1 + o.patience);
  EXPECT_GE(r.measured.size(), size_t(8 + 4 * 4));
  EXPECT_LE(r.measured.size(), size_t(8 + 4 * 5));
  EXPECT_EQ(oracle.fits_, r.rounds);
  std::set<Config> seen;
  for (const auto& m : r.measured) seen.insert(m.config);
  EXPECT_EQ(seen.size(), r.measured.size());  // nothing measured twice
}

TEST(Xgboost, LearnsAKnownFunction) {
  if (!have_xgboost()) GTEST_SKIP() << "built without libxgboost-dev";
  const ConfigSpace s = space5();
  // Train on every other configuration of the additive objective; predict the rest.
  std::vector<std::vector<float>> xt, xv;
  std::vector<float> yt;
  std::vector<double> yv;
  for (int64_t i = 0; i < s.size(); ++i) {
    const Config c = s.config(i);
    (i % 2 ? xv : xt).push_back(s.one_hot(c));
    if (i % 2)
      yv.push_back(synthetic(c));
    else
      yt.push_back(float(synthetic(c)));
  }
  auto m = make_xgboost_model(0);
  m->fit(xt, yt);
  const std::vector<float> p = m->predict(xv);
  ASSERT_EQ(p.size(), yv.size());
  double err = 0, var = 0, mean = 0;
  for (double v : yv) mean += v / double(yv.size());
  for (size_t i = 0; i < p.size(); ++i) {
    err += (p[i] - yv[i]) * (p[i] - yv[i]);
    var += (yv[i] - mean) * (yv[i] - mean);
  }
  // Held-out R^2 above 0.9 (the function is additive up to one small interaction).
  EXPECT_GT(1.0 - err / var, 0.9);
}

TEST(Search, QuantuneWithXgboostFindsTheOptimum) {
  if (!have_xgboost()) GTEST_SKIP() << "built without libxgboost-dev";
  const ConfigSpace s = space5();
  for (uint64_t seed : {0, 1, 2}) {
    auto m = make_xgboost_model(seed);
    SearchOptions o;
    o.seed = seed;
    const SearchResult r = quantune_search(s, synthetic, o, *m);
    EXPECT_EQ(r.best.config, kBest) << "seed " << seed << ": " << s.describe(r.best.config);
    EXPECT_LT(int64_t(r.measured.size()), s.size());  // fewer than the grid's 144
  }
}

}  // namespace
}  // namespace lowbit::quant
