// LR schedules against hand-computed values of PyTorch's closed forms at given steps.
#include "train/schedule.h"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>

#include "core/error.h"

namespace lowbit::train {
namespace {

TEST(Schedule, ConstantAndStep) {
  EXPECT_EQ(ConstantLr(0.3).lr_at(0), 0.3);
  EXPECT_EQ(ConstantLr(0.3).lr_at(1000), 0.3);
  const StepLr s(0.1, 3, 0.1);
  EXPECT_DOUBLE_EQ(s.lr_at(0), 0.1);
  EXPECT_DOUBLE_EQ(s.lr_at(2), 0.1);
  EXPECT_DOUBLE_EQ(s.lr_at(3), 0.01);
  EXPECT_DOUBLE_EQ(s.lr_at(5), 0.01);
  EXPECT_DOUBLE_EQ(s.lr_at(6), 0.001);
}

TEST(Schedule, MultiStep) {
  // PyTorch's MultiStepLR: the factor applies from the milestone itself on.
  const MultiStepLr s(1.0, {2, 5}, 0.5);
  EXPECT_EQ(s.lr_at(0), 1.0);
  EXPECT_EQ(s.lr_at(1), 1.0);
  EXPECT_EQ(s.lr_at(2), 0.5);
  EXPECT_EQ(s.lr_at(4), 0.5);
  EXPECT_EQ(s.lr_at(5), 0.25);
  EXPECT_EQ(s.lr_at(100), 0.25);
  EXPECT_EQ(MultiStepLr(0.1, {}).lr_at(7), 0.1);
}

TEST(Schedule, Cosine) {
  // eta_min + (base - eta_min) (1 + cos(pi t / T)) / 2 with base 1, eta_min 0.1, T 10.
  const CosineLr s(1.0, 10, 0.1);
  EXPECT_DOUBLE_EQ(s.lr_at(0), 1.0);
  EXPECT_NEAR(s.lr_at(2), 0.9140576474687263, 1e-15);  // 0.1 + 0.9 (1 + cos(0.2 pi)) / 2
  EXPECT_NEAR(s.lr_at(5), 0.55, 1e-15);                // cos(pi / 2) = 0
  EXPECT_NEAR(s.lr_at(7), 0.2854966364683872, 1e-15);
  EXPECT_DOUBLE_EQ(s.lr_at(10), 0.1);
  EXPECT_DOUBLE_EQ(s.lr_at(25), 0.1);  // held at eta_min
}

TEST(Schedule, OneCycleDefaults) {
  // max_lr 1, 100 steps: initial 1/25 = 0.04, final 0.04 / 1e4 = 4e-6; the warm-up phase
  // ends at step 0.3 * 100 - 1 = 29, the annealing phase at 99.
  const OneCycleLr s(1.0, 100);
  EXPECT_DOUBLE_EQ(s.initial_lr(), 0.04);
  EXPECT_DOUBLE_EQ(s.min_lr(), 4e-6);
  EXPECT_NEAR(s.lr_at(0), 0.04, 1e-15);
  EXPECT_NEAR(s.lr_at(10), 0.29516394846410077, 1e-14);  // 1 + (0.04 - 1)/2 (cos(pi 10/29) + 1)
  EXPECT_DOUBLE_EQ(s.lr_at(29), 1.0);
  EXPECT_NEAR(s.lr_at(30), 0.9994965352845243, 1e-14);
  EXPECT_NEAR(s.lr_at(64), 0.500002, 1e-14);  // halfway down: (1 + 4e-6) / 2
  EXPECT_NEAR(s.lr_at(99), 4e-6, 1e-18);
  EXPECT_NEAR(s.lr_at(100), 0.0005074647154757324, 1e-15);  // PyTorch allows total_steps itself
  EXPECT_THROW(s.lr_at(101), Error);
}

TEST(Schedule, LinearWarmupComposes) {
  auto base = std::make_shared<ConstantLr>(0.3);
  const LinearWarmup w(base, 5, 0.1);
  EXPECT_NEAR(w.lr_at(0), 0.03, 1e-16);
  EXPECT_NEAR(w.lr_at(2), 0.3 * (0.1 + 0.9 * 0.4), 1e-16);  // 0.138
  EXPECT_DOUBLE_EQ(w.lr_at(5), 0.3);
  EXPECT_DOUBLE_EQ(w.lr_at(50), 0.3);

  // Multiplicative: the inner schedule keeps its own clock.
  auto steps = std::make_shared<MultiStepLr>(1.0, std::vector<int64_t>{3}, 0.1);
  const LinearWarmup ws(steps, 4, 0.5);
  EXPECT_DOUBLE_EQ(ws.lr_at(0), 0.5);
  EXPECT_DOUBLE_EQ(ws.lr_at(2), 0.75);
  EXPECT_NEAR(ws.lr_at(3), 0.1 * 0.875, 1e-16);
  EXPECT_NEAR(ws.lr_at(4), 0.1, 1e-16);

  auto cosine = std::make_shared<CosineLr>(1.0, 10, 0.1);
  const LinearWarmup wc(cosine, 4, 0.0);
  EXPECT_EQ(wc.lr_at(0), 0.0);
  EXPECT_NEAR(wc.lr_at(2), 0.5 * 0.9140576474687263, 1e-15);
  EXPECT_NEAR(wc.lr_at(7), 0.2854966364683872, 1e-15);
  EXPECT_DOUBLE_EQ(LinearWarmup(cosine, 0).lr_at(0), 1.0);
}

TEST(Schedule, PureFunctionOfStep) {
  // Any order of queries gives the same answers (resume needs only the step).
  const OneCycleLr s(0.5, 40);
  const double a = s.lr_at(17);
  s.lr_at(3);
  s.lr_at(39);
  EXPECT_EQ(s.lr_at(17), a);
}

TEST(Schedule, RejectsBadArguments) {
  EXPECT_THROW(StepLr(0.1, 0), InputError);
  EXPECT_THROW(MultiStepLr(0.1, {5, 2}), InputError);
  EXPECT_THROW(CosineLr(0.1, 0), InputError);
  EXPECT_THROW(ConstantLr(-1.0), InputError);
  EXPECT_THROW(OneCycleLr(1.0, 100, 1.5), InputError);
  EXPECT_THROW(OneCycleLr(1.0, 3), InputError);  // 0.3 * 3 - 1 < 0: empty warm-up phase
  EXPECT_THROW(LinearWarmup(nullptr, 3), InputError);
  EXPECT_THROW(LinearWarmup(std::make_shared<ConstantLr>(1.0), 3, 2.0), InputError);
  EXPECT_THROW(ConstantLr(0.1).lr_at(-1), Error);
  try {
    StepLr(0.1, -4);
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("step_size -4"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lowbit::train
