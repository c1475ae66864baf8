// Conv2d (oneDNN on CPU) against the naive loop on many geometries, its gradients by finite
// differences, the KRSC <-> OIHW state-dict layout and error messages.
#include "layers/conv2d.h"

#include <gmock/gmock.h>

#include "core/ops.h"
#include "core/random.h"
#include "layers/winograd_cpu.h"
#include "tests/common/gradcheck.h"
#include "tests/common/test_util.h"
#include "tests/reference/conv_ref.h"

namespace lowbit::layers {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

struct ConvCase {
  int64_t n, h, w, c, k, r, s, stride, pad, dil, groups;
  bool bias;
};

class Conv2dForward : public ::testing::TestWithParam<ConvCase> {};

Conv2dOptions options_of(const ConvCase& p) {
  Conv2dOptions o;
  o.in_channels = p.c;
  o.out_channels = p.k;
  o.kernel = {p.r, p.s};
  o.stride = {p.stride, p.stride};
  o.padding = {p.pad, p.pad};
  o.dilation = {p.dil, p.dil};
  o.groups = p.groups;
  o.bias = p.bias;
  return o;
}

// The naive loop's result (double) for case p on x, w, b.
Tensor naive_conv(const ConvCase& p, const Tensor& x, const Tensor& w, const Tensor& b) {
  reference::ConvGeometry g{p.n, p.h, p.w, p.c, p.k, p.r, p.s};
  g.stride_h = g.stride_w = p.stride;
  g.pad_h = g.pad_w = p.pad;
  g.dil_h = g.dil_w = p.dil;
  g.groups = p.groups;
  std::vector<double> ref =
      reference::conv2d_nhwc(g, testing::to_doubles(x), testing::to_doubles(w),
                             p.bias ? testing::to_doubles(b) : std::vector<double>{});
  return testing::tensor_of(ref, {p.n, g.out_h(), g.out_w(), p.k}, DType::f64);
}

TEST_P(Conv2dForward, MatchesNaiveLoop) {
  const ConvCase p = GetParam();
  manual_seed(10);
  Tensor x = randn({p.n, p.h, p.w, p.c});
  Tensor w = randn({p.k, p.r, p.s, p.c / p.groups});
  Tensor b = p.bias ? randn({p.k}) : Tensor();
  Tensor y = conv2d(x, w, b, options_of(p));
  Tensor expected = naive_conv(p, x, w, b);
  // f32 accumulation over at most c*r*s ~ 300 terms of N(0,1) products.
  EXPECT_TENSOR_NEAR(y, expected, 1e-4, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, Conv2dForward,
    ::testing::Values(ConvCase{1, 5, 5, 3, 4, 3, 3, 1, 1, 1, 1, true},     // same padding
                      ConvCase{2, 7, 6, 5, 3, 3, 3, 2, 1, 1, 1, false},    // stride 2, odd sizes
                      ConvCase{1, 9, 9, 2, 2, 3, 3, 1, 2, 2, 1, true},     // dilation 2
                      ConvCase{2, 6, 6, 4, 6, 3, 3, 1, 1, 1, 2, true},     // groups 2
                      ConvCase{1, 8, 8, 6, 6, 3, 3, 1, 1, 1, 6, false},    // depthwise
                      ConvCase{2, 7, 7, 4, 8, 3, 3, 2, 1, 1, 4, true},     // depthwise x2, stride 2
                      ConvCase{3, 4, 4, 7, 5, 1, 1, 1, 0, 1, 1, true},     // 1x1
                      ConvCase{1, 1, 1, 3, 2, 1, 1, 1, 0, 1, 1, false},    // 1x1 spatial
                      ConvCase{1, 10, 3, 2, 3, 5, 1, 3, 2, 1, 1, true},    // rectangular kernel
                      ConvCase{4, 5, 5, 1, 16, 5, 5, 1, 0, 1, 1, true}));  // kernel = input

TEST(Conv2d, GradientsMatchFiniteDifferences) {
  // The CPU convolution computes in f32, so the check runs the op in f32 and compares with a
  // tolerance suited to f32 (relative 1e-2 on O(1) gradients with eps 1e-3).
  manual_seed(11);
  Conv2dOptions o(4, 6, 3);
  o.stride = {2, 2};
  o.padding = {1, 1};
  o.groups = 2;
  auto f = [&](const std::vector<Tensor>& in) {
    return conv2d(in[0].to(DType::f32), in[1].to(DType::f32), in[2].to(DType::f32), o)
        .to(DType::f64);
  };
  testing::GradcheckOptions opts;
  opts.eps = 1e-2;
  opts.rtol = 1e-2;
  opts.atol = 1e-3;
  EXPECT_TRUE(testing::gradcheck(f, {randn({2, 5, 5, 4}), randn({6, 3, 3, 2}), randn({6})}, opts));
}

TEST(Conv2d, DepthwiseGradients) {
  manual_seed(12);
  Conv2dOptions o(3, 3, 3);
  o.padding = {1, 1};
  o.groups = 3;
  o.bias = false;
  auto f = [&](const std::vector<Tensor>& in) {
    return conv2d(in[0].to(DType::f32), in[1].to(DType::f32), Tensor(), o).to(DType::f64);
  };
  testing::GradcheckOptions opts;
  opts.eps = 1e-2;
  opts.rtol = 1e-2;
  opts.atol = 1e-3;
  EXPECT_TRUE(testing::gradcheck(f, {randn({1, 4, 4, 3}), randn({3, 3, 3, 1})}, opts));
}

TEST(Conv2d, ModuleInitMatchesPyTorchBounds) {
  manual_seed(13);
  Conv2d conv(Conv2dOptions(8, 16, 3));
  EXPECT_EQ(conv.weight().shape(), (Shape{16, 3, 3, 8}));
  const double bound = 1.0 / std::sqrt(8.0 * 9.0);
  EXPECT_LE(amax(abs(conv.weight())).item(), bound);
  EXPECT_GT(amax(abs(conv.weight())).item(), 0.9 * bound);
  EXPECT_LE(amax(abs(conv.bias())).item(), bound);
  EXPECT_TRUE(conv.weight().requires_grad());
  EXPECT_EQ(conv.num_parameters(), 16 * 3 * 3 * 8 + 16);
}

TEST(Conv2d, StateDictUsesPyTorchOIHWAtTheEdge) {
  manual_seed(14);
  Conv2d conv(Conv2dOptions(2, 3, 3));
  StateDict pt = conv.state_dict(Layout::pytorch);
  ASSERT_EQ(pt.at("weight").shape(), (Shape{3, 2, 3, 3}));
  // element (k, c, r, s) of OIHW equals (k, r, s, c) of KRSC.
  std::vector<double> krsc = testing::to_doubles(conv.weight());
  std::vector<double> oihw = testing::to_doubles(pt.at("weight"));
  EXPECT_EQ(oihw[size_t(((1 * 2 + 1) * 3 + 2) * 3 + 0)],
            krsc[size_t(((1 * 3 + 2) * 3 + 0) * 2 + 1)]);
  Conv2d other(Conv2dOptions(2, 3, 3));
  other.load_state_dict(pt, true, Layout::pytorch);
  EXPECT_TENSOR_NEAR(other.weight(), conv.weight(), 0, 0);
}

TEST(Conv2d, ChannelMismatchNamesShapes) {
  Conv2d conv(Conv2dOptions(3, 4, 3));
  try {
    conv.forward(zeros({1, 5, 5, 2}));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("2 channels"));
    EXPECT_THAT(e.what(), HasSubstr("[4, 3, 3, 3]"));
  }
}

TEST(Conv2d, TooSmallInputIsAnError) {
  Conv2d conv(Conv2dOptions(1, 1, 5));
  EXPECT_THROW(conv.forward(zeros({1, 3, 3, 1})), Error);
}

TEST(Conv2d, UnsupportedCpuDtypeNamed) {
  Conv2dOptions o(1, 1, 1);
  try {
    conv2d(zeros({1, 2, 2, 1}, DType::f64), zeros({1, 1, 1, 1}, DType::f64), Tensor(), o);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("f64"));
  }
}

