// ZeroQ's distillation loss, sensitivity and Pareto-frontier bit allocation (quant/zeroq.h).
#include "quant/zeroq.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <sstream>

#include "core/autograd.h"
#include "core/error.h"
#include "core/ops.h"
#include "layers/basic.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "quant/quantizer.h"

namespace lowbit::quant {

namespace {

bool tracks_stats(const layers::BatchNorm2d& bn) { return bn.options().track_running_stats; }

// Collects the input of every BatchNorm2d called in a forward pass (with its autograd history).
class BnInputs : public layers::ForwardRecorder {
 public:
  void on_forward(layers::Module& m, const Tensor& input, const Tensor&) override {
    auto* bn = dynamic_cast<layers::BatchNorm2d*>(&m);
    if (bn && tracks_stats(*bn)) calls.emplace_back(bn, input);
  }
  std::vector<std::pair<layers::BatchNorm2d*, Tensor>> calls;
};

// ( ||mu - m||^2 + ||sigma - d||^2 ) / N for per-sample statistics (m, d) of shape (N, C) and
// targets (C).
Tensor stats_distance(const Tensor& m, const Tensor& d, const Tensor& mu, const Tensor& sigma) {
  const double n = double(m.size(0));
  return (sum(square(m - mu)) + sum(square(d - sigma))) * (1.0 / n);
}

}  // namespace

int64_t count_batchnorm(layers::Module& model) {
  int64_t n = 0;
  for (auto& [name, m] : model.named_modules()) {
    auto* bn = dynamic_cast<layers::BatchNorm2d*>(m.get());
    n += bn && tracks_stats(*bn);
  }
  return n;
}

void require_batchnorm(layers::Module& model, const std::string& what) {
  LOWBIT_CHECK_INPUT(count_batchnorm(model) > 0, what,
                     " distils data from the running statistics of BatchNorm2d layers, and this "
                     "model has none (calibrate on train or noise instead)");
}

std::pair<Tensor, Tensor> per_sample_stats(const Tensor& x) {
  LOWBIT_CHECK(x.dim() == 4, "per_sample_stats: wants an NHWC tensor, got ", x.dim(), " dims");
  if (x.size(1) * x.size(2) < 2) {
    // A 1x1 map (MobileNetV2's last layers on 28x28 inputs) has no per-sample variance: the
    // statistics of the batch instead, one (1, C) row, weighted as one sample's.
    LOWBIT_CHECK_INPUT(x.size(0) >= 2,
                       "ZeroQ: a BatchNorm input of 1x1 pixels needs a batch of at "
                       "least 2 (ptq.zeroq.batch_size)");
    const Tensor b = x.reshape({1, x.size(0), 1, x.size(3)});
    return {mean(b, {1, 2}), sqrt(var(b, {1, 2}, true) + 1e-6)};
  }
  Tensor m = mean(x, {1, 2});
  Tensor d = sqrt(var(x, {1, 2}, true) + 1e-6);
  return {m, d};
}

Tensor zeroq_bn_loss(layers::Module& model, const Tensor& x, Tensor* logits) {
  BnInputs rec;
  Tensor out;
  {
    layers::RecordForward guard(&rec);
    out = model.forward(x);
  }
  if (logits) *logits = out;
  // The input term: target mean 0 and standard deviation 1 per channel.
  auto [m0, d0] = per_sample_stats(x);
  const int64_t c0 = x.size(3);
  const TensorOptions o(x.dtype(), x.device());
  Tensor loss = stats_distance(m0, d0, zeros({c0}, o), ones({c0}, o));
  for (auto& [bn, in] : rec.calls) {
    auto [m, d] = per_sample_stats(in);
    Tensor mu = bn->running_mean().detach().to(in.device(), in.dtype());
    Tensor sigma = sqrt(bn->running_var().detach().to(in.device(), in.dtype()) + 1e-6);
    loss = loss + stats_distance(m, d, mu, sigma);
  }
  return loss;
}

double mean_kl_divergence(const Tensor& logits_p, const Tensor& logits_q) {
  LOWBIT_CHECK(logits_p.dim() == 2 && logits_p.shape() == logits_q.shape(),
               "mean_kl_divergence: wants two (N, classes) logits of one shape");
  // On the host in double: the sums of tiny differences stay >= 0 (f32 gives -1e-9 for a
  // quantized layer that barely changes the output).
  const std::vector<float> p = logits_p.to(Device::cpu(), DType::f32).to_vector<float>(),
                           q = logits_q.to(Device::cpu(), DType::f32).to_vector<float>();
  const int64_t n = logits_p.size(0), k = logits_p.size(1);
  auto log_softmax_row = [k](const float* x, std::vector<double>& out) {
    double mx = -std::numeric_limits<double>::infinity(), s = 0.0;
    for (int64_t j = 0; j < k; ++j) mx = std::max(mx, double(x[j]));
    for (int64_t j = 0; j < k; ++j) s += std::exp(double(x[j]) - mx);
    out.resize(size_t(k));
    for (int64_t j = 0; j < k; ++j) out[size_t(j)] = double(x[j]) - mx - std::log(s);
  };
  double total = 0.0;
  std::vector<double> lp, lq;
  for (int64_t i = 0; i < n; ++i) {
    log_softmax_row(p.data() + i * k, lp);
    log_softmax_row(q.data() + i * k, lq);
    double kl = 0.0;
    for (int64_t j = 0; j < k; ++j) kl += std::exp(lp[size_t(j)]) * (lp[size_t(j)] - lq[size_t(j)]);
    total += std::max(kl, 0.0);  // >= 0 in exact arithmetic
  }
  return total / double(n);
}

std::vector<WeightLayer> weight_layers(layers::Module& model) {
  std::vector<WeightLayer> out;
  for (auto& [name, m] : model.named_modules()) {
    if (auto* c = dynamic_cast<layers::Conv2d*>(m.get())) {
      out.push_back({name, c->weight().numel()});
    } else if (auto* l = dynamic_cast<layers::Linear*>(m.get())) {
      out.push_back({name, l->weight().numel()});
    }
  }
  return out;
}

std::string Sensitivity::table() const {
  std::ostringstream os;
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%-28s %10s", "layer", "weights");
  os << buf;
  for (int64_t b : bits) {
    std::snprintf(buf, sizeof(buf), " %12s", ("W" + std::to_string(b)).c_str());
    os << buf;
  }
  os << "\n";
  for (size_t i = 0; i < layers.size(); ++i) {
    std::snprintf(buf, sizeof(buf), "%-28s %10lld", layers[i].name.c_str(),
                  static_cast<long long>(layers[i].weights));
    os << buf;
    for (double v : omega[i]) {
      std::snprintf(buf, sizeof(buf), " %12.4e", v);
      os << buf;
    }
    os << "\n";
  }
  return os.str();
}

Sensitivity zeroq_sensitivity(layers::Module& model, const Tensor& data,
                              const std::vector<int64_t>& bits) {
  autograd::NoGradGuard ng;
  const bool was_training = model.is_training();
  model.eval();
  Sensitivity s;
  s.layers = weight_layers(model);
  s.bits = bits;
  const Tensor ref = model.forward(data);
  std::map<std::string, layers::ModulePtr> mods;
  for (auto& [name, m] : model.named_modules()) mods[name] = m;
  for (const WeightLayer& wl : s.layers) {
    layers::Module* m = mods.at(wl.name).get();
    auto* conv = dynamic_cast<layers::Conv2d*>(m);
    Tensor& w = conv ? conv->weight() : dynamic_cast<layers::Linear*>(m)->weight();
    const Tensor saved = w.detach().clone();
    std::vector<double> row;
    for (int64_t b : bits) {
      if (b >= 32) {  // float: the model itself
        row.push_back(0.0);
        continue;
      }
      // ZeroQ's weight quantizer: per output channel, asymmetric min-max, signed codes.
      QuantizerPtr q =
          create_quantizer("uniform", QuantizerOptions{{"role", "weight"},
                                                       {"bits", std::to_string(b)},
                                                       {"per_channel", "true"},
                                                       {"channels", std::to_string(w.size(0))},
                                                       {"symmetric", "false"},
                                                       {"observer", "minmax"}});
      q->to(w.device());
      q->set_calibrating(true);
      q->forward(saved);
      q->set_calibrating(false);
      q->eval();
      w.copy_(q->forward(saved));
      row.push_back(mean_kl_divergence(ref, model.forward(data)));
      w.copy_(saved);
    }
    s.omega.push_back(row);
  }
  model.train(was_training);
  return s;
}

int64_t packed_bytes(int64_t n, int64_t bits) { return (n * bits + 7) / 8; }

std::vector<Allocation> pareto_frontier(const std::vector<std::vector<int64_t>>& size,
                                        const std::vector<std::vector<double>>& cost) {
  const size_t L = size.size();
  LOWBIT_CHECK(L > 0 && cost.size() == L, "pareto_frontier: ", L, " layers of sizes, ", cost.size(),
               " of costs");
  int64_t g = 0, total = 0;
  for (size_t i = 0; i < L; ++i) {
    LOWBIT_CHECK(!size[i].empty() && size[i].size() == cost[i].size(), "pareto_frontier: layer ", i,
                 " has ", size[i].size(), " sizes and ", cost[i].size(), " costs");
    int64_t mx = 0;
    for (int64_t v : size[i]) {
      LOWBIT_CHECK(v > 0, "pareto_frontier: layer ", i, " has a size ", v, " <= 0");
      g = std::gcd(g, v);
      mx = std::max(mx, v);
    }
    total += mx;
  }
  const int64_t S = total / g;  // sizes in units of g: 0..S
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> dp(size_t(S + 1), inf), next(size_t(S + 1));
  dp[0] = 0.0;
  // choice[i][s]: the option of layer i on the best path to total size s after layer i.
  std::vector<std::vector<uint8_t>> choice(L, std::vector<uint8_t>(size_t(S + 1), 0));
  int64_t reach = 0;  // the largest total reachable so far
  for (size_t i = 0; i < L; ++i) {
    LOWBIT_CHECK(size[i].size() < 256, "pareto_frontier: more than 255 options for layer ", i);
    std::fill(next.begin(), next.end(), inf);
    int64_t mx = 0;
    for (size_t j = 0; j < size[i].size(); ++j) {
      const int64_t u = size[i][j] / g;
      mx = std::max(mx, u);
      const double c = cost[i][j];
      for (int64_t s = 0; s <= reach; ++s) {
        if (dp[size_t(s)] == inf) continue;
        const double v = dp[size_t(s)] + c;
        if (v < next[size_t(s + u)]) {
          next[size_t(s + u)] = v;
          choice[i][size_t(s + u)] = uint8_t(j);
        }
      }
    }
    reach += mx;
    dp.swap(next);
  }
  std::vector<Allocation> out;
  double best = inf;
  for (int64_t s = 0; s <= S; ++s) {
    if (!(dp[size_t(s)] < best)) continue;
    best = dp[size_t(s)];
    Allocation a;
    a.bytes = s * g;
    a.cost = best;
    a.choice.assign(L, 0);
    int64_t t = s;
    for (size_t i = L; i-- > 0;) {
      const uint8_t j = choice[i][size_t(t)];
      a.choice[i] = j;
      t -= size[i][j] / g;
    }
    out.push_back(a);
  }
  return out;
}

Allocation allocate_within(const std::vector<Allocation>& frontier, int64_t budget) {
  LOWBIT_CHECK_INPUT(!frontier.empty() && frontier.front().bytes <= budget, "size budget ", budget,
                     " bytes is below the smallest model (",
                     frontier.empty() ? 0 : frontier.front().bytes,
                     " bytes of weights with every layer at its lowest bit width)");
  Allocation best = frontier.front();
  for (const Allocation& a : frontier) {
    if (a.bytes <= budget) best = a;
  }
  return best;
}

int64_t parse_size_budget(const std::string& text, const std::vector<WeightLayer>& layers) {
  const auto digits = [](const std::string& s) {
    return !s.empty() && s.size() <= 18 && std::all_of(s.begin(), s.end(), ::isdigit);
  };
  const std::string suffix = "bit";
  if (text.size() > suffix.size() && text.compare(text.size() - 3, 3, suffix) == 0 &&
      digits(text.substr(0, text.size() - 3))) {
    const int64_t k = std::stoll(text.substr(0, text.size() - 3));
    LOWBIT_CHECK_INPUT(k >= 1 && k <= 32, "size budget '", text,
                       "': the bit width must be in 1..32");
    int64_t bytes = 0;
    for (const WeightLayer& l : layers) bytes += packed_bytes(l.weights, k);
    return bytes;
  }
  LOWBIT_CHECK_INPUT(digits(text) && std::stoll(text) > 0, "size budget '", text,
                     "': wants Kbit (4bit, 6bit: every weight layer at K bits) or a number of"
                     " bytes > 0");
  return std::stoll(text);
}

}  // namespace lowbit::quant
