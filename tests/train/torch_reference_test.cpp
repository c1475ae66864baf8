// PyTorch as an independent reference (ctest label `torch`): the same weights and inputs go
// through lowbit and through torch (tests/torch/reference.py, Debian's python3-torch in the
// venv scripts/setup.sh makes), and conv, batch norm, cross-entropy and SGD agree. Skips, saying
// why, where python cannot import torch and safetensors.
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/random.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "tests/common/test_util.h"
#include "train/loss.h"
#include "train/optimizer.h"
#include "train/safetensors.h"

namespace lowbit::train {
namespace {

namespace fs = std::filesystem;

std::pair<int, std::string> shell(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return {-1, "popen failed"};
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// NHWC <-> NCHW for activations.
Tensor to_nchw(const Tensor& t) { return t.permute({0, 3, 1, 2}).contiguous(); }

TEST(LayersTorch, ConvBatchNormLossAndSgdMatchPyTorch) {
  const auto [probe, why] = shell(std::string(LOWBIT_PYTHON) + " -c 'import torch, safetensors'");
  if (probe != 0) GTEST_SKIP() << LOWBIT_PYTHON << " cannot import torch and safetensors: " << why;
  manual_seed(77);
  std::map<std::string, Tensor> in;
  // Conv: x (2, 7, 7, 4) NHWC, weight (6, 3, 3, 2) KRSC, groups 2, stride 2, padding 1.
  Tensor cx = randn({2, 7, 7, 4}), cw = randn({6, 3, 3, 2}), cb = randn({6});
  layers::Conv2dOptions co(4, 6, 3);
  co.stride = {2, 2};
  co.padding = {1, 1};
  co.groups = 2;
  Tensor cg = randn({2, 4, 4, 6});
  in["conv.x"] = to_nchw(cx);
  in["conv.w"] = layers::krsc_to_oihw(cw).contiguous();
  in["conv.b"] = cb;
  in["conv.g"] = to_nchw(cg);
  // BN: x (4, 3, 3, 5).
  Tensor bx = randn({4, 3, 3, 5}) * 2.0 + 1.0, bw = randn({5}), bb = randn({5}), bg = randn({4, 3, 3, 5});
  in["bn.x"] = to_nchw(bx);
  in["bn.w"] = bw;
  in["bn.b"] = bb;
  in["bn.g"] = to_nchw(bg);
  // Cross-entropy: (8, 5) logits.
  Tensor logits = randn({8, 5}) * 3.0;
  Tensor target = randint(0, 5, {8});
  in["ce.logits"] = logits;
  in["ce.target"] = target;
  // SGD: two steps.
  Tensor p0 = randn({3, 4}), g1 = randn({3, 4}), g2 = randn({3, 4});
  in["sgd.p"] = p0;
  in["sgd.g1"] = g1;
  in["sgd.g2"] = g2;

  const fs::path dir = fs::temp_directory_path() / ("lowbit_torch_ref_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  save_safetensors((dir / "in.safetensors").string(), in);
  const auto [rc, log] = shell(std::string(LOWBIT_PYTHON) + " " + LOWBIT_SOURCE_DIR +
                               "/tests/torch/reference.py " + (dir / "in.safetensors").string() +
                               " " + (dir / "out.safetensors").string());
  ASSERT_EQ(rc, 0) << log;
  auto ref = load_safetensors((dir / "out.safetensors").string()).tensors;
  fs::remove_all(dir);

  // lowbit, f32 (torch ran in f64: tolerances are f32 rounding over the reductions).
  {
    Tensor x = cx.detach().requires_grad_(), w = cw.detach().requires_grad_(), b = cb.detach().requires_grad_();
    Tensor y = layers::conv2d(x, w, b, co);
    sum(y * cg).backward();
    EXPECT_TENSOR_NEAR(to_nchw(y), ref["conv.y"], 1e-5, 1e-5);
    EXPECT_TENSOR_NEAR(to_nchw(x.grad()), ref["conv.dx"], 1e-5, 1e-5);
    EXPECT_TENSOR_NEAR(layers::krsc_to_oihw(w.grad()), ref["conv.dw"], 1e-5, 1e-4);
    EXPECT_TENSOR_NEAR(b.grad(), ref["conv.db"], 1e-5, 1e-4);
  }
  {
    Tensor x = bx.detach().requires_grad_(), w = bw.detach().requires_grad_(), b = bb.detach().requires_grad_();
    Tensor rm = zeros({5}), rv = ones({5});
    Tensor y = layers::batch_norm(x, w, b, rm, rv, true, 0.1, 1e-5);
    sum(y * bg).backward();
    EXPECT_TENSOR_NEAR(to_nchw(y), ref["bn.y"], 1e-5, 1e-5);
    EXPECT_TENSOR_NEAR(to_nchw(x.grad()), ref["bn.dx"], 1e-4, 1e-5);
    EXPECT_TENSOR_NEAR(w.grad(), ref["bn.dw"], 1e-5, 1e-4);
    EXPECT_TENSOR_NEAR(b.grad(), ref["bn.db"], 1e-5, 1e-4);
    EXPECT_TENSOR_NEAR(rm, ref["bn.running_mean"], 1e-6, 1e-6);
    EXPECT_TENSOR_NEAR(rv, ref["bn.running_var"], 1e-6, 1e-6);
  }
  {
    Tensor l = logits.detach().requires_grad_();
    Tensor loss = cross_entropy(l, target, 0.1);
    loss.backward();
    EXPECT_NEAR(loss.item(), ref["ce.loss"].item(), 1e-5);
    EXPECT_TENSOR_NEAR(l.grad(), ref["ce.dlogits"], 1e-5, 1e-6);
  }
  {
    Tensor p = p0.clone().detach().requires_grad_();
    SGD opt({ParamGroup{{p}, 0.1, 1e-2, "all"}}, SgdOptions{0.9, 0.0, true});
    for (const Tensor& g : {g1, g2}) {
      p.set_grad(g.clone());
      opt.step();
    }
    EXPECT_TENSOR_NEAR(p, ref["sgd.p"], 1e-6, 1e-6);
  }
}

}  // namespace
}  // namespace lowbit::train
