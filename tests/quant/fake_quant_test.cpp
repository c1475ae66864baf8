// Fused fake quantization (quant/fake_quant.h): the affine forward and its straight-through
// backward against the naive reference of tests/reference/quant_ref.h on edge values (ties,
// exact clip bounds, 1-bit and 16-bit ranges, bad scales), per-channel on every axis, 16-bit
// float inputs; LSQ and LSQ+ forward, input gradient and the reduced scale/offset gradients
// against a naive reduction, finite differences where the function is smooth; calc_qparams
// against numbers PyTorch's observers give. CPU-vs-CUDA parity in the *Gpu suites.
#include "quant/fake_quant.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/random.h"
#include "tests/common/gradcheck.h"
#include "tests/common/test_util.h"
#include "tests/quant/quant_test_util.h"
#include "tests/reference/elementwise_ref.h"
#include "tests/reference/quant_ref.h"

namespace lowbit::quant {
namespace {

using lowbit::testing::tensor_of;
using lowbit::testing::to_doubles;
using ::testing::HasSubstr;
using testing_util::channel_of;
using testing_util::error_of;
namespace ref = lowbit::reference;

// --- ranges -------------------------------------------------------------------------------

TEST(QuantRange, MatchesMethodsSection1) {
  struct Case {
    int64_t bits;
    bool is_signed, narrow;
    int64_t qmin, qmax;
  };
  for (const Case& c :
       {Case{8, true, false, -128, 127}, Case{4, true, false, -8, 7}, Case{2, true, false, -2, 1},
        Case{2, true, true, -1, 1}, Case{8, true, true, -127, 127}, Case{8, false, false, 0, 255},
        Case{1, false, false, 0, 1}, Case{16, true, false, -32768, 32767},
        Case{16, false, false, 0, 65535}}) {
    const QuantRange r = quant_range(c.bits, c.is_signed, c.narrow);
    EXPECT_EQ(r.qmin, c.qmin) << c.bits << " bits";
    EXPECT_EQ(r.qmax, c.qmax) << c.bits << " bits";
  }
}

TEST(QuantRange, RejectsBadBitsWithTheValue) {
  EXPECT_THAT(error_of([] { quant_range(0, true); }), HasSubstr("bits = 0"));
  EXPECT_THAT(error_of([] { quant_range(17, false); }), HasSubstr("1 to 16"));
  EXPECT_THAT(error_of([] { quant_range(1, true); }), HasSubstr("binary"));
  EXPECT_THAT(error_of([] { quant_range(4, false, true); }), HasSubstr("narrow_range"));
  EXPECT_THROW(quant_range(0, true), InputError);
}

// --- rounding -------------------------------------------------------------------------------

template <typename A, typename U>
U bits_of(A v) {
  U u;
  std::memcpy(&u, &v, sizeof(u));
  return u;
}

TEST(RoundHalfEven, BitIdenticalToRintIncludingEdges) {
  std::vector<float> v{0.5f,        1.5f,        2.5f,        -0.5f,       -1.5f,      -2.5f,
                       0.49999997f, -0.4999999f, 4194304.5f,  -4194304.5f, 8388607.5f, -8388607.5f,
                       8388608.0f,  8388609.0f,  -8388609.0f, 1e30f,       -1e30f,     0.0f,
                       -0.0f,       -0.3f,       1e-40f,      -1e-45f,     INFINITY,   -INFINITY,
                       16777215.0f, 3.4e38f};
  std::mt19937 gen(7);
  for (int i = 0; i < 200000; ++i) {  // random bit patterns: every exponent
    const uint32_t u = gen();
    float f;
    std::memcpy(&f, &u, 4);
    if (!std::isnan(f)) v.push_back(f);
  }
  for (float f : v) {
    const float r = qmath::round_half_even(f);
    ASSERT_EQ((bits_of<float, uint32_t>(r)), (bits_of<float, uint32_t>(std::nearbyint(f)))) << f;
    const double d = double(f) * 1.000000001;
    ASSERT_EQ((bits_of<double, uint64_t>(qmath::round_half_even(d))),
              (bits_of<double, uint64_t>(std::nearbyint(d))))
        << d;
  }
  EXPECT_TRUE(std::isnan(qmath::round_half_even(NAN)));
  for (double d : {4503599627370495.5, -4503599627370495.5, 2251799813685248.5, 0.5, -2.5}) {
    EXPECT_EQ(qmath::round_half_even(d), std::nearbyint(d)) << d;
  }
}

// --- affine forward -----------------------------------------------------------------------

std::vector<double> fq_ref(const std::vector<double>& x, double s, double z, QuantRange r) {
  std::vector<double> out;
  for (double v : x) out.push_back(ref::fake_quant(v, s, z, double(r.qmin), double(r.qmax)));
  return out;
}

TEST(FakeQuant, TiesRoundHalfToEvenBothDirections) {
  // inv_s = 2 exactly: x * inv_s hits k + 0.5.
  const std::vector<double> x{0.25, 0.75, 1.25, 1.75, -0.25, -0.75, -1.25, -1.75};
  const QuantRange r = quant_range(8, true);
  Tensor y = fake_quantize(tensor_of(x, {8}), 0.5, 0, r);
  // codes 0, 2, 2, 4, -0, -2, -2, -4
  EXPECT_TENSOR_NEAR(y, tensor_of({0, 1, 1, 2, 0, -1, -1, -2}, {8}), 0, 0);
  EXPECT_TENSOR_NEAR(y, tensor_of(fq_ref(x, 0.5, 0, r), {8}), 0, 0);
  // With a zero-point the tie is broken before adding z: round(2.5) + 3 = 5.
  const QuantRange u = quant_range(8, false);
  Tensor y2 = fake_quantize(tensor_of({1.25, -1.25}, {2}), 0.5, 3, u);
  EXPECT_TENSOR_NEAR(y2, tensor_of({1.0, -1.0}, {2}), 0, 0);
}

TEST(FakeQuant, ExactClipBoundsAndTheirMask) {
  // s = 0.25, signed 8-bit: codes -128..127 cover [-32, 31.75].
  const std::vector<double> x{31.75, 31.875, 32.0, -32.0, -32.125, -32.25};
  const QuantRange r = quant_range(8, true);
  Tensor xt = tensor_of(x, {6}).requires_grad_();
  Tensor y = fake_quantize(xt, 0.25, 0, r);
  EXPECT_TENSOR_NEAR(y, tensor_of({31.75, 31.75, 31.75, -32.0, -32.0, -32.0}, {6}), 0, 0);
  sum(y).backward();
  // u: 127 (in), 127.5 -> 128 (out), 128 (out), -128 (in), -128.5 -> -128 (in), -129 (out).
  EXPECT_TENSOR_NEAR(xt.grad(), tensor_of({1, 0, 0, 1, 1, 0}, {6}), 0, 0);
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(to_doubles(xt.grad())[i], ref::fake_quant_mask(x[i], 0.25, 0, -128, 127)) << i;
  }
}

TEST(FakeQuant, ZeroOrNegativeScaleRejectedNamingTheValue) {
  const QuantRange r = quant_range(8, true);
  Tensor x = tensor_of({1.0, 2.0}, {2});
  EXPECT_THAT(error_of([&] { fake_quantize(x, 0.0, 0, r); }), HasSubstr("got 0"));
  EXPECT_THAT(error_of([&] { fake_quantize(x, -0.5, 0, r); }), HasSubstr("got -0.5"));
  Tensor zp = zeros({2}, DType::i32);
  EXPECT_THAT(error_of([&] {
                fake_quantize(x.reshape({2, 1}), tensor_of({0.1, 0.0}, {2}), zp, r, 0);
              }),
              HasSubstr("got 0 at channel 1"));
  EXPECT_THAT(error_of([&] { fake_quantize(x, full({1}, NAN), zeros({1}, DType::i32), r, 0); }),
              HasSubstr("positive and finite"));
  EXPECT_THAT(error_of([&] { lsq_quantize(x, full({1}, NAN), r, 1.0); }),
              HasSubstr("the training diverged"));
  EXPECT_THAT(error_of([&] { lsq_quantize(x, full({1}, -1.0), r, 1.0); }),
              HasSubstr("clamp_parameters()"));
  // Zero-points outside the code range, and parameter sizes that fit neither granularity.
  EXPECT_THAT(error_of([&] { fake_quantize(x, 0.1, 300, quant_range(8, false)); }),
              HasSubstr("got 300"));
  EXPECT_THAT(error_of([&] {
                fake_quantize(x.reshape({2, 1}), ones({3}), zeros({3}, DType::i32), r, 0);
              }),
              HasSubstr("3 elements"));
  EXPECT_THROW(fake_quantize(zeros({2}, DType::i32), 1.0, 0, r), Error);
}

TEST(FakeQuant, ArgumentErrorsNameTheValueAndWhatIsAllowed) {
  const QuantRange r = quant_range(8, true);
  const QuantRange empty_range{5, 5};
  Tensor x = tensor_of({1.0, 2.0}, {2});
  EXPECT_THAT(error_of([&] { fake_quantize(x, 0.1, 0, empty_range); }),
              HasSubstr("fake_quantize: empty code range [5, 5]; want qmin < qmax"));
  EXPECT_THAT(error_of([&] { lsq_quantize(x, ones({1}), empty_range, 1.0); }),
              HasSubstr("lsq_quantize: empty code range [5, 5]; want qmin < qmax"));
  EXPECT_THAT(error_of([&] {
                calc_qparams(zeros({2}), ones({2}), QuantRange{3, 1}, false);
              }),
              HasSubstr("calc_qparams: empty code range [3, 1]; want qmin < qmax"));
  EXPECT_THAT(error_of([&] { calc_qparams(zeros({2}), ones({3}), r, false); }),
              HasSubstr("calc_qparams: min_val [2] on cpu and max_val [3] on cpu must have the "
                        "same number of elements and device"));
  EXPECT_THAT(error_of([&] { calc_qparams(zeros({2}), Tensor(), r, false); }),
              HasSubstr("min_val is defined and max_val is undefined"));
  EXPECT_THAT(error_of([&] { fake_quantize(Tensor(), 0.1, 0, r); }),
              HasSubstr("x is undefined; want a floating tensor"));
  EXPECT_THAT(error_of([&] { lsq_plus_quantize(x, ones({1}), Tensor(), r, 1.0); }),
              HasSubstr("lsq_plus_quantize: offset is undefined; want a tensor of 1 element "
                        "(per-tensor)"));
  EXPECT_THAT(error_of([&] { fake_quantize(x, INFINITY, 0, r); }),
              HasSubstr("fake_quantize: scale must be positive and finite, got inf"));
}

TEST(FakeQuant, OneBitUnsignedAndSixteenBit) {
  const QuantRange r1 = quant_range(1, false);  // codes {0, 1}
  Tensor y1 = fake_quantize(tensor_of({-0.6, 0.2, 0.5, 0.7, 1.4, 3.0}, {6}), 1.0, 0, r1);
  EXPECT_TENSOR_NEAR(y1, tensor_of({0, 0, 0, 1, 1, 1}, {6}), 0, 0);

  manual_seed(1);
  const QuantRange r16 = quant_range(16, true);
  Tensor x = randn({4096}) * 3.0;
  const double s = 1.0 / 8192.0;  // [-4, 4) in 65536 codes: some clip
  Tensor y = fake_quantize(x, s, 0, r16);
  EXPECT_TENSOR_NEAR(y, tensor_of(fq_ref(to_doubles(x), s, 0, r16), {4096}), 0, 0);
  const QuantRange u16 = quant_range(16, false);
  Tensor yu = fake_quantize(x, 1e-4, 30000, u16);
  EXPECT_TENSOR_NEAR(yu, tensor_of(fq_ref(to_doubles(x), 1e-4, 30000, u16), {4096}), 0, 0);
}

TEST(FakeQuant, PerChannelOnEveryAxisOfA4dTensor) {
  manual_seed(2);
  const Shape shape{3, 4, 5, 6};
  const QuantRange r = quant_range(4, false);
  Tensor x = randn(shape) * 2.0;
  const std::vector<double> xv = to_doubles(x);
  for (int64_t axis : {0, 1, 2, 3, -1, -3}) {
    const int64_t c = shape[size_t(axis < 0 ? axis + 4 : axis)];
    Tensor s = rand({c}) * 0.5 + 0.05;
    Tensor z = randint(0, 16, {c}, DType::i32);
    Tensor xg = x.detach().requires_grad_();
    Tensor y = fake_quantize(xg, s, z, r, axis);
    Tensor g = randn(shape);
    sum(y * g).backward();
    const std::vector<double> sv = to_doubles(s), zv = to_doubles(z), gv = to_doubles(g);
    std::vector<double> want(xv.size()), want_dx(xv.size());
    for (size_t i = 0; i < xv.size(); ++i) {
      const int64_t ch = channel_of(shape, axis, int64_t(i));
      want[i] = ref::fake_quant(xv[i], sv[size_t(ch)], zv[size_t(ch)], 0, 15);
      want_dx[i] = gv[i] * ref::fake_quant_mask(xv[i], sv[size_t(ch)], zv[size_t(ch)], 0, 15);
    }
    EXPECT_TENSOR_NEAR(y, tensor_of(want, shape), 0, 0) << "axis " << axis;
    EXPECT_TENSOR_NEAR(xg.grad(), tensor_of(want_dx, shape), 0, 0) << "axis " << axis;
  }
}

TEST(FakeQuant, HalfInputsComputeInFloatAndRoundOnce) {
  manual_seed(3);
  const QuantRange r = quant_range(8, true);
  for (DType dt : {DType::bf16, DType::f16}) {
    Tensor x = (randn({2, 3, 4, 8}) * 2.0).to(dt);
    Tensor s = rand({8}) * 0.05 + 0.01;
    Tensor z = zeros({8}, DType::i32);
    Tensor y = fake_quantize(x, s, z, r, -1);
    EXPECT_EQ(y.dtype(), dt);
    const std::vector<double> xv = to_doubles(x), sv = to_doubles(s);
    std::vector<double> want(xv.size());
    for (size_t i = 0; i < xv.size(); ++i) {
      const double v = ref::fake_quant(xv[i], sv[i % 8], 0, -128, 127);
      want[i] = dt == DType::bf16 ? ref::round_bf16(v) : ref::round_f16(v);
    }
    EXPECT_TENSOR_NEAR(y, tensor_of(want, x.shape()), 0, 0) << dt;
    // The gradient comes back in the input's dtype.
    Tensor xg = x.detach().requires_grad_();
    sum(fake_quantize(xg, s, z, r, -1).to(DType::f32)).backward();
    EXPECT_EQ(xg.grad().dtype(), dt);
  }
}

TEST(FakeQuant, LargeAndStridedInputsMatchTheReference) {
  manual_seed(4);
  const QuantRange r = quant_range(8, false);
  Tensor x = randn({300, 257});  // past the parallel grain
  Tensor y = fake_quantize(x, 0.02, 128, r);
  EXPECT_TENSOR_NEAR(y, tensor_of(fq_ref(to_doubles(x), 0.02, 128, r), x.shape()), 0, 0);
  Tensor xs = lowbit::testing::non_contiguous_copy(x);
  EXPECT_TENSOR_NEAR(fake_quantize(xs, 0.02, 128, r), y, 0, 0);
}

TEST(FakeQuant, BackwardIsTheStraightThroughMask) {
  manual_seed(5);
  const QuantRange r = quant_range(4, true);
  Tensor x = (randn({1000}) * 2.0).requires_grad_();
  Tensor g = randn({1000});
  sum(fake_quantize(x, 0.3, 0, r) * g).backward();
  const std::vector<double> xv = to_doubles(x), gv = to_doubles(g);
  std::vector<double> want(xv.size());
  for (size_t i = 0; i < xv.size(); ++i)
    want[i] = gv[i] * ref::fake_quant_mask(xv[i], 0.3, 0, -8, 7);
  EXPECT_TENSOR_NEAR(x.grad(), tensor_of(want, {1000}), 0, 0);
}

// --- LSQ / LSQ+ -----------------------------------------------------------------------------

struct LsqCase {
  Shape shape;
  int64_t channels;  // 1: per-tensor (axis `axis` otherwise)
  int64_t axis = 0;
};

void check_lsq(bool plus, const LsqCase& cs, uint64_t seed) {
  manual_seed(seed);
  const QuantRange r = quant_range(4, true);
  const double g_scale = 0.37;
  Tensor x = (randn(cs.shape) * 1.5).requires_grad_();
  Tensor s = (rand({cs.channels}) * 0.3 + 0.1).requires_grad_();
  Tensor b = (randn({cs.channels}) * 0.2).requires_grad_();
  Tensor y = plus ? lsq_plus_quantize(x, s, b, r, g_scale, cs.axis)
                  : lsq_quantize(x, s, r, g_scale, cs.axis);
  Tensor g = randn(cs.shape);
  sum(y * g).backward();
  const std::vector<double> xv = to_doubles(x), sv = to_doubles(s), bv = to_doubles(b),
                            gv = to_doubles(g);
  std::vector<double> want(xv.size()), want_dx(xv.size());
  std::vector<double> ds(size_t(cs.channels), 0.0), db(size_t(cs.channels), 0.0);
  for (size_t i = 0; i < xv.size(); ++i) {
    const size_t c = size_t(cs.channels == 1 ? 0 : channel_of(cs.shape, cs.axis, int64_t(i)));
    const ref::LsqElem e = ref::lsq(xv[i], sv[c], bv[c], -8, 7, plus);
    want[i] = e.y;
    want_dx[i] = gv[i] * e.dx;
    ds[c] += gv[i] * e.ds;
    db[c] += gv[i] * e.dbeta;
  }
  for (size_t c = 0; c < ds.size(); ++c) {
    ds[c] *= g_scale;
    db[c] *= g_scale;
  }
  EXPECT_TENSOR_NEAR(y, tensor_of(want, cs.shape), 0, 0);
  EXPECT_TENSOR_NEAR(x.grad(), tensor_of(want_dx, cs.shape), 0, 0);
  // Terms are products in fp32 summed in double: a few fp32 ulps of each term.
  EXPECT_TENSOR_NEAR(s.grad(), tensor_of(ds, {cs.channels}), 1e-5, 1e-5);
  if (plus) {
    EXPECT_TENSOR_NEAR(b.grad(), tensor_of(db, {cs.channels}), 1e-5, 1e-5);
  } else {
    EXPECT_FALSE(b.grad().defined());
  }
}

TEST(Lsq, ForwardAndGradientsMatchNaiveReduction) {
  check_lsq(false, {{500}, 1}, 10);
  check_lsq(false, {{8, 3, 3, 5}, 8}, 11);
  check_lsq(false, {{40, 64, 33}, 40}, 12);  // past the parallel grain, several blocks
  // Per-channel along the last axis (channels-last activations: the row-by-row CPU path).
  check_lsq(false, {{6, 5, 4, 7}, 7, 3}, 14);
  check_lsq(false, {{300, 8, 8, 64}, 64, 3}, 15);  // several blocks and parallel chunks
}

TEST(LsqPlus, ForwardAndGradientsMatchNaiveReduction) {
  check_lsq(true, {{500}, 1}, 13);
  check_lsq(true, {{300, 8, 8, 64}, 64, 3}, 16);
  check_lsq(true, {{8, 3, 3, 5}, 8}, 14);
  check_lsq(true, {{70000}, 1}, 15);
}

TEST(Lsq, GradScaleFormula) {
  EXPECT_DOUBLE_EQ(lsq_grad_scale(100, 7), 1.0 / std::sqrt(700.0));
  EXPECT_DOUBLE_EQ(lsq_grad_scale(9, 1), 1.0 / 3.0);
  EXPECT_THROW(lsq_grad_scale(0, 7), Error);
}

TEST(Lsq, ScaleGradientMatchesFiniteDifferencesWhereClipped) {
  // Outside the code range x_hat = qmin * s or qmax * s: smooth in s, flat in x. (Inside, LSQ's
  // gradient is the straight-through formula, checked against the reference above.)
  const QuantRange r = quant_range(3, true);  // [-4, 3]
  Tensor x = tensor_of({5.0, 7.5, -6.0, -9.0, 4.2, 11.0}, {6});
  auto f = [r](const std::vector<Tensor>& in) { return lsq_quantize(in[0], in[1], r, 1.0); };
  EXPECT_TRUE(lowbit::testing::gradcheck(f, {x, tensor_of({0.7}, {1})}));
  auto fp = [r](const std::vector<Tensor>& in) {
    return lsq_plus_quantize(in[0], in[1], in[2], r, 1.0);
  };
  EXPECT_TRUE(lowbit::testing::gradcheck(fp, {x, tensor_of({0.7}, {1}), tensor_of({0.3}, {1})}));
}

TEST(Lsq, ReductionDoesNotDependOnTheThreadCount) {
  manual_seed(16);
  const QuantRange r = quant_range(4, false);
  Tensor x = rand({200000}) * 3.0;
  Tensor g = randn({200000});
  std::vector<double> grads;
  const int saved = omp_get_max_threads();
  std::vector<std::vector<double>> per_channel;  // along the last axis: (3125, 64)
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    Tensor s = full({1}, 0.17).requires_grad_();
    sum(lsq_quantize(x, s, r, 1.0) * g).backward();
    grads.push_back(s.grad().item());
    Tensor sc = full({64}, 0.17).requires_grad_();
    sum(lsq_quantize(x.reshape({3125, 64}), sc, r, 1.0, 1) * g.reshape({3125, 64})).backward();
    per_channel.push_back(to_doubles(sc.grad()));
  }
  omp_set_num_threads(saved);
  EXPECT_EQ(grads[0], grads[1]);
  EXPECT_EQ(grads[0], grads[2]);
  EXPECT_EQ(per_channel[0], per_channel[1]);
  EXPECT_EQ(per_channel[0], per_channel[2]);
}