// bf16 on the CPU (oneDNN's bf16 kernels, f32 accumulation): on inputs that are bf16 already,
// the forward is the exact convolution (the naive loop in double) rounded once to bf16, and the
// data and weight gradients are the f32 kernels' results on the same values, rounded once.
TEST(Conv2d, Bf16CpuIsTheExactResultRoundedOnce) {
  manual_seed(17);
  for (const ConvCase& p : {ConvCase{2, 7, 6, 5, 8, 3, 3, 2, 1, 1, 1, true},
                            ConvCase{2, 8, 8, 16, 16, 3, 3, 1, 1, 1, 1, false},
                            ConvCase{1, 8, 8, 6, 6, 3, 3, 1, 1, 1, 6, false},
                            ConvCase{3, 4, 4, 7, 5, 1, 1, 1, 0, 1, 1, true}}) {
    SCOPED_TRACE(::testing::Message() << "c " << p.c << " k " << p.k << " groups " << p.groups);
    Tensor x = randn({p.n, p.h, p.w, p.c}).to(DType::bf16).requires_grad_();
    Tensor w = randn({p.k, p.r, p.s, p.c / p.groups}).to(DType::bf16).requires_grad_();
    Tensor b = p.bias ? randn({p.k}).to(DType::bf16).requires_grad_() : Tensor();
    Tensor y;
    try {
      y = conv2d(x, w, b, options_of(p));
    } catch (const Error& e) {
      if (std::string(e.what()).find("no bf16 kernel") != std::string::npos)
        GTEST_SKIP() << e.what();
      throw;
    }
    ASSERT_EQ(y.dtype(), DType::bf16);
    Tensor expected = naive_conv(p, x, w, b);
    // One rounding to bf16 (relative 2^-9, here 2^-8 for slack), plus f32 accumulation.
    EXPECT_TENSOR_NEAR(y, expected, 1.0 / 256, 1e-4);

    Tensor x32 = x.detach().to(DType::f32).requires_grad_();
    Tensor w32 = w.detach().to(DType::f32).requires_grad_();
    Tensor b32 = p.bias ? b.detach().to(DType::f32).requires_grad_() : Tensor();
    Tensor up = randn(y.shape()).to(DType::bf16);
    sum(y * up).backward();
    sum(conv2d(x32, w32, b32, options_of(p)) * up.to(DType::f32)).backward();
    ASSERT_EQ(x.grad().dtype(), DType::bf16);
    EXPECT_TENSOR_NEAR(x.grad(), x32.grad(), 1.0 / 256, 1e-3);
    EXPECT_TENSOR_NEAR(w.grad(), w32.grad(), 1.0 / 256, 1e-3);
    if (p.bias) {
      EXPECT_TENSOR_NEAR(b.grad(), b32.grad(), 1.0 / 256, 1e-3);
    }
  }
}

