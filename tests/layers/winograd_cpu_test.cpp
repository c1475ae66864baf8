// lowbit's Winograd F(2x2, 3x3) and F(4x4, 3x3) CPU kernels (layers/winograd_cpu.h) against the
// naive loops in double: forward, data gradient, weight and bias gradients on maps that are not
// multiples of the tiles (1x1, 1x5, 3x3, 7x7, ...), channel counts 16-112 (every GEMM register
// block), and thread counts 1 to 3. Skipped on CPUs without AVX-512F, where conv2d falls back to
// oneDNN.
#include "layers/winograd_cpu.h"

#include <gmock/gmock.h>
#include <omp.h>

#include <cmath>
#include <random>
#include <vector>

#include "layers/conv2d.h"
#include "tests/reference/conv_ref.h"

namespace lowbit::layers::detail {
namespace {

struct Case {
  int tile;  // 2: F(2x2, 3x3), 4: F(4x4, 3x3)
  int64_t n, h, w, c, k;
};

std::vector<float> normal(size_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(count);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<double> doubles(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// The exact gradients (double) of sum(y * g) for y = conv3x3(x, w, padding 1) + b.
struct Grads {
  std::vector<double> dx, dw, db;
};
Grads naive_grads(const Case& p, const std::vector<float>& x, const std::vector<float>& w,
                  const std::vector<float>& g) {
  Grads d{std::vector<double>(x.size(), 0.0), std::vector<double>(w.size(), 0.0),
          std::vector<double>(size_t(p.k), 0.0)};
  for (int64_t n = 0; n < p.n; ++n)
    for (int64_t oh = 0; oh < p.h; ++oh)
      for (int64_t ow = 0; ow < p.w; ++ow)
        for (int64_t k = 0; k < p.k; ++k) {
          const double gv = g[size_t(((n * p.h + oh) * p.w + ow) * p.k + k)];
          d.db[size_t(k)] += gv;
          for (int64_t r = 0; r < 3; ++r)
            for (int64_t s = 0; s < 3; ++s) {
              const int64_t ih = oh - 1 + r, iw = ow - 1 + s;
              if (ih < 0 || ih >= p.h || iw < 0 || iw >= p.w) continue;
              for (int64_t c = 0; c < p.c; ++c) {
                const size_t xi = size_t(((n * p.h + ih) * p.w + iw) * p.c + c);
                const size_t wi = size_t(((k * 3 + r) * 3 + s) * p.c + c);
                d.dx[xi] += gv * double(w[wi]);
                d.dw[wi] += gv * double(x[xi]);
              }
            }
        }
  return d;
}

// max |a - b| <= atol + rtol * max |b| over the whole tensor: Winograd's transforms combine up to
// (tile + 2)^2 rounded terms, so the error scales with the largest values, not each one's.
void expect_close(const std::vector<float>& a, const std::vector<double>& b, double atol,
                  double rtol, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  double worst = 0.0, scale = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, std::fabs(double(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(b[i]));
  }
  EXPECT_LE(worst, atol + rtol * scale) << what << ": worst error " << worst << ", scale " << scale;
  EXPECT_GT(scale, 0.0) << what;  // the comparison is not vacuous
}

class Winograd : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!wino_cpu_supported()) GTEST_SKIP() << "no AVX-512F on this CPU";
  }
};

// The rounding error per sqrt(summed term) relative to the largest output, measured (F(2x2):
// 1e-8 to 1.5e-8; F(4x4): 3e-8 to 1.2e-7) with a margin of 5-7.
double error_scale(int tile) { return tile == 2 ? 1e-7 : 6e-7; }

TEST_P(Winograd, MatchesTheNaiveLoops) {
  const Case p = GetParam();
  const std::vector<float> x = normal(size_t(p.n * p.h * p.w * p.c), 1);
  const std::vector<float> w = normal(size_t(p.k * 9 * p.c), 2);
  const std::vector<float> b = normal(size_t(p.k), 3);
  const std::vector<float> g = normal(size_t(p.n * p.h * p.w * p.k), 4);

  reference::ConvGeometry geo{p.n, p.h, p.w, p.c, p.k, 3, 3};
  geo.pad_h = geo.pad_w = 1;
  const std::vector<double> y_ref = reference::conv2d_nhwc(geo, doubles(x), doubles(w), doubles(b));
  const Grads ref = naive_grads(p, x, w, g);

  std::vector<float> y(g.size()), dx(x.size()), dw(w.size()), db(b.size());
  wino_forward(p.tile, x.data(), w.data(), b.data(), y.data(), p.n, p.h, p.w, p.c, p.k);
  wino_backward_data(p.tile, g.data(), w.data(), dx.data(), p.n, p.h, p.w, p.c, p.k);
  wino_backward_weights(p.tile, x.data(), g.data(), dw.data(), db.data(), p.n, p.h, p.w, p.c, p.k);
  const double e = error_scale(p.tile);
  expect_close(y, y_ref, 1e-5, e * std::sqrt(double(9 * p.c)), "forward");
  expect_close(dx, ref.dx, 1e-5, e * std::sqrt(double(9 * p.k)), "data gradient");
  expect_close(dw, ref.dw, 1e-5, e * std::sqrt(double(p.n * p.h * p.w)), "weight gradient");
  expect_close(db, ref.db, 1e-5, 1e-6, "bias gradient");

  // Without a bias the forward is the same sum less the bias, and no bias gradient is asked for.
  std::vector<float> y0(g.size()), dw0(w.size());
  wino_forward(p.tile, x.data(), w.data(), nullptr, y0.data(), p.n, p.h, p.w, p.c, p.k);
  wino_backward_weights(p.tile, x.data(), g.data(), dw0.data(), nullptr, p.n, p.h, p.w, p.c, p.k);
  std::vector<double> y0_ref = y_ref;
  for (size_t i = 0; i < y0_ref.size(); ++i) y0_ref[i] -= b[i % b.size()];
  expect_close(y0, y0_ref, 1e-5, e * std::sqrt(double(9 * p.c)), "forward without bias");
  EXPECT_EQ(dw0, dw);
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (int tile : {2, 4}) {
    for (const Case& c : {Case{0, 1, 1, 1, 16, 16},     // one pixel: a single tile, mostly padding
                          Case{0, 2, 1, 5, 16, 32},     // one row
                          Case{0, 1, 3, 3, 32, 16},     // odd map: the last tile partly outside
                          Case{0, 3, 4, 6, 16, 48},     // 48 = 32 + 16 output blocks
                          Case{0, 2, 7, 7, 64, 64},     // ResNet's 7x7 stage; 64 = one 4x4 block
                          Case{0, 2, 9, 5, 80, 16},     // several tile blocks per image
                          Case{0, 5, 6, 7, 48, 80},     // 80 = 64 + 16 output blocks
                          Case{0, 1, 12, 10, 16, 112},  // 112 = 64 + 32 + 16
                          Case{0, 2, 8, 8, 32, 32}}) {  // whole tiles for both sizes
      Case t = c;
      t.tile = tile;
      out.push_back(t);
    }
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, Winograd, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           const Case& c = i.param;
                           return "f" + std::to_string(c.tile) + "_n" + std::to_string(c.n) + "_" +
                                  std::to_string(c.h) + "x" + std::to_string(c.w) + "_c" +
                                  std::to_string(c.c) + "_k" + std::to_string(c.k);
                         });

// Forward and data gradient do not depend on the thread count (each tile is computed by one
// thread in a fixed order); the weight gradient sums per-thread partials, so it is repeatable for
// a given thread count and close across counts.
TEST(WinogradThreads, ForwardAndDataGradientAreTheSameForAnyThreadCount) {
  if (!wino_cpu_supported()) GTEST_SKIP() << "no AVX-512F on this CPU";
  const int64_t n = 4, h = 17, w = 13, c = 32, k = 48;  // F(4x4): 80 tiles, 4 weight blocks
  const std::vector<float> x = normal(size_t(n * h * w * c), 5);
  const std::vector<float> wt = normal(size_t(k * 9 * c), 6);
  const std::vector<float> g = normal(size_t(n * h * w * k), 7);
  const int saved = omp_get_max_threads();
  for (int tile : {2, 4}) {
    SCOPED_TRACE(::testing::Message() << "tile " << tile);
    std::vector<std::vector<float>> y, dx, dw;
    for (int threads : {1, 2, 2, 3}) {
      omp_set_num_threads(threads);
      y.emplace_back(g.size());
      dx.emplace_back(x.size());
      dw.emplace_back(wt.size());
      wino_forward(tile, x.data(), wt.data(), nullptr, y.back().data(), n, h, w, c, k);
      wino_backward_data(tile, g.data(), wt.data(), dx.back().data(), n, h, w, c, k);
      wino_backward_weights(tile, x.data(), g.data(), dw.back().data(), nullptr, n, h, w, c, k);
    }
    omp_set_num_threads(saved);
    for (size_t i = 1; i < y.size(); ++i) {
      EXPECT_EQ(y[i], y[0]) << "forward, run " << i;
      EXPECT_EQ(dx[i], dx[0]) << "data gradient, run " << i;
    }
    EXPECT_EQ(dw[2], dw[1]) << "weight gradient, the same thread count twice";
    EXPECT_THAT(dw[3], ::testing::Pointwise(::testing::FloatNear(1e-3f), dw[0]));
  }
}

// Where the kernel applies: 3x3, stride 1, padding 1, no dilation or groups, 16-multiples.
TEST(WinogradApplies, OnlyToTheConvolutionsItComputes) {
  const bool cpu = wino_cpu_supported();
  EXPECT_EQ(wino_applies(16, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1), cpu);
  EXPECT_EQ(wino_applies(64, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1), cpu);
  EXPECT_FALSE(wino_applies(8, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1));   // channels
  EXPECT_FALSE(wino_applies(16, 24, 3, 3, 1, 1, 1, 1, 1, 1, 1));  // filters
  EXPECT_FALSE(wino_applies(16, 16, 3, 3, 2, 2, 1, 1, 1, 1, 1));  // stride
  EXPECT_FALSE(wino_applies(16, 16, 3, 3, 1, 1, 0, 0, 1, 1, 1));  // padding
  EXPECT_FALSE(wino_applies(16, 16, 3, 3, 1, 1, 2, 2, 2, 2, 1));  // dilation
  EXPECT_FALSE(wino_applies(16, 16, 1, 1, 1, 1, 0, 0, 1, 1, 1));  // 1x1
  EXPECT_FALSE(wino_applies(32, 32, 3, 3, 1, 1, 1, 1, 1, 1, 2));  // groups
}

}  // namespace
}  // namespace lowbit::layers::detail