TEST(Lsq, FrozenOrConstantParametersGetNoGradient) {
  const QuantRange r = quant_range(4, true);
  Tensor x = tensor_of({0.3, 1.7}, {2}).requires_grad_();
  Tensor s = full({1}, 0.5);
  sum(lsq_quantize(x, s, r, 1.0)).backward();
  EXPECT_TRUE(x.grad().defined());
  EXPECT_FALSE(s.grad().defined());
}

// --- qparams --------------------------------------------------------------------------------

TEST(CalcQParams, MatchesPyTorchObservers) {
  // Numbers from torch.ao.quantization.MinMaxObserver(...).calculate_qparams(), PyTorch 1.13,
  // which docs/methods.md, "Observers" transcribes (fp32 arithmetic).
  struct Case {
    float mn, mx;
    QuantRange r;
    bool sym;
    float scale;
    int32_t zp;
  };
  const QuantRange u8 = quant_range(8, false), s8 = quant_range(8, true);
  for (const Case& c : {
           Case{-1.0f, 2.0f, u8, false, 3.0f / 255.0f, 85},
           Case{-1.0f, 2.0f, s8, true, 2.0f / 127.5f, 0},
           Case{-1.0f, 2.0f, u8, true, 2.0f / 127.5f, 128},
           Case{0.3f, 2.7f, u8, false, 2.7f / 255.0f, 0},  // 0 is always in the range
           Case{-0.37f, 0.81f, u8, false, 0.004627451300621033f, 80},
           Case{-0.37f, 0.81f, s8, false, 0.004627451300621033f, -48},
           Case{-0.37f, 0.81f, quant_range(4, false), false, 0.07866667211055756f, 5},
           Case{0.0f, 0.0f, u8, false, 1.1920928955078125e-07f, 0},  // eps
       }) {
    const QParams q = calc_qparams(c.mn, c.mx, c.r.qmin, c.r.qmax, c.sym);
    EXPECT_EQ(q.scale, c.scale) << c.mn << " " << c.mx;
    EXPECT_EQ(q.zero_point, c.zp) << c.mn << " " << c.mx;
  }
  // Symmetric unsigned 4-bit: z = (qmin + qmax + 1) / 2 = 8 (docs/methods.md, "Observers").
  EXPECT_EQ(calc_qparams(-1.0f, 1.0f, 0, 15, true).zero_point, 8);
  // Nothing observed yet (+inf, -inf): PyTorch's default (1, 0).
  const QParams none = calc_qparams(INFINITY, -INFINITY, -128, 127, false);
  EXPECT_EQ(none.scale, 1.0f);
  EXPECT_EQ(none.zero_point, 0);
}