// Exact gradients of L = sum(y * g) for a dense convolution (groups 1), by the naive loop in
// double: dx, dw (KRSC) and db.
struct NaiveGrads {
  std::vector<double> dx, dw, db;
};
NaiveGrads naive_conv_grads(const ConvCase& p, const std::vector<double>& x,
                            const std::vector<double>& w, const std::vector<double>& g) {
  reference::ConvGeometry geo{p.n, p.h, p.w, p.c, p.k, p.r, p.s};
  geo.stride_h = geo.stride_w = p.stride;
  geo.pad_h = geo.pad_w = p.pad;
  geo.dil_h = geo.dil_w = p.dil;
  const int64_t P = geo.out_h(), Q = geo.out_w();
  NaiveGrads d{std::vector<double>(x.size()), std::vector<double>(w.size()),
               std::vector<double>(size_t(p.k))};
  for (int64_t n = 0; n < p.n; ++n)
    for (int64_t op = 0; op < P; ++op)
      for (int64_t oq = 0; oq < Q; ++oq)
        for (int64_t k = 0; k < p.k; ++k) {
          const double gv = g[size_t(((n * P + op) * Q + oq) * p.k + k)];
          d.db[size_t(k)] += gv;
          for (int64_t r = 0; r < p.r; ++r)
            for (int64_t s = 0; s < p.s; ++s) {
              const int64_t ih = op * p.stride - p.pad + r * p.dil;
              const int64_t iw = oq * p.stride - p.pad + s * p.dil;
              if (ih < 0 || ih >= p.h || iw < 0 || iw >= p.w) continue;
              for (int64_t c = 0; c < p.c; ++c) {
                const size_t xi = size_t(((n * p.h + ih) * p.w + iw) * p.c + c);
                const size_t wi = size_t(((k * p.r + r) * p.s + s) * p.c + c);
                d.dx[xi] += gv * w[wi];
                d.dw[wi] += gv * x[xi];
              }
            }
        }
  return d;
}

