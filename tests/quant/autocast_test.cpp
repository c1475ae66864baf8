// Autocast (core/autocast.h, `amp: bf16`): convolution and linear layers run in bf16 on f32
// parameters, the gradients land in f32, and whole float and QAT models under autocast follow
// their f32 runs closely. The bf16 kernels themselves are tested against the naive loop in
// tests/layers/conv2d_test.cpp.
#include "core/autocast.h"

#include <gmock/gmock.h>

#include <cmath>

#include "core/ops.h"
#include "core/random.h"
#include "layers/basic.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "models/registry.h"
#include "quant/convert.h"
#include "tests/common/test_util.h"

namespace lowbit {
namespace {

// Whether oneDNN has bf16 convolution kernels on this CPU (AVX-512); the tests skip otherwise.
bool cpu_has_bf16_conv() {
  try {
    layers::conv2d(zeros({1, 2, 2, 1}, DType::bf16), zeros({1, 1, 1, 1}, DType::bf16), Tensor(),
                   layers::Conv2dOptions(1, 1, 1));
    return true;
  } catch (const Error&) {
    return false;
  }
}
#define SKIP_WITHOUT_BF16() \
  if (!cpu_has_bf16_conv()) GTEST_SKIP() << "oneDNN has no bf16 convolution on this CPU"

TEST(Autocast, GuardScopesNestAndRestore) {
  EXPECT_FALSE(autocast_dtype().has_value());
  {
    AutocastGuard on(DType::bf16);
    EXPECT_EQ(autocast_dtype(), DType::bf16);
    {
      AutocastGuard off(std::nullopt);
      EXPECT_FALSE(autocast_dtype().has_value());
      EXPECT_EQ(autocast_input(ones({2})).dtype(), DType::f32);
    }
    EXPECT_EQ(autocast_dtype(), DType::bf16);
    EXPECT_EQ(autocast_input(ones({2})).dtype(), DType::bf16);
    EXPECT_EQ(autocast_input(ones({2}, DType::f64)).dtype(), DType::f64);  // f64 is never lowered
    EXPECT_EQ(autocast_input(ones({2}, DType::i64)).dtype(), DType::i64);
    EXPECT_FALSE(autocast_input(Tensor()).defined());
  }
  EXPECT_FALSE(autocast_dtype().has_value());
  EXPECT_THROW(AutocastGuard{DType::f64}, Error);  // braces: a declaration to clang otherwise
}

// Under autocast a Conv2d module on f32 input equals the explicit bf16 convolution of the
// rounded input and weight, bit for bit; its parameter and input gradients are the explicit
// path's bf16 gradients, in f32.
TEST(Autocast, ConvAndLinearEqualTheExplicitBf16Path) {
  SKIP_WITHOUT_BF16();
  manual_seed(3);
  layers::Conv2dOptions o(4, 6, 3);
  o.padding = {1, 1};
  o.bias = true;
  layers::Conv2d conv(o);
  layers::Linear lin(6, 5, true);
  Tensor x = randn({2, 5, 5, 4}).requires_grad_();
  Tensor up = randn({2, 5, 5, 5});
  Tensor y;
  {
    AutocastGuard amp(DType::bf16);
    Tensor h = conv.forward(x);
    EXPECT_EQ(h.dtype(), DType::bf16);
    y = lin.forward(h);
    EXPECT_EQ(y.dtype(), DType::bf16);
  }
  sum(y.to(DType::f32) * up).backward();

  Tensor xb = x.detach().to(DType::bf16).requires_grad_();
  auto leaf = [](const Tensor& p) { return p.detach().to(DType::bf16).requires_grad_(); };
  Tensor cw = leaf(conv.weight()), cb = leaf(conv.bias()), lw = leaf(lin.weight()),
         lb = leaf(lin.bias());
  Tensor yb = layers::linear(layers::conv2d(xb, cw, cb, o), lw, lb);
  EXPECT_TENSOR_NEAR(y, yb, 0, 0);
  sum(yb.to(DType::f32) * up).backward();
  for (auto [p, ref] : {std::pair{x, xb},
                        {conv.weight(), cw},
                        {conv.bias(), cb},
                        {lin.weight(), lw},
                        {lin.bias(), lb}}) {
    ASSERT_TRUE(p.grad().defined());
    EXPECT_EQ(p.grad().dtype(), DType::f32);
    EXPECT_TENSOR_NEAR(p.grad(), ref.grad(), 0, 0);
  }
  EXPECT_EQ(conv.weight().dtype(), DType::f32);
}

// BatchNorm under autocast takes the bf16 activations, keeps f32 parameters and statistics,
// and returns bf16.
TEST(Autocast, BatchNormKeepsF32StatisticsAndReturnsTheInputDtype) {
  manual_seed(4);
  layers::BatchNorm2d bn(3);
  Tensor x = (randn({4, 3, 3, 3}) * 2.0 + 1.0).to(DType::bf16);
  AutocastGuard amp(DType::bf16);
  Tensor y = bn.forward(x);
  EXPECT_EQ(y.dtype(), DType::bf16);
  EXPECT_EQ(bn.running_mean().dtype(), DType::f32);
  // Running mean after one step: 0.1 * the batch mean of the bf16 values.
  Tensor mean = x.to(DType::f64).reshape({-1, 3}).mean({0});
  EXPECT_TENSOR_NEAR(bn.running_mean(), mean * 0.1, 1e-6, 1e-7);
}

double cosine(const Tensor& a, const Tensor& b) {
  const auto x = testing::to_doubles(a), y = testing::to_doubles(b);
  double xy = 0, xx = 0, yy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    xy += x[i] * y[i];
    xx += x[i] * x[i];
    yy += y[i] * y[i];
  }
  return xy / std::sqrt(xx * yy + 1e-300);
}

// One training step of ResNet-20 (float, and W4A4 LSQ QAT with BN folded) under autocast: the
// loss is within 2% of the f32 step's and every parameter gradient points the same way
// (cosine similarity) as the f32 one. bf16 keeps 8 bits of mantissa, so they are close, not
// equal; a wrong cast, a lost gradient or a stale f32 path would break this.
TEST(Autocast, ResNet20StepFollowsF32FloatAndQat) {
  SKIP_WITHOUT_BF16();
  for (bool qat : {false, true}) {
    SCOPED_TRACE(qat ? "qat" : "float");
    manual_seed(5);
    models::ModelOptions mo;
    mo.num_classes = 10;
    mo.in_channels = 1;
    mo.input_size = 12;
    layers::ModulePtr model = models::create_model("resnet20", mo);
    model->train();
    Tensor images = randn({16, 12, 12, 1});
    Tensor target = randn({16, 10});  // the loss: -mean(target * log_softmax(logits))
    if (qat) {
      quant::QuantConfig qc;
      qc.weight = {"lsq", quant::QuantizerOptions{{"bits", "4"}, {"per_channel", "true"}}};
      qc.activation = {"lsq", quant::QuantizerOptions{{"bits", "4"}}};
      // All layers at 4 bits: at 8 bits the codes are as fine as bf16's own 8-bit significand,
      // so the rounding residuals in the LSQ step gradient are bf16's, not the quantizer's
      // (docs/design.md, "Mixed precision"), and the 8-bit layers' step gradients differ.
      qc.first_last_bits = 0;
      quant::quantize_model(*model, qc, images);
    }
    auto step = [&](std::optional<DType> amp) {
      AutocastGuard g(amp);
      model->zero_grad();
      Tensor logits = model->forward(images);
      EXPECT_EQ(logits.dtype(), amp ? DType::bf16 : DType::f32);
      Tensor loss = -mean(target * log_softmax(logits.to(DType::f32), -1));
      loss.backward();
      std::vector<Tensor> grads;
      for (const auto& [name, p] : model->named_parameters()) {
        grads.push_back(p.grad().defined() ? p.grad().clone() : Tensor());
      }
      return std::pair{loss.item(), grads};
    };
    // BN in eval for both passes, so that the two see the same statistics and the running
    // averages do not move between them.
    model->eval();
    const auto [l32, g32] = step(std::nullopt);
    const auto [l16, g16] = step(DType::bf16);
    EXPECT_NEAR(l16, l32, 0.02 * std::abs(l32));
    ASSERT_EQ(g32.size(), g16.size());
    // Tensors one by one; the LSQ step sizes' gradients (per tensor or per channel: sums of
    // rounding residuals that bf16 inputs legitimately change, some to the other sign when tiny,
    // and that any change of the f32 path's rounding moves too, e.g. the CPU convolution
    // algorithm) as one vector.
    const auto names = model->named_parameters();
    ASSERT_EQ(names.size(), g32.size());
    int checked = 0;
    std::vector<double> s16, s32;
    for (size_t i = 0; i < g32.size(); ++i) {
      ASSERT_EQ(g32[i].defined(), g16[i].defined()) << "parameter " << i;
      if (!g32[i].defined()) continue;
      EXPECT_EQ(g16[i].dtype(), DType::f32);
      const std::string& name = names[i].first;
      const bool lsq_step = name.size() >= 6 && name.compare(name.size() - 6, 6, ".scale") == 0;
      if (lsq_step) {
        for (double v : testing::to_doubles(g16[i])) s16.push_back(v);
        for (double v : testing::to_doubles(g32[i])) s32.push_back(v);
        continue;
      }
      EXPECT_GT(cosine(g16[i], g32[i]), qat ? 0.95 : 0.99)
          << "parameter " << name << " " << shape_str(g32[i].shape());
      ++checked;
    }
    if (qat) {
      ASSERT_GT(s32.size(), 10u);
      const int64_t n = int64_t(s32.size());
      // Measured 0.99 over 718 values (0.92 over the per-tensor ones alone; uncorrelated vectors
      // would give about 0, a lost or wrong-signed step gradient path well below 0.85).
      EXPECT_GT(cosine(testing::tensor_of(s16, {n}), testing::tensor_of(s32, {n})), 0.85);
    }
    EXPECT_GT(checked, 20);
  }
}

}  // namespace
}  // namespace lowbit
