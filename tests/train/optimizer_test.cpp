// SGD and AdamW against hand-computed updates of PyTorch's formulas, parameter groups, skipped
// parameters, state_dict round trips (also through a safetensors file), clip_grad_norm, and
// CPU/CUDA parity of the fused multi-tensor launch.
#include "train/optimizer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/random.h"
#include "tests/common/test_util.h"
#include "train/safetensors.h"

namespace lowbit::train {
namespace {

using testing::tensor_of;
using testing::to_doubles;

Tensor leaf(const std::vector<double>& v, const Shape& shape, DType dtype = DType::f64) {
  Tensor t = tensor_of(v, shape, dtype);
  t.requires_grad_(true);
  return t;
}

void set_grad(const Tensor& p, const std::vector<double>& g) {
  p.set_grad(tensor_of(g, p.shape(), p.dtype()).to(p.device()));
}

// One error_of for every suite (tests/common/test_util.h).
using ::lowbit::testing::error_of;

// --- SGD ----------------------------------------------------------------------------------------

TEST(Sgd, PlainAndCoupledWeightDecayByHand) {
  // p -= lr * (g + wd * p): p = 1, g = 0.5, lr = 0.1, wd = 0.1
  //   step 1: 1 - 0.1 * (0.5 + 0.1)      = 0.94
  //   step 2: 0.94 - 0.1 * (0.5 + 0.094) = 0.8806
  Tensor p = leaf({1.0}, {1});
  SGD opt({ParamGroup{{p}, 0.1, 0.1}});
  set_grad(p, {0.5});
  opt.step();
  EXPECT_NEAR(p.item(), 0.94, 1e-15);
  opt.step();
  EXPECT_NEAR(p.item(), 0.8806, 1e-15);
}

TEST(Sgd, MomentumBufferByHand) {
  // momentum 0.9, lr 0.1, constant g = 1, p = 1:
  //   buf 1, 1.9, 2.71;  p 0.9, 0.71, 0.439
  Tensor p = leaf({1.0}, {1});
  SgdOptions o;
  o.momentum = 0.9;
  SGD opt({ParamGroup{{p}, 0.1, 0.0}}, o);
  const double want_p[] = {0.9, 0.71, 0.439};
  const double want_buf[] = {1.0, 1.9, 2.71};
  for (int s = 0; s < 3; ++s) {
    set_grad(p, {1.0});
    opt.step();
    EXPECT_NEAR(p.item(), want_p[s], 1e-14) << "step " << s + 1;
    EXPECT_NEAR(opt.state_dict().at("state.0.momentum_buffer").item(), want_buf[s], 1e-14);
  }
}

TEST(Sgd, NesterovByHand) {
  // g' = g + momentum * buf: buf 1, 1.9, 2.71; g' 1.9, 2.71, 3.439; p 0.81, 0.539, 0.1951
  Tensor p = leaf({1.0}, {1});
  SgdOptions o;
  o.momentum = 0.9;
  o.nesterov = true;
  SGD opt({ParamGroup{{p}, 0.1, 0.0}}, o);
  const double want[] = {0.81, 0.539, 0.1951};
  for (int s = 0; s < 3; ++s) {
    set_grad(p, {1.0});
    opt.step();
    EXPECT_NEAR(p.item(), want[s], 1e-14) << "step " << s + 1;
  }
}

// PyTorch's SGD in double for a sequence of gradients of one tensor.
std::vector<double> sgd_reference(std::vector<double> p, const std::vector<std::vector<double>>& gs,
                                  double lr, double wd, double momentum, double dampening,
                                  bool nesterov) {
  std::vector<double> buf(p.size(), 0.0);
  for (size_t s = 0; s < gs.size(); ++s) {
    for (size_t i = 0; i < p.size(); ++i) {
      double g = gs[s][i] + wd * p[i];
      if (momentum != 0.0) {
        buf[i] = s == 0 ? g : momentum * buf[i] + (1.0 - dampening) * g;
        g = nesterov ? g + momentum * buf[i] : buf[i];
      }
      p[i] -= lr * g;
    }
  }
  return p;
}

TEST(Sgd, MatchesReferenceOverSteps) {
  manual_seed(31);
  const std::vector<double> p0 = to_doubles(randn({4, 3}, DType::f64));
  std::vector<std::vector<double>> gs;
  for (int s = 0; s < 5; ++s) gs.push_back(to_doubles(randn({4, 3}, DType::f64)));
  struct Case {
    double momentum, dampening, wd;
    bool nesterov;
  };
  for (const Case c : {Case{0.0, 0.0, 0.0, false}, Case{0.9, 0.0, 5e-4, false},
                       Case{0.9, 0.1, 1e-2, false}, Case{0.8, 0.0, 1e-2, true}}) {
    SCOPED_TRACE(::testing::Message() << "momentum " << c.momentum << " dampening " << c.dampening
                                      << " wd " << c.wd << " nesterov " << c.nesterov);
    for (const DType dtype : {DType::f64, DType::f32}) {
      Tensor p = leaf(p0, {4, 3}, dtype);
      SGD opt({ParamGroup{{p}, 0.05, c.wd}}, SgdOptions{c.momentum, c.dampening, c.nesterov});
      for (const auto& g : gs) {
        set_grad(p, g);
        opt.step();
      }
      const auto want = sgd_reference(p0, gs, 0.05, c.wd, c.momentum, c.dampening, c.nesterov);
      const double tol = dtype == DType::f64 ? 1e-14 : 1e-6;  // f32: float math, 5 steps
      EXPECT_TENSOR_NEAR(p, tensor_of(want, {4, 3}, DType::f64), tol, tol);
    }
  }
}

TEST(Sgd, RejectsBadOptions) {
  Tensor p = leaf({1.0}, {1});
  EXPECT_NE(error_of([&] {
              SGD({ParamGroup{{p}, 0.1}}, SgdOptions{0.0, 0.0, true});
            }).find("Nesterov"),
            std::string::npos);
  EXPECT_NE(error_of([&] { SGD({ParamGroup{{p}, -0.1}}); }).find("lr -0.1"), std::string::npos);
  EXPECT_NE(error_of([&] {
              SGD({ParamGroup{{p}, 0.1}, ParamGroup{{p}, 0.1}});
            }).find("more than once"),
            std::string::npos);
}

// --- AdamW --------------------------------------------------------------------------------------

TEST(AdamW, DecoupledDecayAndBiasCorrectionByHand) {
  // Constant g = 1: m_t = 1 - b1^t and v_t = 1 - b2^t, so mhat = vhat = 1 at every step and
  //   p_t = p_{t-1} (1 - lr wd) - lr / (1 + eps).
  // p = 1, lr = 0.1, wd = 0.1, eps = 1e-8: lr / (1 + eps) = 0.099999999, so
  //   0.99 - 0.099999999 = 0.890000001, 0.88110000099 - 0.099999999 = 0.78110000199, ...
  Tensor p = leaf({1.0}, {1});
  AdamW opt({ParamGroup{{p}, 0.1, 0.1}});
  const double want[] = {0.890000001, 0.78110000199, 0.6732890029701, 0.566556113940399};
  for (int s = 0; s < 4; ++s) {
    set_grad(p, {1.0});
    opt.step();
    EXPECT_NEAR(p.item(), want[s], 1e-14) << "step " << s + 1;
  }
  const auto sd = opt.state_dict();
  EXPECT_EQ(sd.at("state.0.step").item(), 4.0);
  EXPECT_NEAR(sd.at("state.0.exp_avg").item(), 1.0 - std::pow(0.9, 4), 1e-15);
  EXPECT_NEAR(sd.at("state.0.exp_avg_sq").item(), 1.0 - std::pow(0.999, 4), 1e-15);
}

// PyTorch's AdamW in double.
std::vector<double> adamw_reference(std::vector<double> p,
                                    const std::vector<std::vector<double>>& gs, double lr,
                                    double wd, double b1, double b2, double eps) {
  std::vector<double> m(p.size(), 0.0), v(p.size(), 0.0);
  for (size_t s = 0; s < gs.size(); ++s) {
    const double t = double(s + 1);
    for (size_t i = 0; i < p.size(); ++i) {
      const double g = gs[s][i];
      p[i] *= 1.0 - lr * wd;
      m[i] = b1 * m[i] + (1.0 - b1) * g;
      v[i] = b2 * v[i] + (1.0 - b2) * g * g;
      const double mhat = m[i] / (1.0 - std::pow(b1, t));
      const double vhat = v[i] / (1.0 - std::pow(b2, t));
      p[i] -= lr * mhat / (std::sqrt(vhat) + eps);
    }
  }
  return p;
}

TEST(AdamW, MatchesReferenceOverSteps) {
  manual_seed(32);
  const std::vector<double> p0 = to_doubles(randn({5, 2}, DType::f64));
  std::vector<std::vector<double>> gs;
  for (int s = 0; s < 6; ++s) gs.push_back(to_doubles(mul(randn({5, 2}, DType::f64), 0.1)));
  for (const DType dtype : {DType::f64, DType::f32}) {
    SCOPED_TRACE(::testing::Message() << dtype);
    Tensor p = leaf(p0, {5, 2}, dtype);
    AdamW opt({ParamGroup{{p}, 1e-2, 0.05}}, AdamWOptions{0.8, 0.99, 1e-6});
    for (const auto& g : gs) {
      set_grad(p, g);
      opt.step();
    }
    const auto want = adamw_reference(p0, gs, 1e-2, 0.05, 0.8, 0.99, 1e-6);
    const double tol = dtype == DType::f64 ? 1e-13 : 2e-6;  // f32: float math
    EXPECT_TENSOR_NEAR(p, tensor_of(want, {5, 2}, DType::f64), tol, tol);
  }
}

TEST(AdamW, GroupWithoutWeightDecayIsNotDecayed) {
  // Zero gradients: m = v = 0, so the Adam term is 0 / (0 + eps) = 0 and only decay acts.
  Tensor w = leaf({1.0, -2.0}, {2});
  Tensor b = leaf({3.0}, {1});
  AdamW opt({ParamGroup{{w}, 0.1, 0.5, "weights"}, ParamGroup{{b}, 0.1, 0.0, "bn"}});
  for (int s = 0; s < 3; ++s) {
    set_grad(w, {0.0, 0.0});
    set_grad(b, {0.0});
    opt.step();
  }
  const double f = std::pow(1.0 - 0.1 * 0.5, 3);
  EXPECT_TENSOR_NEAR(w, tensor_of({f, -2.0 * f}, {2}, DType::f64), 1e-15, 0);
  EXPECT_EQ(b.item(), 3.0);
}

TEST(Sgd, GroupWithoutWeightDecayIsNotDecayed) {
  Tensor w = leaf({1.0}, {1});
  Tensor b = leaf({3.0}, {1});
  SGD opt({ParamGroup{{w}, 0.1, 0.5}, ParamGroup{{b}, 0.1, 0.0}}, SgdOptions{0.9});
  for (int s = 0; s < 2; ++s) {
    set_grad(w, {0.0});
    set_grad(b, {0.0});
    opt.step();
  }
  // w: g = 0.5, buf = 0.5, p = 0.95; then g = 0.475, buf = 0.925, p = 0.8575.
  EXPECT_NEAR(w.item(), 0.8575, 1e-15);
  EXPECT_EQ(b.item(), 3.0);
}

TEST(Optimizer, SkipsParametersWithoutGrad) {
  Tensor a = leaf({1.0}, {1});
  Tensor b = leaf({2.0}, {1});
  AdamW opt({ParamGroup{{a, b}, 0.1, 0.1}});
  set_grad(a, {1.0});
  opt.step();
  opt.step();
  EXPECT_EQ(b.item(), 2.0);  // no grad: no decay either
  const auto sd = opt.state_dict();
  EXPECT_EQ(sd.count("state.1.exp_avg"), 0u);
  EXPECT_EQ(sd.at("state.0.step").item(), 2.0);
  set_grad(b, {1.0});
  opt.step();
  EXPECT_EQ(opt.state_dict().at("state.1.step").item(), 1.0);  // b's own first step
  EXPECT_EQ(opt.state_dict().at("state.0.step").item(), 3.0);
}

TEST(Optimizer, ZeroGradDropsGradients) {
  Tensor a = leaf({1.0, 2.0}, {2});
  SGD opt({ParamGroup{{a}, 0.1}});
  sum(mul(a, a)).backward();
  ASSERT_TRUE(a.grad().defined());
  opt.zero_grad();
  EXPECT_FALSE(a.grad().defined());
}

TEST(Optimizer, StepAfterBackwardLeavesNoGraph) {
  Tensor a = leaf({1.0, 2.0}, {2});
  SGD opt({ParamGroup{{a}, 0.5}});
  sum(mul(a, a)).backward();  // grad = 2a
  opt.step();
  EXPECT_TRUE(a.is_leaf());
  EXPECT_TENSOR_NEAR(a, tensor_of({0.0, 0.0}, {2}, DType::f64), 0, 0);
}

TEST(Optimizer, RejectsMismatchedGradient) {
  Tensor a = leaf({1.0, 2.0}, {2});
  SGD opt({ParamGroup{{a}, 0.1}});
  a.set_grad(zeros({2}, DType::f32));
  EXPECT_NE(error_of([&] { opt.step(); }).find("gradient of parameter 0"), std::string::npos);
}

// --- state_dict ---------------------------------------------------------------------------------

// Steps `opt` on `params` with gradient set number `first`...`first + n - 1` (fixed seeds).
void run_steps(Optimizer& opt, const std::vector<Tensor>& params, int first, int n) {
  for (int s = first; s < first + n; ++s) {
    manual_seed(uint64_t(1000 + s));
    for (const Tensor& p : params) p.set_grad(randn(p.shape(), TensorOptions(p.dtype())));
    opt.step();
  }
}

std::vector<Tensor> make_params(DType dtype) {
  manual_seed(77);
  std::vector<Tensor> ps = {randn({3, 4}, dtype), randn({4}, dtype), randn({2, 2, 2}, dtype)};
  for (auto& p : ps) p.requires_grad_(true);
  return ps;
}

std::vector<Tensor> clone_params(const std::vector<Tensor>& ps) {
  std::vector<Tensor> out;
  for (const auto& p : ps) {
    Tensor c = p.detach().clone();
    c.requires_grad_(true);
    out.push_back(c);
  }
  return out;
}

template <typename Opt, typename Options>
void check_round_trip(Options options, bool through_file) {
  for (const DType dtype : {DType::f32, DType::f64}) {
    SCOPED_TRACE(::testing::Message() << dtype << (through_file ? " via file" : ""));
    std::vector<Tensor> pa = make_params(dtype);
    Opt a({ParamGroup{{pa[0], pa[1]}, 0.05, 0.01}, ParamGroup{{pa[2]}, 0.02, 0.0}}, options);
    run_steps(a, pa, 0, 3);

    std::vector<Tensor> pb = clone_params(pa);
    Opt b({ParamGroup{{pb[0], pb[1]}, 0.7, 0.3}, ParamGroup{{pb[2]}, 0.7, 0.3}}, options);
    std::map<std::string, Tensor> sd = a.state_dict();
    if (through_file) {
      const std::string path = ::testing::TempDir() + "lowbit_optimizer_state_" +
                               std::to_string(::getpid()) + ".safetensors";
      save_safetensors(path, sd);
      sd = load_safetensors(path).tensors;
      std::remove(path.c_str());
    }
    b.load_state_dict(sd);
    EXPECT_EQ(b.param_groups()[0].lr, 0.05);
    EXPECT_EQ(b.param_groups()[1].weight_decay, 0.0);

    run_steps(a, pa, 3, 3);
    run_steps(b, pb, 3, 3);
    for (size_t i = 0; i < pa.size(); ++i) EXPECT_TENSOR_NEAR(pb[i], pa[i], 0, 0) << "param " << i;
  }
}

TEST(Optimizer, SgdStateDictRoundTripContinuesIdentically) {
  check_round_trip<SGD>(SgdOptions{0.9, 0.0, true}, false);
  check_round_trip<SGD>(SgdOptions{0.9, 0.0, false}, true);
}

TEST(Optimizer, AdamWStateDictRoundTripContinuesIdentically) {
  check_round_trip<AdamW>(AdamWOptions{}, false);
  check_round_trip<AdamW>(AdamWOptions{}, true);
}

TEST(Optimizer, StateDictLoadDoesNotAlias) {
  std::vector<Tensor> pa = make_params(DType::f32);
  SGD a({ParamGroup{pa, 0.1}}, SgdOptions{0.9});
  run_steps(a, pa, 0, 1);
  std::vector<Tensor> pb = clone_params(pa);
  SGD b({ParamGroup{pb, 0.1}}, SgdOptions{0.9});
  b.load_state_dict(a.state_dict());
  const Tensor before = a.state_dict().at("state.0.momentum_buffer").clone();
  run_steps(b, pb, 1, 1);
  EXPECT_TENSOR_NEAR(a.state_dict().at("state.0.momentum_buffer"), before, 0, 0);
}

TEST(Optimizer, LoadStateDictValidatesAndChangesNothingOnError) {
  std::vector<Tensor> pa = make_params(DType::f32);
  AdamW a({ParamGroup{pa, 0.1}});
  run_steps(a, pa, 0, 2);
  const auto good = a.state_dict();

  std::vector<Tensor> pb = clone_params(pa);
  AdamW b({ParamGroup{pb, 0.3}});
  auto expect_refused = [&](std::map<std::string, Tensor> sd, const std::string& needle) {
    try {
      b.load_state_dict(sd);
      ADD_FAILURE() << "accepted a state dict that should fail with '" << needle << "'";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_EQ(b.param_groups()[0].lr, 0.3);  // unchanged
    EXPECT_EQ(b.state_dict().count("state.0.exp_avg"), 0u);
  };
  auto sd = good;
  sd["state.0.exp_avg"] = zeros({5});
  expect_refused(sd, "'state.0.exp_avg' has shape [5]");
  sd = good;
  sd["state.9.exp_avg"] = zeros({4});
  expect_refused(sd, "names parameter 9 but the optimizer has 3 parameters");
  sd = good;
  sd["state.0.momentum_buffer"] = zeros({3, 4});
  expect_refused(sd, "unknown key 'state.0.momentum_buffer'");
  sd = good;
  sd.erase("state.1.exp_avg_sq");
  expect_refused(sd, "parameter 1 has an incomplete state");
  sd = good;
  sd["param_groups.0.num_params"] = scalar_tensor(2, DType::i64);
  expect_refused(sd, "has 3 parameters");
  sd = good;
  sd.erase("param_groups.0.num_params");
  expect_refused(sd, "no 'param_groups.0.num_params' entry");
  sd = good;
  sd["state.0.step"] = scalar_tensor(1.5);
  expect_refused(sd, "is not a step count");

  SGD s({ParamGroup{pb, 0.3}});
  EXPECT_THROW(s.load_state_dict(good), InputError);  // AdamW state into SGD
}

// --- clip_grad_norm -----------------------------------------------------------------------------

TEST(ClipGradNorm, ScalesAboveMaxNormByHand) {
  // Grads [3, 0] and [[0, 4]]: total norm 5; max_norm 1 -> coef 1 / (5 + 1e-6).
  Tensor a = leaf({1.0, 1.0}, {2});
  Tensor b = leaf({1.0, 1.0}, {1, 2}, DType::f32);
  Tensor c = leaf({1.0}, {1});  // no grad: skipped
  set_grad(a, {3.0, 0.0});
  set_grad(b, {0.0, 4.0});
  const Tensor total = clip_grad_norm({a, b, c}, 1.0);
  EXPECT_EQ(total.dtype(), DType::f64);
  EXPECT_EQ(total.item(), 5.0);
  const double coef = 1.0 / (5.0 + 1e-6);
  EXPECT_TENSOR_NEAR(a.grad(), tensor_of({3.0 * coef, 0.0}, {2}, DType::f64), 1e-15, 0);
  EXPECT_TENSOR_NEAR(b.grad(), tensor_of({0.0, 4.0 * coef}, {1, 2}, DType::f64), 1e-7, 0);
  EXPECT_FALSE(c.grad().defined());
}

TEST(ClipGradNorm, LeavesSmallGradientsAlone) {
  Tensor a = leaf({1.0, 1.0}, {2});
  set_grad(a, {0.3, 0.4});
  const Tensor g_before = a.grad();
  EXPECT_NEAR(clip_grad_norm({a}, 1.0).item(), 0.5, 1e-16);
  EXPECT_TENSOR_NEAR(a.grad(), tensor_of({0.3, 0.4}, {2}, DType::f64), 0, 0);
  EXPECT_TRUE(a.grad().same(g_before));
  EXPECT_EQ(clip_grad_norm({leaf({1.0}, {1})}, 1.0).item(), 0.0);  // no grads at all
}

TEST(ClipGradNorm, AccumulatesInDouble) {
  // 2^20 f32 gradients of 1e-3: a float running sum of squares would be off by ~1e-4 relative;
  // a double sum of 2^20 terms is within 2^20 * 2^-53 ~ 1.2e-10 (half that after the sqrt).
  Tensor a = zeros({1 << 20});
  a.requires_grad_(true);
  a.set_grad(full({1 << 20}, 1e-3));
  const double want = std::sqrt(double(1 << 20) * double(1e-3f) * double(1e-3f));
  EXPECT_NEAR(clip_grad_norm({a}, 100.0).item(), want, 1e-10 * want);
}

// --- CPU/CUDA parity ----------------------------------------------------------------------------

// Parameters of awkward sizes: several chunks (16384 elements each), partial chunks, one element.
std::vector<Tensor> parity_params(DType dtype, Device device) {
  manual_seed(91);
  std::vector<Tensor> ps;
  for (const Shape& s : {Shape{40000}, Shape{3, 5}, Shape{1}, Shape{16384}, Shape{7, 3, 3, 8}}) {
    Tensor p = randn(s, TensorOptions(dtype)).to(device);
    p.requires_grad_(true);
    ps.push_back(p);
  }
  return ps;
}

void run_parity_steps(Optimizer& opt, const std::vector<Tensor>& params, int n) {
  for (int s = 0; s < n; ++s) {
    manual_seed(uint64_t(500 + s));
    for (const Tensor& p : params) {
      p.set_grad(randn(p.shape(), TensorOptions(p.dtype())).to(p.device()));
    }
    opt.step();
  }
}

template <typename Opt, typename Options>
void check_optimizer_parity(Options options) {
  for (const DType dtype : {DType::f32, DType::f64, DType::bf16}) {
    SCOPED_TRACE(::testing::Message() << dtype);
    std::vector<Tensor> pc = parity_params(dtype, Device::cpu());
    std::vector<Tensor> pg = parity_params(dtype, Device::cuda());
    Opt oc({ParamGroup{{pc[0], pc[1], pc[2]}, 0.01, 0.1}, ParamGroup{{pc[3], pc[4]}, 0.02, 0.0}},
           options);
    Opt og({ParamGroup{{pg[0], pg[1], pg[2]}, 0.01, 0.1}, ParamGroup{{pg[3], pg[4]}, 0.02, 0.0}},
           options);
    run_parity_steps(oc, pc, 4);
    run_parity_steps(og, pg, 4);
    // The same functor in the same precision on both, no FMA contraction on either; the math
    // library (pow of the bias corrections) may still differ in the last bit.
    const double tol = dtype == DType::f64 ? 1e-13 : (dtype == DType::f32 ? 1e-6 : 1.0 / 128);
    for (size_t i = 0; i < pc.size(); ++i) {
      EXPECT_TRUE(pg[i].is_cuda());
      EXPECT_TENSOR_NEAR(pg[i], pc[i], tol, tol) << "param " << i;
    }
    const auto sc = oc.state_dict(), sg = og.state_dict();
    ASSERT_EQ(sc.size(), sg.size());
    for (const auto& [k, v] : sc) EXPECT_TENSOR_NEAR(sg.at(k), v, tol, tol) << k;
  }
}

TEST(OptimizerGpu, SgdMatchesCpu) {
  LOWBIT_SKIP_WITHOUT_GPU();
  check_optimizer_parity<SGD>(SgdOptions{0.9, 0.0, true});
  check_optimizer_parity<SGD>(SgdOptions{0.0, 0.0, false});
}

TEST(OptimizerGpu, AdamWMatchesCpu) {
  LOWBIT_SKIP_WITHOUT_GPU();
  check_optimizer_parity<AdamW>(AdamWOptions{});
}

TEST(OptimizerGpu, ClipGradNormMatchesCpu) {
  LOWBIT_SKIP_WITHOUT_GPU();
  for (double max_norm : {1.0, 1e6}) {
    std::vector<Tensor> pc = parity_params(DType::f32, Device::cpu());
    std::vector<Tensor> pg = parity_params(DType::f32, Device::cuda());
    manual_seed(3);
    for (size_t i = 0; i < pc.size(); ++i) {
      Tensor g = randn(pc[i].shape());
      pc[i].set_grad(g);
      pg[i].set_grad(g.to(Device::cuda()));
    }
    const double nc = clip_grad_norm(pc, max_norm).item();
    const Tensor ng = clip_grad_norm(pg, max_norm);
    EXPECT_TRUE(ng.is_cuda());
    EXPECT_NEAR(ng.item(), nc, 1e-12 * nc);
    for (size_t i = 0; i < pc.size(); ++i) {
      EXPECT_TENSOR_NEAR(pg[i].grad(), pc[i].grad(), 1e-6, 0) << "param " << i;
    }
  }
}

TEST(Optimizer, UpdateStubsHoldTheKernelsOfThisBuild) {
  EXPECT_TRUE(
      testing::has_kernels_of_this_build(detail::multi_tensor_update_stub<float, SgdUpdate>()));
  EXPECT_TRUE(
      testing::has_kernels_of_this_build(detail::multi_tensor_update_stub<f16, AdamWUpdate>()));
  EXPECT_TRUE(
      testing::has_kernels_of_this_build(detail::multi_tensor_update_stub<double, AdamWUpdate>()));
  EXPECT_TRUE(
      testing::has_kernels_of_this_build(detail::multi_tensor_update_stub<bf16, SgdUpdate>()));
}

}  // namespace
}  // namespace lowbit::train