// Sets the CPU convolution algorithm for one scope and restores the previous one.
class CpuConvAlgoScope {
 public:
  explicit CpuConvAlgoScope(CpuConvAlgo a) : prev_(cpu_conv_algo()) { set_cpu_conv_algo(a); }
  ~CpuConvAlgoScope() { set_cpu_conv_algo(prev_); }

 private:
  CpuConvAlgo prev_;
};

// Every CPU convolution algorithm (both Winograds included, where they run: AVX-512) gives the
// exact convolution and its exact gradients (the naive loops in double) to f32 tolerance, on
// 3x3 stride-1 geometries Winograd takes: map sizes that are not multiples of its tiles,
// 16 channels (no layout change for oneDNN) and 32 (reordered to nChw16c and back under
// `winograd`), and padding 0, which lowbit's F(2x2, 3x3) leaves to oneDNN's direct kernels.
// Whether oneDNN has its Winograd kernel on this CPU (AVX-512).
bool cpu_has_winograd() {
  CpuConvAlgoScope scope(CpuConvAlgo::winograd);
  Conv2dOptions o(16, 16, 3);
  o.padding = {1, 1};
  const ConvShape s = conv2d_shape(empty({1, 8, 8, 16}), empty({16, 3, 3, 16}), o);
  return conv2d_cpu_kernel(s, false, DType::f32).find("wino") != std::string::npos;
}

