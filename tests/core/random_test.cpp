// Philox: known-answer vectors, statistical checks, and identical streams for the same seed.
#include "core/random.h"

#include <cmath>

#include "core/philox.h"
#include "tests/common/test_util.h"

namespace lowbit {
namespace {

TEST(Philox, KnownAnswerVectors) {
  // Random123's published known-answer tests for philox4x32-10 (kat_vectors).
  auto r = core::Philox4x32::generate(0, 0, 0, 0, 0, 0);
  EXPECT_EQ(r.c[0], 0x6627e8d5u);
  EXPECT_EQ(r.c[1], 0xe169c58du);
  EXPECT_EQ(r.c[2], 0xbc57ac4cu);
  EXPECT_EQ(r.c[3], 0x9b00dbd8u);
  auto s = core::Philox4x32::generate(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu,
                                      0xffffffffu, 0xffffffffu);
  EXPECT_EQ(s.c[0], 0x408f276du);
  EXPECT_EQ(s.c[1], 0x41c83b0eu);
  EXPECT_EQ(s.c[2], 0xa20bc7c6u);
  EXPECT_EQ(s.c[3], 0x6d5451fdu);
  auto p = core::Philox4x32::generate(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u,
                                      0xa4093822u, 0x299f31d0u);
  EXPECT_EQ(p.c[0], 0xd16cfe09u);
  EXPECT_EQ(p.c[1], 0x94fdccebu);
  EXPECT_EQ(p.c[2], 0x5001e420u);
  EXPECT_EQ(p.c[3], 0x24126ea1u);
}

TEST(Random, SameSeedSameStream) {
  manual_seed(42);
  Tensor a = randn({1000});
  Tensor b = rand({17}, DType::f64);
  manual_seed(42);
  Tensor a2 = randn({1000});
  Tensor b2 = rand({17}, DType::f64);
  EXPECT_TENSOR_NEAR(a, a2, 0, 0);
  EXPECT_TENSOR_NEAR(b, b2, 0, 0);
  manual_seed(43);
  EXPECT_FALSE(allclose(randn({1000}), a));
}

TEST(Random, ConsecutiveDrawsDiffer) {
  manual_seed(1);
  EXPECT_FALSE(allclose(rand({64}), rand({64})));
}

TEST(Random, UniformMoments) {
  manual_seed(3);
  Tensor u = rand({200000}, DType::f64);
  EXPECT_NEAR(mean(u).item(), 0.5, 0.005);
  EXPECT_NEAR(var(u).item(), 1.0 / 12.0, 0.002);
  EXPECT_GE(amin(u).item(), 0.0);
  EXPECT_LT(amax(u).item(), 1.0);
}

TEST(Random, NormalMoments) {
  manual_seed(4);
  Tensor n = randn({200000});
  EXPECT_NEAR(mean(n).item(), 0.0, 0.01);
  EXPECT_NEAR(var(n).item(), 1.0, 0.01);
  // Fraction within one standard deviation: 68.27%.
  const double inside = mean(lt(abs(n), full({}, 1.0)).to(DType::f64)).item();
  EXPECT_NEAR(inside, 0.6827, 0.005);
}

TEST(Random, RandintRangeAndCoverage) {
  manual_seed(5);
  Tensor r = randint(-3, 4, {70000});
  EXPECT_EQ(r.dtype(), DType::i64);
  EXPECT_EQ(amin(r).item(), -3.0);
  EXPECT_EQ(amax(r).item(), 3.0);
  for (int v = -3; v <= 3; ++v) {
    const double frac = mean(eq(r, full({}, v, DType::i64)).to(DType::f64)).item();
    EXPECT_NEAR(frac, 1.0 / 7.0, 0.01) << v;
  }
}

TEST(Random, ElementIsPureFunctionOfSeedOffsetIndex) {
  core::RandomValue rv{99, 7, core::RandomKind::uniform, 0.0, 1.0};
  Generator& g = default_generator(Device::cpu());
  g.set_state(99, 7);
  Tensor t = rand({10}, DType::f64);
  std::vector<double> v = t.to_vector<double>();
  for (int i = 0; i < 10; ++i) EXPECT_EQ(v[size_t(i)], rv(uint64_t(i)));
}

TEST(Random, GeneratorStateRestores) {
  Generator& g = default_generator(Device::cpu());
  g.set_state(11, 0);
  rand({5});
  const uint64_t off = g.offset();
  Tensor a = rand({5});
  g.set_state(11, off);
  EXPECT_TENSOR_NEAR(rand({5}), a, 0, 0);
}

}  // namespace
}  // namespace lowbit