TEST(CalcQParams, TensorFormAppliesPerChannel) {
  auto [s, z] = calc_qparams(tensor_of({-1.0, -0.37, 0.0}, {3}), tensor_of({2.0, 0.81, 0.0}, {3}),
                             quant_range(8, false), false);
  EXPECT_EQ(s.dtype(), DType::f32);
  EXPECT_EQ(z.dtype(), DType::i32);
  EXPECT_EQ(to_doubles(s)[0], double(3.0f / 255.0f));
  EXPECT_EQ(to_doubles(s)[1], double(0.004627451300621033f));
  EXPECT_EQ(to_doubles(z), (std::vector<double>{85, 80, 0}));
}

// --- CPU vs CUDA ----------------------------------------------------------------------------

TEST(FakeQuantGpu, AffineForwardBitExactAndMaskEqual) {
  LOWBIT_SKIP_WITHOUT_GPU();
  manual_seed(30);
  const Shape shape{6, 5, 4, 7};
  const QuantRange r = quant_range(8, false);
  Tensor x = randn(shape) * 3.0;
  for (int64_t axis : {0, 1, 2, 3}) {
    const int64_t c = shape[size_t(axis)];
    Tensor s = rand({c}) * 0.1 + 0.01;
    Tensor z = randint(0, 256, {c}, DType::i32);
    for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
      // detach(): fresh leaves on both devices (to() of a tensor already of that dtype is the
      // tensor itself, and to() of one that requires grad is not a leaf).
      Tensor xc = x.detach().to(dt).requires_grad_();
      Tensor xg = x.detach().to(Device::cuda(), dt).requires_grad_();
      Tensor y = fake_quantize(xc, s, z, r, axis);
      Tensor yg = fake_quantize(xg, s.to(Device::cuda()), z.to(Device::cuda()), r, axis);
      EXPECT_TENSOR_NEAR(yg, y, 0, 0) << "axis " << axis << " " << dt;
      Tensor up = randn(shape).to(dt);
      sum((y * up).to(DType::f32)).backward();
      sum((yg * up.to(Device::cuda())).to(DType::f32)).backward();
      EXPECT_TENSOR_NEAR(xg.grad(), xc.grad(), 0, 0) << "axis " << axis << " " << dt;
    }
  }
  Tensor big = randn({1 << 20});
  EXPECT_TENSOR_NEAR(fake_quantize(big.to(Device::cuda()), 0.01, 3, quant_range(8, true)),
                     fake_quantize(big, 0.01, 3, quant_range(8, true)), 0, 0);
}