TEST(Conv2d, EveryCpuAlgorithmMatchesTheNaiveLoops) {
  manual_seed(18);
  const bool wino = cpu_has_winograd(), lowbit_wino = detail::wino_cpu_supported();
  for (CpuConvAlgo algo : {CpuConvAlgo::direct, CpuConvAlgo::auto_, CpuConvAlgo::winograd,
                           CpuConvAlgo::winograd_f2, CpuConvAlgo::winograd_f4}) {
    CpuConvAlgoScope scope(algo);
    for (const ConvCase& p : {ConvCase{2, 9, 9, 16, 16, 3, 3, 1, 1, 1, 1, true},
                              ConvCase{3, 6, 7, 32, 32, 3, 3, 1, 1, 1, 1, false},
                              ConvCase{2, 5, 5, 16, 32, 3, 3, 1, 0, 1, 1, true}}) {
      SCOPED_TRACE(::testing::Message() << cpu_conv_algo_name(algo) << ": c " << p.c << " k " << p.k
                                        << " " << p.h << "x" << p.w << " pad " << p.pad);
      // The kernels this case is meant to exercise ran (forward and both gradients).
      const ConvShape s =
          conv2d_shape(empty({p.n, p.h, p.w, p.c}), empty({p.k, 3, 3, p.c}), options_of(p));
      const bool expect_wino = wino && algo == CpuConvAlgo::winograd;
      const bool expect_f2 = lowbit_wino && p.pad == 1 && algo == CpuConvAlgo::winograd_f2;
      const bool expect_f4 = lowbit_wino && p.pad == 1 &&
                             (algo == CpuConvAlgo::winograd_f4 || algo == CpuConvAlgo::auto_);
      for (bool backward : {false, true}) {
        const std::string kernels = conv2d_cpu_kernel(s, p.bias, DType::f32, backward);
        if (expect_wino) {
          EXPECT_THAT(kernels,
                      ::testing::MatchesRegex(backward ? "jit_wino.*, jit_wino.*" : "jit_wino.*"));
        } else if (expect_f2 || expect_f4) {
          const std::string k = expect_f2 ? "lowbit_wino_f2x2.*" : "lowbit_wino_f4x4.*";
          EXPECT_THAT(kernels, ::testing::MatchesRegex(backward ? k + ", " + k : k));
        } else {
          EXPECT_THAT(kernels, Not(HasSubstr("wino")));
        }
      }
      Tensor x = randn({p.n, p.h, p.w, p.c}).requires_grad_();
      Tensor w = randn({p.k, p.r, p.s, p.c}).requires_grad_();
      Tensor b = p.bias ? randn({p.k}).requires_grad_() : Tensor();
      Tensor y = conv2d(x, w, b, options_of(p));
      // Outputs are sums of 144-288 N(0,1) products (scale ~15); f32 and Winograd's transforms
      // stay within 1e-4 absolute plus 1e-4 relative; lowbit's F(4x4, 3x3) within 5e-4 absolute.
      const double atol = expect_f4 ? 5e-4 : 1e-4;
      EXPECT_TENSOR_NEAR(y, naive_conv(p, x, w, b), atol, 1e-4);
      Tensor g = randn(y.shape());
      sum(y * g).backward();
      const NaiveGrads d = naive_conv_grads(p, testing::to_doubles(x), testing::to_doubles(w),
                                            testing::to_doubles(g));
      EXPECT_TENSOR_NEAR(x.grad(), testing::tensor_of(d.dx, x.shape(), DType::f64), atol, 1e-4);
      // Weight gradients sum over every output position (up to 3*9*9 = 243 products per tap).
      EXPECT_TENSOR_NEAR(w.grad(), testing::tensor_of(d.dw, w.shape(), DType::f64), atol, 1e-3);
      if (p.bias) {
        EXPECT_TENSOR_NEAR(b.grad(), testing::tensor_of(d.db, b.shape(), DType::f64), 1e-5, 1e-4);
      }
    }
  }
}

