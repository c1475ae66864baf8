// The suites every registered quantizer goes through, driven by the cases its test file declares
// (LOWBIT_QUANTIZER_TEST_CASES, tests/quant/quantizer_cases.h): every registered quantizer has
// cases and every case names a registered quantizer; on the CPU each case quantizes onto the
// quantizer's own code grid, back-propagates finite gradients into the input and its learned
// parameters, and survives a state-dict round trip; on a GPU (QuantizerGpu) the CUDA kernels
// match the CPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/random.h"
#include "quant/quantizer.h"
#include "tests/common/test_util.h"
#include "tests/quant/quant_test_util.h"
#include "tests/quant/quantizer_cases.h"

namespace lowbit::quant {
namespace {

using lowbit::testing::to_doubles;
using testing_util::channel_of;
using testing_util::quantizer_cases;
using testing_util::QuantizerCase;

// The case's input, the same on every run.
Tensor case_input(const QuantizerCase& c) {
  manual_seed(80);
  return randn(c.shape) * 1.5 + 0.2;
}

// Calibrates q on x and runs one forward, so lazily derived state (qparams) exists.
void calibrate(Quantizer& q, const Tensor& x) {
  q.set_calibrating(true);
  q.forward(x);
  q.set_calibrating(false);
  (void)q.forward(x);
  q.zero_grad();
}

TEST(QuantizerCases, EveryRegisteredQuantizerDeclaresCases) {
  for (const std::string& name : quantizer_names()) {
    EXPECT_TRUE(quantizer_cases().has(name) && !quantizer_cases().get(name).empty())
        << "quantizer '" << name << "' declares no test cases: add LOWBIT_QUANTIZER_TEST_CASES(\""
        << name << "\", ...) next to its tests (tests/quant/quantizer_cases.h)";
  }
  for (const std::string& name : quantizer_cases().names()) {
    EXPECT_TRUE(has_quantizer(name))
        << "test cases for the unregistered quantizer '" << name << "'";
  }
}

TEST(QuantizerCases, ForwardBackwardAndStateDictRoundTrip) {
  for (const std::string& name : quantizer_cases().names()) {
    if (!has_quantizer(name)) continue;  // reported above
    for (const QuantizerCase& c : quantizer_cases().get(name)) {
      SCOPED_TRACE(name + " " + shape_str(c.shape));
      const Tensor x0 = case_input(c);
      auto q = create_quantizer(name, c.options);
      EXPECT_THAT(q->extra_repr(), ::testing::StartsWith(name + ", role="));
      calibrate(*q, x0);
      Tensor x = x0.detach().requires_grad_();
      Tensor y = q->forward(x);
      ASSERT_EQ(y.shape(), x.shape());
      ASSERT_EQ(y.dtype(), x.dtype());
      // Quantized: at most 2^bits distinct values per quantization channel, all finite.
      const std::vector<double> yv = to_doubles(y);
      std::map<int64_t, std::set<double>> levels;
      for (size_t i = 0; i < yv.size(); ++i) {
        ASSERT_TRUE(std::isfinite(yv[i])) << i;
        const int64_t ch =
            q->spec().per_channel ? channel_of(c.shape, q->spec().axis, int64_t(i)) : 0;
        levels[ch].insert(yv[i]);
      }
      for (const auto& [ch, l] : levels) {
        EXPECT_LE(double(l.size()), std::ldexp(1.0, int(q->bits()))) << "channel " << ch;
      }
      // Gradients reach the input and every learned parameter, finite.
      manual_seed(81);
      sum(y * randn(c.shape)).backward();
      ASSERT_TRUE(x.grad().defined());
      for (double g : to_doubles(x.grad())) ASSERT_TRUE(std::isfinite(g));
      for (auto& [pname, p] : q->named_parameters()) {
        SCOPED_TRACE(pname);
        ASSERT_TRUE(p.grad().defined());
        for (double g : to_doubles(p.grad())) ASSERT_TRUE(std::isfinite(g));
      }
      // A fresh quantizer with the state dict gives the same output, without calibration.
      auto loaded = create_quantizer(name, c.options);
      loaded->load_state_dict(q->state_dict());
      loaded->eval();
      q->eval();
      autograd::NoGradGuard guard;
      EXPECT_TENSOR_NEAR(loaded->forward(x0), q->forward(x0), 0, 0);
    }
  }
}

// What `lowbit quantizers` prints (describe_quantizer) is what the quantizers do: every option
// has a help text, and giving an option its listed default (under its listed condition) builds
// the same quantizer as leaving it out.
TEST(QuantizerCases, DescribedOptionsHaveHelpAndTheirDefaultsAreTheDefaults) {
  for (const std::string& name : quantizer_names()) {
    const QuantizerInfo info = describe_quantizer(name);
    EXPECT_FALSE(info.summary.empty()) << name;
    EXPECT_FALSE(info.roles.empty()) << name;
    for (const QuantizerOptionInfo& o : info.options) {
      SCOPED_TRACE(name + "." + o.read.key);
      EXPECT_FALSE(o.help.empty()) << "no help: give it in the registration or LOWBIT_OPTION_HELP";
      if (o.read.key == "channels" || o.read.key == "role") continue;  // channels: unused default
      for (const std::string& role : info.roles) {
        const std::string& def = role == "weight" ? o.default_weight : o.default_activation;
        if (def.empty()) continue;  // not read for this role
        QuantizerOptions base{{"role", role}};
        if (!o.condition.empty()) {  // "observer: ema, kl": the first key and value
          const std::string c = o.condition.substr(0, o.condition.find(';'));
          const size_t colon = c.find(": ");
          base.set(c.substr(0, colon), c.substr(colon + 2, c.find(',') - colon - 2));
        }
        QuantizerOptions with = base;
        with.set(o.read.key, def);
        EXPECT_EQ(create_quantizer(name, with)->extra_repr(),
                  create_quantizer(name, base)->extra_repr())
            << role;
      }
    }
  }
}

TEST(QuantizerGpu, EveryQuantizerMatchesCpu) {
  LOWBIT_SKIP_WITHOUT_GPU();
  for (const std::string& name : quantizer_cases().names()) {
    for (const QuantizerCase& pc : quantizer_cases().get(name)) {
      SCOPED_TRACE(name + " " + shape_str(pc.shape));
      Tensor x = case_input(pc);
      manual_seed(81);
      Tensor up = randn(pc.shape);
      auto qc = create_quantizer(name, pc.options);
      auto qg = create_quantizer(name, pc.options);
      qg->to(Device::cuda());
      // Calibrate on the CPU and copy the state, so both start from the same parameters.
      calibrate(*qc, x);
      qg->load_state_dict(qc->state_dict());
      Tensor xc = x.detach().requires_grad_();
      Tensor xg = x.to(Device::cuda()).requires_grad_();
      Tensor yc = qc->forward(xc), yg = qg->forward(xg);
      if (pc.fwd_tol == 0) {
        EXPECT_TENSOR_NEAR(yg, yc, 0, 0);
      } else {
        EXPECT_TENSOR_NEAR(yg, yc, 0, pc.fwd_tol);
      }
      sum(yc * up).backward();
      sum(yg * up.to(Device::cuda())).backward();
      EXPECT_TENSOR_NEAR(xg.grad(), xc.grad(), pc.grad_tol, pc.grad_tol);
      auto pcs = qc->named_parameters(), pgs = qg->named_parameters();
      ASSERT_EQ(pcs.size(), pgs.size());
      for (size_t i = 0; i < pcs.size(); ++i) {
        SCOPED_TRACE(pcs[i].first);
        ASSERT_TRUE(pcs[i].second.grad().defined());
        EXPECT_TENSOR_NEAR(pgs[i].second.grad(), pcs[i].second.grad(), 1e-5, 1e-6);
      }
      // The state after a training step (observers, qparams) agrees too.
      for (const auto& [k, v] : qc->state_dict()) {
        EXPECT_TENSOR_NEAR(qg->state_dict().at(k), v, 1e-6, 1e-7) << k;
      }
    }
  }
}

}  // namespace
}  // namespace lowbit::quant