TEST(FakeQuantGpu, LsqAndLsqPlusMatchCpu) {
  LOWBIT_SKIP_WITHOUT_GPU();
  manual_seed(31);
  const QuantRange r = quant_range(4, true);
  for (bool plus : {false, true}) {
    for (const LsqCase& cs :
         {LsqCase{{100000}, 1}, LsqCase{{64, 3, 3, 32}, 64}, LsqCase{{16, 7, 5}, 16}}) {
      Tensor x = randn(cs.shape);
      Tensor s = rand({cs.channels}) * 0.3 + 0.1, b = randn({cs.channels}) * 0.1;
      Tensor up = randn(cs.shape);
      std::vector<Tensor> grads[2];
      Tensor ys[2];
      for (int dev = 0; dev < 2; ++dev) {
        const Device d = dev ? Device::cuda() : Device::cpu();
        Tensor xd = x.detach().to(d).requires_grad_(), sd = s.detach().to(d).requires_grad_(),
               bd = b.detach().to(d).requires_grad_();
        ys[dev] = plus ? lsq_plus_quantize(xd, sd, bd, r, 0.05) : lsq_quantize(xd, sd, r, 0.05);
        sum(ys[dev] * up.to(d)).backward();
        grads[dev] = {xd.grad(), sd.grad()};
        if (plus) grads[dev].push_back(bd.grad());
      }
      EXPECT_TENSOR_NEAR(ys[1], ys[0], 0, 0);
      EXPECT_TENSOR_NEAR(grads[1][0], grads[0][0], 0, 0);
      // Reduced in a different order (double partials): tight, not exact.
      EXPECT_TENSOR_NEAR(grads[1][1], grads[0][1], 1e-6, 1e-7);
      if (plus) {
        EXPECT_TENSOR_NEAR(grads[1][2], grads[0][2], 1e-6, 1e-7);
      }
    }
  }
}