// winograd takes oneDNN's Winograd wherever it applies; winograd_f4 and auto take lowbit's
// F(4x4, 3x3), winograd_f2 its F(2x2, 3x3), for padding-1 3x3 stride-1 convolutions with channel
// counts that are multiples of 16 (auto only up to 256); direct never takes either. On CPUs without
// AVX-512 every choice is a direct kernel.
TEST(Conv2d, CpuAlgorithmChoosesTheKernel) {
  auto shape = [](const ConvCase& p) {
    return conv2d_shape(empty({p.n, p.h, p.w, p.c}), empty({p.k, p.r, p.s, p.c}), options_of(p));
  };
  const ConvShape s16 = shape(ConvCase{8, 14, 14, 16, 16, 3, 3, 1, 1, 1, 1, false});
  const ConvShape s32 = shape(ConvCase{8, 14, 14, 32, 32, 3, 3, 1, 1, 1, 1, false});
  const ConvShape s24 = shape(ConvCase{8, 14, 14, 24, 32, 3, 3, 1, 1, 1, 1, false});
  const ConvShape strided = shape(ConvCase{8, 14, 14, 16, 16, 3, 3, 2, 1, 1, 1, false});
  auto kernel = [](CpuConvAlgo a, const ConvShape& s) {
    CpuConvAlgoScope scope(a);
    return conv2d_cpu_kernel(s, false, DType::f32);
  };
  if (detail::wino_cpu_supported()) {
    for (CpuConvAlgo a : {CpuConvAlgo::auto_, CpuConvAlgo::winograd_f4, CpuConvAlgo::winograd_f2}) {
      const std::string name =
          a == CpuConvAlgo::winograd_f2 ? "lowbit_wino_f2x2" : "lowbit_wino_f4x4";
      EXPECT_THAT(kernel(a, s16), HasSubstr(name));
      EXPECT_THAT(kernel(a, s32), HasSubstr(name));
      EXPECT_THAT(kernel(a, s24), Not(HasSubstr("wino")));      // 24 channels: oneDNN direct
      EXPECT_THAT(kernel(a, strided), Not(HasSubstr("wino")));  // stride 2: oneDNN direct
    }
    // auto stays within the measured channel range (at most 256); winograd_f4 does not.
    const ConvShape s256 = shape(ConvCase{2, 4, 4, 256, 256, 3, 3, 1, 1, 1, 1, false});
    const ConvShape s512 = shape(ConvCase{2, 4, 4, 256, 512, 3, 3, 1, 1, 1, 1, false});
    EXPECT_THAT(kernel(CpuConvAlgo::auto_, s256), HasSubstr("lowbit_wino_f4x4"));
    EXPECT_THAT(kernel(CpuConvAlgo::auto_, s512), Not(HasSubstr("wino")));
    EXPECT_THAT(kernel(CpuConvAlgo::winograd_f4, s512), HasSubstr("lowbit_wino_f4x4"));
  }
  EXPECT_EQ(cpu_conv_algo(), CpuConvAlgo::auto_) << "the process-wide default";
  EXPECT_THAT(kernel(CpuConvAlgo::direct, s16), Not(HasSubstr("wino")));
  if (!cpu_has_winograd())
    GTEST_SKIP() << "oneDNN has no Winograd kernel on this CPU (needs AVX-512)";
  EXPECT_THAT(kernel(CpuConvAlgo::winograd, s16), HasSubstr("jit_wino"));
  EXPECT_THAT(kernel(CpuConvAlgo::winograd, s32), HasSubstr("jit_wino"));
  EXPECT_THAT(kernel(CpuConvAlgo::winograd, strided), Not(HasSubstr("wino")));
}

TEST(Conv2d, CpuAlgorithmNamesParseAndBadOnesAreNamed) {
  EXPECT_EQ(parse_cpu_conv_algo("auto", "x"), CpuConvAlgo::auto_);
  EXPECT_EQ(parse_cpu_conv_algo("direct", "x"), CpuConvAlgo::direct);
  EXPECT_EQ(parse_cpu_conv_algo("winograd", "x"), CpuConvAlgo::winograd);
  EXPECT_EQ(parse_cpu_conv_algo("winograd_f2", "x"), CpuConvAlgo::winograd_f2);
  EXPECT_EQ(parse_cpu_conv_algo("winograd_f4", "x"), CpuConvAlgo::winograd_f4);
  EXPECT_EQ(cpu_conv_algo_name(CpuConvAlgo::winograd), std::string("winograd"));
  EXPECT_EQ(cpu_conv_algo_name(CpuConvAlgo::winograd_f2), std::string("winograd_f2"));
  EXPECT_EQ(cpu_conv_algo_name(CpuConvAlgo::winograd_f4), std::string("winograd_f4"));
  const std::string msg =
      testing::error_of([] { parse_cpu_conv_algo("wino", "run.yaml: cpu_conv"); });
  EXPECT_THAT(msg, HasSubstr("run.yaml: cpu_conv"));
  EXPECT_THAT(msg, HasSubstr("'wino'"));
  EXPECT_THAT(msg, HasSubstr("auto, direct, winograd, winograd_f2, winograd_f4"));
}

