// cross_entropy and top-k accuracy: against the naive loop of tests/reference/loss_ref.h,
// against lowbit's own log_softmax + gather, finite differences, hand values for label
// smoothing, argument errors, and CPU/CUDA parity.
#include "train/loss.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/random.h"
#include "tests/common/gradcheck.h"
#include "tests/common/test_util.h"
#include "tests/reference/loss_ref.h"

namespace lowbit::train {
namespace {

using testing::tensor_of;
using testing::to_doubles;

Tensor random_logits(int64_t n, int64_t c, DType dtype, double scale = 3.0) {
  return mul(randn({n, c}, TensorOptions(DType::f64)), scale).to(dtype);
}

Tensor random_targets(int64_t n, int64_t c) { return randint(0, c, {n}); }

// Class indices (i64, 1-D).
Tensor labels(const std::vector<int64_t>& v) {
  return from_vector(v, {int64_t(v.size())}, TensorOptions(DType::i64));
}

// Runs cross_entropy forward and backward on a fresh leaf; returns {loss, dlogits}.
std::pair<Tensor, Tensor> loss_and_grad(const Tensor& logits, const Tensor& target, double eps) {
  Tensor x = logits.detach().clone();
  x.requires_grad_(true);
  Tensor loss = cross_entropy(x, target, eps);
  loss.backward();
  return {loss.detach(), x.grad()};
}

// One error_of for every suite (tests/common/test_util.h).
using ::lowbit::testing::error_of;

template <typename F>
void expect_error(F&& f, const std::string& needle) {
  const std::string msg = error_of(f);
  EXPECT_NE(msg.find(needle), std::string::npos)
      << "want an error containing '" << needle << "', got: '" << msg << "'";
}

TEST(CrossEntropy, MatchesNaiveLoop) {
  manual_seed(11);
  struct Case {
    int64_t n, c;
  };
  for (const Case cs : {Case{7, 5}, Case{3, 1000}, Case{1, 1}, Case{4, 2}}) {
    for (const DType dtype : {DType::f64, DType::f32}) {
      for (const double eps : {0.0, 0.1, 1.0}) {
        SCOPED_TRACE(::testing::Message()
                     << "N " << cs.n << " C " << cs.c << " " << dtype << " eps " << eps);
        const Tensor x = random_logits(cs.n, cs.c, dtype);
        const Tensor t = random_targets(cs.n, cs.c);
        const auto ref =
            reference::cross_entropy(to_doubles(x), cs.n, cs.c, t.to_vector<int64_t>(), eps);
        const auto [loss, grad] = loss_and_grad(x, t, eps);
        EXPECT_EQ(loss.dim(), 0);
        EXPECT_EQ(loss.dtype(), dtype);
        // f32: float accumulation over up to 1000 terms of magnitude ~10.
        const double rtol = dtype == DType::f64 ? 1e-12 : 2e-5;
        const double atol = dtype == DType::f64 ? 1e-14 : 1e-6;
        EXPECT_NEAR(loss.item(), ref.loss, atol + rtol * std::fabs(ref.loss));
        EXPECT_TENSOR_NEAR(grad, tensor_of(ref.grad, {cs.n, cs.c}, DType::f64), rtol, atol);
      }
    }
  }
}

TEST(CrossEntropy, MatchesLogSoftmaxGather) {
  manual_seed(12);
  const int64_t n = 6, c = 9;
  const Tensor x0 = random_logits(n, c, DType::f64);
  const Tensor t = random_targets(n, c);
  for (const double eps : {0.0, 0.25}) {
    SCOPED_TRACE(::testing::Message() << "eps " << eps);
    Tensor a = x0.clone();
    a.requires_grad_(true);
    Tensor fused = cross_entropy(a, t, eps);
    fused.backward();

    // The same loss composed from lowbit ops: (1-eps) NLL + eps * mean over classes of -logp.
    Tensor b = x0.clone();
    b.requires_grad_(true);
    Tensor logp = log_softmax(b, 1);
    Tensor nll = neg(mean(gather(logp, 1, t.unsqueeze(1))));
    Tensor smooth = neg(mean(logp));
    Tensor composed = add(mul(nll, 1.0 - eps), mul(smooth, eps));
    composed.backward();

    EXPECT_NEAR(fused.item(), composed.item(), 1e-12);
    EXPECT_TENSOR_NEAR(a.grad(), b.grad(), 1e-10, 1e-13);
  }
}

TEST(CrossEntropy, Gradcheck) {
  manual_seed(13);
  const Tensor x = random_logits(4, 6, DType::f64);
  const Tensor t = random_targets(4, 6);
  for (const double eps : {0.0, 0.3}) {
    SCOPED_TRACE(::testing::Message() << "eps " << eps);
    EXPECT_TRUE(testing::gradcheck(
        [&](const std::vector<Tensor>& in) { return cross_entropy(in[0], t, eps); }, {x}));
  }
}

TEST(CrossEntropy, LabelSmoothingHandValues) {
  // Row 0: x = [0, ln 3], t = 0 -> p = [1/4, 3/4]; with eps = 0.2 and C = 2, q = [0.9, 0.1]:
  //   loss0 = -(0.9 ln 1/4 + 0.1 ln 3/4) = ln 4 - 0.1 ln 3.
  // Row 1: x = [0, 0], t = 1 -> p = [1/2, 1/2]; loss1 = ln 2 whatever q is.
  // Mean: (3 ln 2 - 0.1 ln 3) / 2 = 0.98479015640651...
  // dlogits = (p - q) / N: row 0 [-0.325, 0.325]; row 1 (q = [0.1, 0.9]) [0.2, -0.2].
  const Tensor x = tensor_of({0.0, std::log(3.0), 0.0, 0.0}, {2, 2}, DType::f64);
  const Tensor t = labels({0, 1});
  const auto [loss, grad] = loss_and_grad(x, t, 0.2);
  EXPECT_NEAR(loss.item(), 0.9847901564065124, 1e-15);
  EXPECT_TENSOR_NEAR(grad, tensor_of({-0.325, 0.325, 0.2, -0.2}, {2, 2}, DType::f64), 0, 1e-15);

  // eps = 1: the target does not matter; loss = mean(lse - mean_j x_j).
  const Tensor y = tensor_of({1.0, 2.0, 3.0}, {1, 3}, DType::f64);
  const double lse = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
  for (int64_t target : {0, 2}) {
    const auto [l, g] = loss_and_grad(y, labels({target}), 1.0);
    EXPECT_NEAR(l.item(), lse - 2.0, 1e-14);
  }
}

TEST(CrossEntropy, InvalidTargetIsNamed) {
  const Tensor x = zeros({3, 5});
  const std::string high = error_of([&] { cross_entropy(x, labels({0, 5, 1})); });
  EXPECT_NE(high.find("target 5 at position 1"), std::string::npos) << high;
  EXPECT_NE(high.find("[0, 5)"), std::string::npos) << high;
  const std::string low = error_of([&] { cross_entropy(x, labels({0, 1, -1}).to(DType::i32)); });
  EXPECT_NE(low.find("target -1 at position 2"), std::string::npos) << low;
  const std::string acc = error_of([&] { topk_correct(x, labels({7, 0, 0}), 1); });
  EXPECT_NE(acc.find("target 7 at position 0"), std::string::npos) << acc;
}

TEST(CrossEntropy, RejectsBadArguments) {
  const Tensor x = zeros({3, 4});
  const Tensor t = zeros({3}, DType::i64);
  expect_error([&] { cross_entropy(zeros({4}), t); }, "(N, C)");
  expect_error([&] { cross_entropy(x, zeros({3, 1}, DType::i64)); }, "want (N)");
  expect_error([&] { cross_entropy(x, zeros({2}, DType::i64)); }, "does not match");
  expect_error([&] { cross_entropy(x, zeros({3})); }, "class indices");
  expect_error([&] { cross_entropy(zeros({3, 4}, DType::i32), t); }, "floating");
  expect_error([&] { cross_entropy(x, t, 1.5); }, "label_smoothing 1.5");
  expect_error([&] { cross_entropy(zeros({0, 4}), zeros({0}, DType::i64)); }, "empty");
}

TEST(CrossEntropy, StridedLogitsAndI32Targets) {
  manual_seed(14);
  const Tensor x = random_logits(5, 7, DType::f32);
  const Tensor t = random_targets(5, 7);
  const auto [l0, g0] = loss_and_grad(x, t, 0.1);
  const auto [l1, g1] = loss_and_grad(testing::non_contiguous_copy(x), t.to(DType::i32), 0.1);
  EXPECT_EQ(l0.item(), l1.item());
  EXPECT_TENSOR_NEAR(g1, g0, 0, 0);
}

TEST(CrossEntropy, LargeLogitsStayFinite) {
  // exp(1000) overflows; the max-subtracted normaliser does not.
  const Tensor x = tensor_of({1000.0, 0.0, -1000.0, -INFINITY}, {1, 4}, DType::f32);
  const auto [loss, grad] = loss_and_grad(x, labels({1}), 0.0);
  EXPECT_FLOAT_EQ(float(loss.item()), 1000.0f);
  EXPECT_TENSOR_NEAR(grad, tensor_of({1.0, -1.0, 0.0, 0.0}, {1, 4}), 0, 1e-6);
}

TEST(CrossEntropy, HalfPrecisionLogits) {
  // bf16/f16 logits are read as float, so the math is that of f32 logits holding the same
  // (rounded) values; only the result is rounded to the 16-bit type (8 or 11 bits).
  manual_seed(15);
  const Tensor t = random_targets(8, 10);
  for (const DType dtype : {DType::bf16, DType::f16}) {
    SCOPED_TRACE(::testing::Message() << dtype);
    const Tensor x16 = random_logits(8, 10, dtype);
    const auto [l16, g16] = loss_and_grad(x16, t, 0.1);
    const auto [l32, g32] = loss_and_grad(x16.to(DType::f32), t, 0.1);
    EXPECT_EQ(l16.dtype(), dtype);
    EXPECT_EQ(g16.dtype(), dtype);
    const double tol = dtype == DType::bf16 ? 1.0 / 256 : 1.0 / 2048;
    EXPECT_NEAR(l16.item(), l32.item(), tol * std::fabs(l32.item()));
    EXPECT_TENSOR_NEAR(g16, g32, tol, 1e-6);
  }
}

TEST(CrossEntropy, NoGraphWithoutGrad) {
  const Tensor loss = cross_entropy(zeros({2, 3}), zeros({2}, DType::i64));
  EXPECT_FALSE(loss.requires_grad());
  EXPECT_NEAR(loss.item(), std::log(3.0), 1e-6);
}

TEST(Accuracy, TopKHandValues) {
  // Row 0: target 2 is the largest -> rank 0.  Row 1: target 0 has two larger -> rank 2.
  // Row 2: target 3 ties with index 1 (earlier, so it ranks first) -> rank 1.
  // Row 3: target 4 is the smallest -> rank 4.
  const Tensor x = tensor_of({0.1, 0.2, 0.9, 0.0, 0.3,  //
                              0.5, 0.7, 0.6, 0.1, 0.2,  //
                              0.0, 0.8, 0.1, 0.8, 0.2,  //
                              0.5, 0.4, 0.3, 0.2, 0.1},
                             {4, 5});
  const Tensor t = labels({2, 0, 3, 4});
  EXPECT_EQ(topk_correct(x, t, 1).item(), 1.0);
  EXPECT_EQ(topk_correct(x, t, 2).item(), 2.0);
  EXPECT_EQ(topk_correct(x, t, 3).item(), 3.0);
  EXPECT_EQ(topk_correct(x, t, 5).item(), 4.0);
  EXPECT_EQ(topk_correct(x, t, 1).dtype(), DType::i64);
  EXPECT_DOUBLE_EQ(accuracy_topk(x, t, 1), 0.25);
  EXPECT_DOUBLE_EQ(accuracy_topk(x, t, 5), 1.0);
  // Top-1 agrees with argmax (first of ties).
  const Tensor am = argmax(x, 1);
  EXPECT_DOUBLE_EQ(accuracy_topk(x, am, 1), 1.0);
}

TEST(Accuracy, NanLogitsNeverHit) {
  // Row 0: the target's logit is NaN. Row 1: another logit is NaN, ranking above the target
  // (torch.topk order), so top-1 misses and top-2 hits. Row 2: finite, target largest.
  const double nan = std::nan("");
  const Tensor x = tensor_of({nan, 0.1, 0.2, 0.9, nan, 0.5, 0.1, 0.2, 0.9}, {3, 3});
  const Tensor t = labels({0, 0, 2});
  EXPECT_EQ(topk_correct(x, t, 1).item(), 1.0);
  EXPECT_EQ(topk_correct(x, t, 2).item(), 2.0);
  EXPECT_EQ(topk_correct(x, t, 3).item(), 2.0);
}

TEST(Accuracy, RejectsBadK) {
  const Tensor x = zeros({2, 3});
  const Tensor t = zeros({2}, DType::i64);
  expect_error([&] { topk_correct(x, t, 0); }, "k = 0");
  expect_error([&] { topk_correct(x, t, 4); }, "k = 4");
}

// --- CPU/CUDA parity ---------------------------------------------------------------------------

TEST(CrossEntropyGpu, MatchesCpu) {
  LOWBIT_SKIP_WITHOUT_GPU();
  manual_seed(21);
  struct Case {
    int64_t n, c;
  };
  for (const Case cs : {Case{64, 10}, Case{33, 1000}, Case{5, 3001}, Case{1, 1}, Case{300, 7}}) {
    for (const DType dtype : {DType::f32, DType::f64, DType::bf16}) {
      for (const double eps : {0.0, 0.1}) {
        SCOPED_TRACE(::testing::Message()
                     << "N " << cs.n << " C " << cs.c << " " << dtype << " eps " << eps);
        const Tensor x = random_logits(cs.n, cs.c, dtype);
        const Tensor t = random_targets(cs.n, cs.c);
        const auto [lc, gc] = loss_and_grad(x, t, eps);
        const auto [lg, gg] = loss_and_grad(x.to(Device::cuda()), t.to(Device::cuda()), eps);
        EXPECT_TRUE(lg.is_cuda());
        EXPECT_TRUE(gg.is_cuda());
        // Same formulas; the row sums are added in a different order (block tree vs loop).
        const double tol = dtype == DType::f64 ? 1e-12 : (dtype == DType::f32 ? 1e-5 : 1.0 / 128);
        EXPECT_NEAR(lg.item(), lc.item(), tol * (1.0 + std::fabs(lc.item())));
        EXPECT_TENSOR_NEAR(gg, gc, tol, 1e-7);
      }
    }
  }
}

TEST(CrossEntropyGpu, BadTargetGivesNan) {
  LOWBIT_SKIP_WITHOUT_GPU();
  const Tensor x = zeros({3, 4}, TensorOptions(DType::f32, Device::cuda()));
  const Tensor t = labels({0, 4, 1}).to(Device::cuda());
  EXPECT_TRUE(std::isnan(cross_entropy(x, t).item()));
}

TEST(AccuracyGpu, MatchesCpu) {
  LOWBIT_SKIP_WITHOUT_GPU();
  manual_seed(22);
  // Small integers, so ties are common and the tie rule is exercised.
  const Tensor x = randint(-3, 4, {257, 100}).to(DType::f32);
  const Tensor t = random_targets(257, 100);
  for (int64_t k : {1, 5, 100}) {
    EXPECT_EQ(topk_correct(x.to(Device::cuda()), t.to(Device::cuda()), k).item(),
              topk_correct(x, t, k).item())
        << "k " << k;
  }
}

TEST(CrossEntropy, StubsHoldTheKernelsOfThisBuild) {
  EXPECT_TRUE(testing::has_kernels_of_this_build(detail::cross_entropy_forward_stub));
  EXPECT_TRUE(testing::has_kernels_of_this_build(detail::cross_entropy_backward_stub));
  EXPECT_TRUE(testing::has_kernels_of_this_build(detail::topk_hit_stub));
}

}  // namespace
}  // namespace lowbit::train
