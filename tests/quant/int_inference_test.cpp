// Integer-only reference inference (quant/int_inference.h, quant/int_export.h; docs/methods.md,
// "Integer inference"): requantization against exact references (ties, saturation), code packing at
// 1-8 bits, the integer conv/linear against the fake-quant layer, whole QAT models whose every
// layer's codes match lowbit's fake-quant evaluation, the files, and the errors for what has no
// integer form.
#include "quant/int_inference.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/random.h"
#include "layers/basic.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "layers/pooling.h"
#include "models/registry.h"
#include "quant/convert.h"
#include "quant/int_export.h"
#include "quant/qlayers.h"
#include "tests/common/test_util.h"

namespace lowbit::quant {
namespace {

namespace fs = std::filesystem;

// round half to even of a long double (exact for the products used here).
long double rhe(long double v) {
  const long double f = std::floor(v), d = v - f;
  if (d > 0.5L) return f + 1;
  if (d < 0.5L) return f;
  return std::fmod(f, 2.0L) == 0 ? f : f + 1;
}

TEST(Requant, FloatMultiplierMatchesExactReferenceWithTies) {
  std::mt19937_64 rng(5);
  std::uniform_int_distribution<int64_t> vd(-(int64_t(1) << 30), int64_t(1) << 30);
  std::uniform_real_distribution<double> ed(-30.0, 2.0);
  for (int i = 0; i < 200000; ++i) {
    const int64_t v = vd(rng);
    const double m = std::exp2(ed(rng));
    ASSERT_EQ(round_scaled(v, m), int64_t(rhe((long double)v * (long double)m))) << v << " * " << m;
  }
  // Exact ties: v * 2^-k = n + 1/2 goes to the even neighbour, both signs.
  EXPECT_EQ(round_scaled(1, 0.5), 0);
  EXPECT_EQ(round_scaled(3, 0.5), 2);
  EXPECT_EQ(round_scaled(-5, 0.5), -2);
  EXPECT_EQ(round_scaled(-7, 0.5), -4);
  for (int k = 1; k < 20; ++k)
    for (int64_t n = -50; n <= 50; ++n) {
      const int64_t v = (2 * n + 1) * (int64_t(1) << (k - 1));  // v / 2^k = n + 1/2
      const int64_t even = (n % 2 == 0) ? n : n + 1;
      ASSERT_EQ(round_scaled(v, std::ldexp(1.0, -k)), even) << v << " k=" << k;
      ASSERT_EQ(round_scaled_fixed(v, fixed_point_multiplier(std::ldexp(1.0, -k))), even);
    }
  // Saturation and zero point: clamp after adding z.
  EXPECT_EQ(clamp_code(200, 0, -128, 127), 127);
  EXPECT_EQ(clamp_code(-200, 0, -128, 127), -128);
  EXPECT_EQ(clamp_code(250, 10, 0, 255), 255);
  EXPECT_EQ(clamp_code(-3, 2, 2, 255), 2);  // a ReLU folded as lo = z
  EXPECT_EQ(clamp_code(5, 2, 0, 15), 7);
}

TEST(Requant, FixedPointIsExactForItsMultiplierAndWithinOneCodeOfFloat) {
  std::mt19937_64 rng(6);
  std::uniform_int_distribution<int64_t> vd(-(int64_t(1) << 31) + 1, (int64_t(1) << 31) - 1);
  std::uniform_real_distribution<double> ed(-40.0, 20.0);
  int differ = 0;
  for (int i = 0; i < 200000; ++i) {
    const int64_t v = vd(rng);
    const double m = std::exp2(ed(rng));
    if (std::fabs(double(v) * m) >= 2147483648.0) continue;  // results of interest: int32
    const FixedPointMultiplier f = fixed_point_multiplier(m);
    ASSERT_GE(f.m0, int64_t(1) << 30);
    ASSERT_LT(f.m0, int64_t(1) << 31);
    ASSERT_NEAR(std::ldexp(double(f.m0), -f.shift) / m, 1.0, 1e-9);
    // Exact reference: v m0 < 2^62 is exact in long double's 64-bit mantissa.
    const long double exact = std::ldexp((long double)v * (long double)f.m0, -f.shift);
    const int64_t got = round_scaled_fixed(v, f);
    ASSERT_EQ(got, int64_t(rhe(exact))) << v << " * " << m;
    const int64_t fl = round_scaled(v, m);
    ASSERT_LE(std::llabs(got - fl), 1) << v << " * " << m;
    differ += got != fl;
  }
  EXPECT_LT(differ, 2000);  // the multipliers differ by < 2^-30 relative: rare one-code steps
  // Large values (a residual stream in int64): still exact.
  for (int64_t v : {int64_t(1) << 40, -(int64_t(1) << 45) + 12345}) {
    const FixedPointMultiplier f = fixed_point_multiplier(0.3);
    const long double exact = std::ldexp((long double)v * (long double)f.m0, -f.shift);
    EXPECT_EQ(round_scaled_fixed(v, f), int64_t(rhe(exact)));
  }
  EXPECT_THROW(fixed_point_multiplier(0.0), Error);
  EXPECT_THROW(fixed_point_multiplier(std::ldexp(1.0, 31)), Error);
}

TEST(Packing, RoundTripsEveryWidthAndPacksLsbFirst) {
  std::mt19937 rng(7);
  for (int bits = 1; bits <= 8; ++bits) {
    for (int32_t qmin : {-(1 << (bits - 1)), 0}) {
      for (int64_t n : {1, 7, 8, 9, 1001}) {
        std::vector<int32_t> q(static_cast<size_t>(n));
        for (auto& c : q) c = qmin + int32_t(rng() % (1u << bits));
        const auto bytes = pack_codes(q, bits, qmin);
        ASSERT_EQ(int64_t(bytes.size()), (n * bits + 7) / 8)
            << bits;  // docs/methods.md, "Accounting"'s size
        ASSERT_EQ(unpack_codes(bytes, n, bits, qmin), q) << bits << " bits, n " << n;
      }
    }
  }
  // Hand-packed: 4-bit signed codes -8, 7, -1 -> fields 0, 15, 7 -> bytes 0xF0, 0x07.
  EXPECT_EQ(pack_codes({-8, 7, -1}, 4, -8), (std::vector<uint8_t>{0xF0, 0x07}));
  // 1 bit: 1,0,1,1,0,0,0,0,1 -> 0b00001101, 0b1.
  EXPECT_EQ(pack_codes({1, 0, 1, 1, 0, 0, 0, 0, 1}, 1, 0), (std::vector<uint8_t>{0x0D, 0x01}));
  // 3 bits: 5, 6, 7 -> 101 110 111 LSB first = bits 1,0,1,0,1,1,1,1,1 -> 0xF5, 0x01.
  EXPECT_EQ(pack_codes({5, 6, 7}, 3, 0), (std::vector<uint8_t>{0xF5, 0x01}));
  EXPECT_THROW(pack_codes({16}, 4, 0), Error);
}

// Random BN statistics (so folding matters), quantized with `cfg`, calibrated on random batches.
void prepare(layers::Module& model, const QuantConfig& cfg, const Shape& in_shape) {
  for (auto& [name, m] : model.named_modules()) {
    if (auto* bn = dynamic_cast<layers::BatchNorm2d*>(m.get())) {
      autograd::NoGradGuard g;
      const int64_t c = bn->options().num_features;
      bn->weight().copy_(rand({c}) * 0.6 + 0.7);
      bn->bias().copy_(randn({c}) * 0.2);
      bn->running_mean().copy_(randn({c}) * 0.2);
      bn->running_var().copy_(rand({c}) * 0.5 + 0.5);
    }
  }
  model.eval();
  quantize_model(model, cfg, randn(in_shape));
  int left = 3;
  calibrate_model(
      model,
      [&](Tensor& x) {
        if (left-- == 0) return false;
        x = randn(in_shape);
        return true;
      },
      3, true, true);
  model.eval();
}

QuantConfig config(const std::string& q, int64_t bits) {
  QuantConfig cfg;
  cfg.weight = {q, QuantizerOptions{{"bits", std::to_string(bits)}, {"per_channel", "true"}}};
  cfg.activation = {q, QuantizerOptions{{"bits", std::to_string(bits)}}};
  return cfg;
}

// The fake-quant layer's output (conv + folded BN, before any ReLU) against the integer conv's
// accumulators times their scales, and the linear likewise, on random inputs.
TEST(IntLayers, ConvAndLinearMatchTheFakeQuantLayers) {
  for (int64_t groups : {1, 4}) {
    for (const std::string q : {"lsq", "uniform"}) {
      manual_seed(40 + groups);
      auto net = std::make_shared<layers::Sequential>();
      net->add(std::make_shared<layers::Conv2d>(
          layers::Conv2dOptions(4, 8, 3).with_stride(2).with_padding(1).with_groups(groups)));
      net->add(std::make_shared<layers::BatchNorm2d>(8));
      net->add(std::make_shared<layers::GlobalAvgPool2d>());
      net->add(std::make_shared<layers::Linear>(8, 5));
      prepare(*net, config(q, 4), {2, 7, 7, 4});
      const IntModel im = lower_to_int(*net, {7, 7, 4});
      // Fake-quant outputs of the BN and the linear.
      struct Rec : layers::ForwardRecorder {
        std::vector<Tensor> outs;
        void on_forward(layers::Module& m, const Tensor&, const Tensor& y) override {
          if (m.type_name() != "QConv2d") outs.push_back(y.detach());
        }
      } rec;
      const Tensor x = randn({3, 7, 7, 4});
      Tensor logits;
      {
        autograd::NoGradGuard ng;
        layers::RecordForward g(&rec);
        logits = net->forward(x);
      }
      ASSERT_EQ(rec.outs.size(), 2u);
      std::vector<std::vector<double>> got;
      IntRunOptions o;
      o.observer = [&](const IntOp& op, IntTensor& t) {
        if (op.kind != "conv" && op.kind != "linear") return;
        const IntValue& v = im.values[size_t(op.output)];
        std::vector<double> d;
        for (size_t i = 0; i < t.data.size(); ++i)
          d.push_back(double(t.data[i]) * v.scale[i % v.scale.size()]);
        got.push_back(d);
      };
      const std::vector<float> il = run_int_model(im, x.data<float>(), 3, o);
      ASSERT_EQ(got.size(), 2u);
      for (size_t l = 0; l < 2; ++l) {
        const auto want = testing::to_doubles(rec.outs[l]);
        ASSERT_EQ(want.size(), got[l].size());
        double mx = 0;
        for (double w : want) mx = std::max(mx, std::fabs(w));
        for (size_t i = 0; i < want.size(); ++i)
          ASSERT_NEAR(got[l][i], want[i], 1e-5 * mx + 1e-6)
              << q << " groups " << groups << " layer " << l << " at " << i;
      }
      const auto lw = testing::to_doubles(logits);
      for (size_t i = 0; i < lw.size(); ++i)
        EXPECT_NEAR(il[i], lw[i], 1e-4 + 1e-4 * std::fabs(lw[i]));
    }
  }
}

// Every layer at least 99.9% equal and never more than one code apart.
void expect_codes_match(const CodeComparison& c) {
  EXPECT_FALSE(c.layers.empty());
  for (const auto& [name, s] : c.layers) {
    EXPECT_GE(double(s.equal), 0.999 * double(s.total)) << name;
    EXPECT_LE(s.max_diff, 1) << name;
  }
}

struct ModelCase {
  std::string model;
  std::string quantizer;
  int64_t bits;
  double width;
  bool end_to_end;  // the end-to-end claim holds for this random model (see below)
};

// The reference is the fake-quant model with the direct convolution (Winograd's float rounding
// is larger, so more values would land near a rounding tie by float error alone).
struct DirectConv {
  layers::CpuConvAlgo prev = layers::cpu_conv_algo();
  DirectConv() { layers::set_cpu_conv_algo(layers::CpuConvAlgo::direct); }
  ~DirectConv() { layers::set_cpu_conv_algo(prev); }
};

class WholeModel : public ::testing::TestWithParam<ModelCase> {};

// Per layer (each layer fed the fake-quant codes of its input): >= 99.9% of the codes equal,
// none more than one apart, with the float multiplier and the fixed-point one. End to end (the
// integer model on its own codes), the same where the random model does not amplify the rare
// float-tie differences from layer to layer (random weights and BN statistics amplify more than
// trained ones; docs/export.md measures trained models end to end on Fashion-MNIST).
TEST_P(WholeModel, EveryLayersCodesEqualFakeQuant) {
  const ModelCase c = GetParam();
  DirectConv direct;
  manual_seed(3);
  models::ModelOptions mo;
  mo.in_channels = 1;
  mo.num_classes = 10;
  mo.input_size = 16;
  mo.width_mult = c.width;
  auto model = models::create_model(c.model, mo);
  prepare(*model, config(c.quantizer, c.bits), {4, 16, 16, 1});
  const IntModel im = lower_to_int(*model, {16, 16, 1});
  const Tensor x = randn({16, 16, 16, 1});
  Tensor fl;
  {
    autograd::NoGradGuard ng;
    fl = model->forward(x);
  }
  const auto fv = testing::to_doubles(fl);
  for (bool fixed : {false, true}) {
    for (bool teacher : {true, false}) {
      if (!teacher && !c.end_to_end) continue;
      SCOPED_TRACE(std::string(fixed ? "fixed point" : "float multiplier") +
                   (teacher ? ", per layer" : ", end to end"));
      const CodeComparison cmp = compare_with_fake_quant(*model, im, x, fixed, teacher);
      expect_codes_match(cmp);
      const std::vector<float>& il = cmp.int_logits;
      // Logits: the fake-quant model's, up to float summation order and rare one-code steps.
      double mx = 0, err = 0;
      for (size_t i = 0; i < fv.size(); ++i) {
        mx = std::max(mx, std::fabs(fv[i]));
        err = std::max(err, std::fabs(fv[i] - il[i]));
      }
      EXPECT_LE(err, 0.02 * mx);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, WholeModel,
                         ::testing::Values(ModelCase{"resnet20", "lsq", 4, 1.0, true},
                                           ModelCase{"resnet20", "uniform", 8, 1.0, false},
                                           ModelCase{"resnet20", "lsq", 8, 1.0, false},
                                           ModelCase{"dsnet", "lsq", 4, 1.0, true},
                                           ModelCase{"dsnet", "uniform", 8, 1.0, true},
                                           ModelCase{"mobilenet_v2", "lsq", 4, 0.25, true},
                                           ModelCase{"mobilenet_v2", "uniform", 8, 0.25, true},
                                           ModelCase{"vgg16_bn", "lsq", 4, 1.0, false}),
                         [](const auto& p) {
                           return p.param.model + "_" + p.param.quantizer + "_w" +
                                  std::to_string(p.param.bits);
                         });

fs::path temp_dir(const std::string& name) {
  const fs::path d =
      fs::temp_directory_path() / ("lowbit_int_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d;
}

TEST(IntFiles, SaveLoadRunsTheSameAndRejectsDamage) {
  manual_seed(9);
  models::ModelOptions mo;
  mo.in_channels = 1;
  mo.num_classes = 10;
  mo.input_size = 12;
  auto model = models::create_model("dsnet", mo);
  prepare(*model, config("lsq", 4), {2, 12, 12, 1});
  const IntModel im = lower_to_int(*model, {12, 12, 1});
  const fs::path dir = temp_dir("files");
  save_int_model(im, dir.string());
  EXPECT_TRUE(fs::exists(dir / "model.json"));
  EXPECT_FALSE(fs::exists(dir / "model.json.tmp"));
  const IntModel back = load_int_model(dir.string());
  const Tensor x = randn({3, 12, 12, 1});
  EXPECT_EQ(run_int_model(im, x.data<float>(), 3), run_int_model(back, x.data<float>(), 3));
  // Weights at 4 bits take half a byte each.
  int64_t packed = 0;
  for (const IntOp& op : im.ops)
    if (op.kind == "conv" || op.kind == "linear")
      packed += (int64_t(op.weight.size()) * op.bits + 7) / 8 + 4 * int64_t(op.bias.size());
  EXPECT_EQ(int64_t(fs::file_size(dir / "weights.bin")), packed);
  // A truncated weights.bin and a wrong scale are input errors naming the file.
  fs::resize_file(dir / "weights.bin", 10);
  EXPECT_THROW(load_int_model(dir.string()), InputError);
  save_int_model(im, dir.string());
  {
    std::ifstream f(dir / "model.json");
    nlohmann::json j = nlohmann::json::parse(f);
    j["values"][1]["scale"][0] = -0.5;
    std::ofstream(dir / "model.json") << j.dump();
  }
  const std::string err = testing::error_of([&] { load_int_model(dir.string()); });
  EXPECT_NE(err.find("model.json"), std::string::npos) << err;
  EXPECT_NE(err.find("scale"), std::string::npos) << err;
  fs::remove_all(dir);
}

TEST(IntExport, WhatHasNoIntegerFormNamesTheLayer) {
  manual_seed(10);
  models::ModelOptions mo;
  mo.in_channels = 1;
  mo.num_classes = 10;
  mo.input_size = 8;
  {
    auto model = models::create_model("dsnet", mo);
    QuantConfig cfg = config("lsq", 4);
    cfg.rules.push_back(QuantRule{});
    cfg.rules.back().match = "features.1.0";
    cfg.rules.back().activation_quantizer = "dsq";
    prepare(*model, cfg, {2, 8, 8, 1});
    const std::string e = testing::error_of([&] { lower_to_int(*model, {8, 8, 1}); });
    EXPECT_NE(e.find("features.1.0"), std::string::npos) << e;
    EXPECT_NE(e.find("'dsq' has no integer form"), std::string::npos) << e;
    EXPECT_NE(e.find("--format onnx"), std::string::npos) << e;
  }
  {
    auto model = models::create_model("dsnet", mo);
    QuantConfig cfg = config("lsq", 4);
    cfg.rules.push_back(QuantRule{});
    cfg.rules.back().match = "fc";
    cfg.rules.back().skip = true;
    prepare(*model, cfg, {2, 8, 8, 1});
    const std::string e = testing::error_of([&] { lower_to_int(*model, {8, 8, 1}); });
    EXPECT_NE(e.find("layer 'fc' is a float Linear"), std::string::npos) << e;
  }
  {
    auto model = models::create_model("dsnet", mo);
    QuantConfig cfg = config("lsq", 4);
    cfg.fold_bn = false;
    prepare(*model, cfg, {2, 8, 8, 1});
    const std::string e = testing::error_of([&] { lower_to_int(*model, {8, 8, 1}); });
    EXPECT_NE(e.find("BatchNorm2d 'features.0.1' is not folded"), std::string::npos) << e;
  }
}

}  // namespace
}  // namespace lowbit::quant