TEST(Conv2dGpu, ForwardBackwardMatchCpu) {
  LOWBIT_SKIP_WITHOUT_GPU();
  manual_seed(15);
  for (const ConvCase& p : {ConvCase{2, 7, 6, 5, 8, 3, 3, 2, 1, 1, 1, true},
                            ConvCase{1, 8, 8, 6, 6, 3, 3, 1, 1, 1, 6, false},
                            ConvCase{3, 4, 4, 7, 5, 1, 1, 1, 0, 1, 1, true}}) {
    Tensor x = randn({p.n, p.h, p.w, p.c}).requires_grad_();
    Tensor w = randn({p.k, p.r, p.s, p.c / p.groups}).requires_grad_();
    Tensor b = p.bias ? randn({p.k}).requires_grad_() : Tensor();
    Tensor xg = x.detach().to(Device::cuda()).requires_grad_();
    Tensor wg = w.detach().to(Device::cuda()).requires_grad_();
    Tensor bg = p.bias ? b.detach().to(Device::cuda()).requires_grad_() : Tensor();
    Tensor y = conv2d(x, w, b, options_of(p));
    Tensor yg = conv2d(xg, wg, bg, options_of(p));
    EXPECT_TENSOR_NEAR(yg, y, 1e-4, 1e-4);
    Tensor up = randn(y.shape());
    sum(y * up).backward();
    sum(yg * up.to(Device::cuda())).backward();
    EXPECT_TENSOR_NEAR(xg.grad(), x.grad(), 1e-4, 1e-3);
    EXPECT_TENSOR_NEAR(wg.grad(), w.grad(), 1e-4, 1e-3);
    if (p.bias) {
      EXPECT_TENSOR_NEAR(bg.grad(), b.grad(), 1e-4, 1e-3);
    }
  }
}

// 16-bit convolutions with a bias (autocast's conv2d casts the bias too): the bias add and its
// gradient take lowbit's own add and reduction on CUDA (conv2d.cu), so compare them, forward
// and backward, with the CPU's bf16 path on the same rounded values.
TEST(Conv2dGpu, Bf16BiasForwardBackwardMatchCpu) {
  LOWBIT_SKIP_WITHOUT_GPU();
  manual_seed(17);
  Conv2dOptions o(8, 16, 3);
  o.padding = {1, 1};
  const DType t = DType::bf16;  // the CPU convolution has f32 and bf16 only
  Tensor x0 = randn({2, 6, 6, 8}).to(t), w0 = (randn({16, 3, 3, 8}) * 0.2).to(t);
  Tensor b0 = randn({16}).to(t), up = randn({2, 6, 6, 16});
  Tensor ys[2], gx[2], gw[2], gb[2];
  for (int dev = 0; dev < 2; ++dev) {
    const Device d = dev ? Device::cuda() : Device::cpu();
    // detach(): fresh leaves on both devices (to() of a tensor already there is the tensor).
    Tensor x = x0.detach().to(d).requires_grad_(), w = w0.detach().to(d).requires_grad_();
    Tensor b = b0.detach().to(d).requires_grad_();
    ys[dev] = conv2d(x, w, b, o);
    sum(ys[dev].to(DType::f32) * up.to(d)).backward();
    gx[dev] = x.grad();
    gw[dev] = w.grad();
    gb[dev] = b.grad();
  }
  // Both are f32-accumulated results rounded once to bf16; the sums run in different orders,
  // so they may land one bf16 step (2^-8 relative) apart.
  EXPECT_TENSOR_NEAR(ys[1].to(DType::f32), ys[0].to(DType::f32), 0.02, 0.02);
  EXPECT_TENSOR_NEAR(gx[1].to(DType::f32), gx[0].to(DType::f32), 0.05, 0.02);
  EXPECT_TENSOR_NEAR(gw[1].to(DType::f32), gw[0].to(DType::f32), 0.05, 0.02);
  EXPECT_TENSOR_NEAR(gb[1].to(DType::f32), gb[0].to(DType::f32), 0.05, 0.02);
}