// The reduce kernel's branches the leading-axis cases above never reach: per-channel scales on
// an inner axis (outer > 1) and on the last axis (inner == 1, channels-last activations), bf16
// inputs, and the map-only backward (x needs a gradient, the parameters do not).
TEST(FakeQuantGpu, LsqPlusInnerAxesBf16AndFrozenParametersMatchCpu) {
  LOWBIT_SKIP_WITHOUT_GPU();
  manual_seed(33);
  const QuantRange r = quant_range(4, false);
  const Shape shape{6, 5, 4, 7};
  for (int64_t axis : {1, 3}) {
    for (DType dt : {DType::f32, DType::bf16}) {
      for (bool learn : {true, false}) {
        const int64_t c = shape[axis];
        Tensor x = randn(shape).to(dt);
        Tensor s = rand({c}) * 0.3 + 0.1, b = randn({c}) * 0.1;
        Tensor up = randn(shape).to(dt);
        std::vector<Tensor> grads[2];
        Tensor ys[2];
        for (int dev = 0; dev < 2; ++dev) {
          const Device d = dev ? Device::cuda() : Device::cpu();
          Tensor xd = x.detach().to(d).requires_grad_(), sd = s.detach().to(d),
                 bd = b.detach().to(d);
          if (learn) {
            sd.requires_grad_();
            bd.requires_grad_();
          }
          ys[dev] = lsq_plus_quantize(xd, sd, bd, r, 0.05, axis);
          sum(ys[dev].to(DType::f32) * up.to(d).to(DType::f32)).backward();
          grads[dev] = {xd.grad()};
          if (learn) {
            grads[dev].push_back(sd.grad());
            grads[dev].push_back(bd.grad());
          }
        }
        SCOPED_TRACE("axis " + std::to_string(axis) + " " + dtype_name(dt) +
                     (learn ? " learned" : " frozen"));
        EXPECT_TENSOR_NEAR(ys[1], ys[0], 0, 0);
        EXPECT_TENSOR_NEAR(grads[1][0], grads[0][0], 0, 0);
        if (learn) {
          EXPECT_TENSOR_NEAR(grads[1][1], grads[0][1], 1e-6, 1e-7);
          EXPECT_TENSOR_NEAR(grads[1][2], grads[0][2], 1e-6, 1e-7);
        }
      }
    }
  }
}

TEST(FakeQuantGpu, CalcQParamsBitExact) {
  LOWBIT_SKIP_WITHOUT_GPU();
  manual_seed(32);
  Tensor mn = randn({300}) - 1.0, mx = randn({300}) + 1.0;
  for (bool sym : {false, true}) {
    auto [s, z] = calc_qparams(mn, mx, quant_range(8, false), sym);
    auto [sg, zg] =
        calc_qparams(mn.to(Device::cuda()), mx.to(Device::cuda()), quant_range(8, false), sym);
    EXPECT_TENSOR_NEAR(sg, s, 0, 0);
    EXPECT_TENSOR_NEAR(zg, z, 0, 0);
  }
}

}  // namespace
}  // namespace lowbit::quant