TEST(Conv2dGpu, HalfPrecisionCloseToFloat) {
  LOWBIT_SKIP_WITHOUT_GPU();
  manual_seed(16);
  Conv2dOptions o(16, 32, 3);
  o.padding = {1, 1};
  Tensor x = randn({2, 8, 8, 16}, Device::cuda());
  Tensor w = randn({32, 3, 3, 16}, Device::cuda()) * 0.1;
  Tensor y = conv2d(x, w, Tensor(), o);
  for (DType t : {DType::bf16, DType::f16}) {
    Tensor yh = conv2d(x.to(t), w.to(t), Tensor(), o);
    // 144-term dot products of bf16-rounded inputs: relative error ~ 2^-8 * sqrt(144).
    EXPECT_TENSOR_NEAR(yh.to(DType::f32), y, 0.05, 0.05) << dtype_name(t);
  }
}

// Bad geometry: each check names the values it got and what is allowed.
TEST(Conv2d, GeometryErrorsNameTheValues) {
  const Tensor x = zeros({1, 5, 5, 2}), w = zeros({4, 3, 3, 2});
  const auto message = [&](const Conv2dOptions& o) {
    return testing::error_of([&] { conv2d_shape(x, w, o); });
  };
  Conv2dOptions o(2, 4, 3);
  o.stride = {1, 0};
  EXPECT_THAT(message(o), HasSubstr("conv2d: stride 1x0 must be positive in both dims"));
  o = Conv2dOptions(2, 4, 3);
  o.dilation = {-1, 1};
  EXPECT_THAT(message(o), HasSubstr("conv2d: dilation -1x1 must be positive in both dims"));
  o = Conv2dOptions(2, 4, 3);
  o.padding = {0, -2};
  EXPECT_THAT(message(o), HasSubstr("conv2d: padding 0x-2 must be non-negative in both dims"));
  o = Conv2dOptions(2, 4, 3);
  o.dilation = {3, 1};
  EXPECT_THAT(message(o), HasSubstr("conv2d: input [1, 5, 5, 2] is too small for kernel 3x3 with "
                                    "padding 0x0 and dilation 3x1 (output -1x3)"));
}

// The line conv2d.cu logs when cuDNN has only non-deterministic algorithms for a geometry: it
// names the direction, the whole geometry, the dtype and the algorithm.
TEST(Conv2d, NonDeterministicNoteNamesShapeAndAlgorithm) {
  Conv2dOptions o(16, 32, 3);
  o.with_stride(2).with_padding(1);
  const ConvShape s = conv2d_shape(zeros({2, 8, 8, 16}), zeros({32, 3, 3, 16}), o);
  const std::string note = conv2d_nondeterministic_note(s, DType::bf16, "backward-filter",
                                                        "CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0");
  EXPECT_EQ(note,
            "conv2d (cuda): cuDNN has no deterministic backward-filter algorithm for N=2 H=8 W=8 "
            "C=16 -> K=32 R=3 S=3 stride=2x2 padding=1x1 dilation=1x1 groups=1 (bf16); using "
            "CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, which may differ from run to run");
  EXPECT_EQ(note.find('\n'), std::string::npos);  // one line
}

TEST(Conv2d, StubsHoldTheKernelsOfThisBuild) {
  EXPECT_TRUE(testing::has_kernels_of_this_build(conv2d_forward_stub));
  EXPECT_TRUE(testing::has_kernels_of_this_build(conv2d_backward_stub));
}

}  // namespace
}  // namespace lowbit::layers
