// The observers of observer.h and their registry.
#include "quant/observer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <sstream>

#include "core/autograd.h"
#include "core/ops.h"
#include "dist/process_group.h"
#include "dist/world.h"
#include "quant/quantizer.h"

namespace lowbit::quant {

// --- registry -----------------------------------------------------------------------------

namespace {
std::map<std::string, ObserverFactory>& observer_registry() {
  static std::map<std::string, ObserverFactory> r;
  return r;
}
}  // namespace

ObserverRegistrar::ObserverRegistrar(const std::string& name, ObserverFactory factory) {
  LOWBIT_CHECK(!observer_registry().count(name), "observer '", name, "' registered twice");
  observer_registry()[name] = std::move(factory);
}

std::vector<std::string> observer_names() {
  std::vector<std::string> out;
  for (const auto& kv : observer_registry()) out.push_back(kv.first);
  return out;
}

std::unique_ptr<Observer> create_observer(const std::string& name, OptionReader& r,
                                          const ObserverContext& ctx) {
  auto it = observer_registry().find(name);
  if (it == observer_registry().end()) {
    std::ostringstream os;
    const auto names = observer_names();
    for (size_t i = 0; i < names.size(); ++i) os << (i ? ", " : "") << names[i];
    r.fail("observer", "is not a known observer; allowed: " + os.str());
  }
  return it->second(r, ctx);
}

// --- shared helpers -----------------------------------------------------------------------

std::pair<Tensor, Tensor> batch_min_max(const Tensor& x, const ChannelLayout& l) {
  autograd::NoGradGuard guard;
  Tensor v = x.detach().reshape(layout_shape(l));
  Tensor mn = amin(v, {0, 2}).to(DType::f32).contiguous(),
         mx = amax(v, {0, 2}).to(DType::f32).contiguous();
  if (dist::is_distributed()) {
    // Every rank observes its shard of the global batch at the same step: the extremes of the
    // global batch keep the ranges (and so the models) identical across ranks. One collective:
    // the max of (-min, max).
    const int64_t c = mn.numel();
    Tensor both = empty({2 * c}, TensorOptions(DType::f32, mn.device()));
    both.narrow(0, 0, c).copy_(neg(mn));
    both.narrow(0, c, c).copy_(mx);
    dist::process_group(mn.device()).all_reduce(both, dist::ReduceOp::max);
    mn = neg(both.narrow(0, 0, c)).contiguous();
    mx = both.narrow(0, c, c).contiguous();
  }
  return {mn, mx};
}

double percentile_linear(const std::vector<float>& sorted, double p) {
  LOWBIT_CHECK(!sorted.empty(), "percentile of no values");
  const double pos = p / 100.0 * double(sorted.size() - 1);
  const size_t lo = size_t(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  const double t = pos - double(lo);
  const double a = sorted[lo], b = sorted[hi];
  // numpy's _lerp: a + (b - a) t, from the upper end when t >= 0.5 (exact at t = 1).
  return t >= 0.5 ? b - (b - a) * (1.0 - t) : a + (b - a) * t;
}

// --- ValueStore ---------------------------------------------------------------------------

void ValueStore::add(const Tensor& x, const ChannelLayout& l) {
  Tensor h = x.detach().to(Device::cpu(), DType::f32).contiguous();
  const float* p = h.data<float>();
  const int64_t C = l.channels, inner = l.inner, outer = l.outer;
  if (channels_.empty()) {
    channels_.resize(size_t(C));
    for (auto& ch : channels_) {
      ch.lo = std::numeric_limits<float>::infinity();
      ch.hi = -std::numeric_limits<float>::infinity();
    }
  }
  LOWBIT_CHECK(int64_t(channels_.size()) == C, "observer: ", C, " channels after ",
               channels_.size(), " in earlier batches");
  if (exact_ && stored_ + h.numel() > max_values_) to_histograms();
  for (int64_t c = 0; c < C; ++c) {
    Channel& ch = channels_[size_t(c)];
    if (exact_) {
      for (int64_t o = 0; o < outer; ++o) {
        const float* row = p + (o * C + c) * inner;
        for (int64_t r = 0; r < inner; ++r) {
          ch.values.push_back(row[r]);
          ch.lo = std::min(ch.lo, row[r]);
          ch.hi = std::max(ch.hi, row[r]);
        }
      }
      ch.sorted = false;
      ch.total += double(outer * inner);
    } else {
      for (int64_t o = 0; o < outer; ++o) hist_add(ch, p + (o * C + c) * inner, inner);
    }
  }
  if (exact_) stored_ += h.numel();
}

void ValueStore::to_histograms() {
  for (auto& ch : channels_) {
    std::vector<float> values;
    values.swap(ch.values);
    ch.counts.assign(kBins, 0.0);
    ch.total = 0.0;
    hist_add(ch, values.data(), int64_t(values.size()));
  }
  exact_ = false;
  stored_ = 0;
}

// Adds n values to a histogram channel, re-binning (by old bin centres) when they widen the range.
void ValueStore::hist_add(Channel& ch, const float* v, int64_t n) {
  if (n == 0) return;
  float lo = ch.lo, hi = ch.hi;
  for (int64_t i = 0; i < n; ++i) {
    lo = std::min(lo, v[i]);
    hi = std::max(hi, v[i]);
  }
  auto bin_of = [](double value, double l, double h) {
    if (!(h > l)) return int64_t(0);
    const int64_t b = int64_t((value - l) / (h - l) * kBins);
    return std::min<int64_t>(std::max<int64_t>(b, 0), kBins - 1);
  };
  if (ch.total > 0 && (lo < ch.lo || hi > ch.hi)) {
    std::vector<double> old(kBins, 0.0);
    old.swap(ch.counts);
    const double w = (double(ch.hi) - double(ch.lo)) / kBins;
    for (int64_t b = 0; b < kBins; ++b) {
      if (old[size_t(b)] == 0.0) continue;
      const double centre = double(ch.lo) + (double(b) + 0.5) * w;
      ch.counts[size_t(bin_of(centre, lo, hi))] += old[size_t(b)];
    }
  }
  ch.lo = lo;
  ch.hi = hi;
  for (int64_t i = 0; i < n; ++i) ch.counts[size_t(bin_of(v[i], lo, hi))] += 1.0;
  ch.total += double(n);
}

double ValueStore::percentile(int64_t c, double p) {
  Channel& ch = channels_[size_t(c)];
  if (exact_) {
    if (!ch.sorted) {
      std::sort(ch.values.begin(), ch.values.end());
      ch.sorted = true;
    }
    return percentile_linear(ch.values, p);
  }
  // The k-th smallest value, with the n values of a bin spread evenly across it; then numpy's
  // linear interpolation between neighbouring order statistics.
  const double w = (double(ch.hi) - double(ch.lo)) / kBins;
  auto order_stat = [&](double k) {
    double before = 0.0;
    for (int64_t b = 0; b < kBins; ++b) {
      const double n = ch.counts[size_t(b)];
      if (n > 0 && before + n > k) return double(ch.lo) + (double(b) + (k - before + 0.5) / n) * w;
      before += n;
    }
    return double(ch.hi);
  };
  const double pos = p / 100.0 * (ch.total - 1.0);
  const double k = std::floor(pos), t = pos - k;
  const double a = order_stat(k), b = order_stat(std::min(k + 1.0, ch.total - 1.0));
  return t >= 0.5 ? b - (b - a) * (1.0 - t) : a + (b - a) * t;
}

void ValueStore::points(int64_t c, std::vector<float>* v, std::vector<double>* w) const {
  const Channel& ch = channels_[size_t(c)];
  v->clear();
  w->clear();
  if (exact_) {
    *v = ch.values;
    return;
  }
  const double width = (double(ch.hi) - double(ch.lo)) / kBins;
  for (int64_t b = 0; b < kBins; ++b) {
    if (ch.counts[size_t(b)] == 0.0) continue;
    v->push_back(float(double(ch.lo) + (double(b) + 0.5) * width));
    w->push_back(ch.counts[size_t(b)]);
  }
}

namespace {

// Writes host values into a (C) f32 buffer on its device.
void assign(Tensor& dst, const std::vector<float>& values) {
  autograd::NoGradGuard guard;
  dst.copy_(from_vector(values, dst.shape(), TensorOptions(DType::f32, dst.device())));
}

// --- min-max ------------------------------------------------------------------------------

class MinMaxObserver : public Observer {
 public:
  const char* name() const override { return "minmax"; }
  bool observes_in_training() const override { return true; }
  void observe(const Tensor& x, const ChannelLayout& l, Tensor& min_val, Tensor& max_val) override {
    auto [mn, mx] = batch_min_max(x, l);
    autograd::NoGradGuard guard;
    min_val.copy_(minimum(min_val, mn));
    max_val.copy_(maximum(max_val, mx));
  }
};

// --- EMA min-max (PyTorch MovingAverageMinMaxObserver) ------------------------------------

class EmaObserver : public Observer {
 public:
  explicit EmaObserver(double c) : c_(c) {}
  const char* name() const override { return "ema"; }
  bool observes_in_training() const override { return true; }
  std::string repr() const override { return str_cat("ema, ema_constant=", c_); }
  void observe(const Tensor& x, const ChannelLayout& l, Tensor& min_val, Tensor& max_val) override {
    auto [mn, mx] = batch_min_max(x, l);
    autograd::NoGradGuard guard;
    // First batch (min_val still +inf): take the batch extremes; then x += c * (cur - x).
    Tensor first = eq(min_val, full({1}, INFINITY, TensorOptions(DType::f32, min_val.device())));
    Tensor new_min = where(first, mn, min_val + (mn - min_val) * c_);
    Tensor new_max = where(first, mx, max_val + (mx - max_val) * c_);
    min_val.copy_(new_min);
    max_val.copy_(new_max);
  }

 private:
  double c_;
};

// --- observers of every calibration value (percentile, mse, kl) ---------------------------

// Keeps every calibration value (ValueStore) and computes each channel's range when the
// quantizer asks for it.
class StoredValuesObserver : public Observer {
 public:
  explicit StoredValuesObserver(int64_t max_values) : store_(max_values) {}
  bool observes_in_training() const override { return false; }
  void observe(const Tensor& x, const ChannelLayout& l, Tensor&, Tensor&) override {
    store_.add(x, l);
    pending_ = true;
  }
  void finalize(Tensor& min_val, Tensor& max_val) override {
    if (!pending_) return;
    const int64_t C = store_.channels();
    std::vector<float> mn(static_cast<size_t>(C)), mx(static_cast<size_t>(C));
    for (int64_t c = 0; c < C; ++c) {
      const auto [lo, hi] = channel_range(c);
      mn[size_t(c)] = lo;
      mx[size_t(c)] = hi;
    }
    assign(min_val, mn);
    assign(max_val, mx);
    pending_ = false;
  }

 protected:
  // The range of channel c from the stored values.
  virtual std::pair<float, float> channel_range(int64_t c) = 0;
  ValueStore store_;

 private:
  bool pending_ = false;
};

// --- percentile ---------------------------------------------------------------------------

class PercentileObserver : public StoredValuesObserver {
 public:
  PercentileObserver(double lo, double hi, int64_t max_values)
      : StoredValuesObserver(max_values), lo_(lo), hi_(hi) {}
  const char* name() const override { return "percentile"; }
  std::string repr() const override {
    return str_cat("percentile, percentile_low=", lo_, ", percentile_high=", hi_);
  }

 protected:
  std::pair<float, float> channel_range(int64_t c) override {
    return {float(store_.percentile(c, lo_)), float(store_.percentile(c, hi_))};
  }

 private:
  double lo_, hi_;
};

// --- MSE search ---------------------------------------------------------------------------

class MseObserver : public StoredValuesObserver {
 public:
  MseObserver(int64_t steps, int64_t max_values, const ObserverContext& ctx)
      : StoredValuesObserver(max_values), steps_(steps), ctx_(ctx) {}
  const char* name() const override { return "mse"; }
  std::string repr() const override { return str_cat("mse, mse_steps=", steps_); }

 protected:
  std::pair<float, float> channel_range(int64_t c) override {
    std::vector<float> v;
    std::vector<double> w;
    const float qmin = float(ctx_.range.qmin), qmax = float(ctx_.range.qmax);
    store_.points(c, &v, &w);
    const float lo = store_.min(c), hi = store_.max(c);
    std::vector<double> err(size_t(steps_), 0.0);
#pragma omp parallel for schedule(dynamic)
    for (int64_t j = 1; j <= steps_; ++j) {
      const float t = float(j) / float(steps_);
      const QParams q =
          calc_qparams(t * lo, t * hi, ctx_.range.qmin, ctx_.range.qmax, ctx_.symmetric);
      const float z = float(q.zero_point);
      double e = 0.0;
      for (size_t i = 0; i < v.size(); ++i) {
        const double d = double(v[i]) - double(fake_quant_value(v[i], q.scale, z, qmin, qmax));
        e += (w.empty() ? 1.0 : w[i]) * d * d;
      }
      err[size_t(j - 1)] = e;
    }
    int64_t best = 1;
    for (int64_t j = 1; j <= steps_; ++j) {
      if (err[size_t(j - 1)] <= err[size_t(best - 1)]) best = j;  // ties: the larger t
    }
    const float t = float(best) / float(steps_);
    return {t * lo, t * hi};
  }

 private:
  int64_t steps_;
  ObserverContext ctx_;
};

}  // namespace

// --- KL entropy (TensorRT / MXNet / TVM calibration) --------------------------------------

// The clipping threshold of hist (counts of |x| over [0, amax] in equal bins) that keeps the
// quantized distribution closest to the observed one (docs/methods.md, "KL-entropy observer"):
// for i = levels..bins, P = the first i bins with the counts beyond added to bin i-1; Q = the
// first i bins merged into `levels` chunks, each chunk's sum spread evenly over its non-empty
// bins; both smoothed (eps 1e-4 on empty bins) and normalised; the i with the least KL(P || Q)
// (ties: the smaller i) gives threshold i * amax / bins.
double kl_threshold(const std::vector<double>& hist, double amax, int64_t levels) {
  const int64_t bins = int64_t(hist.size());
  if (levels >= bins || amax <= 0.0) return amax;
  auto smooth = [](std::vector<double>& d) {
    constexpr double eps = 1e-4;
    int64_t zeros = 0;
    double total = 0.0;
    for (double v : d) {
      zeros += v == 0.0;
      total += v;
    }
    const int64_t nonzeros = int64_t(d.size()) - zeros;
    if (total <= 0.0 || nonzeros == 0) return false;
    for (double& v : d) v /= total;
    const double eps1 = zeros > 0 ? eps * double(zeros) / double(nonzeros) : 0.0;
    for (double& v : d) v = v == 0.0 ? eps : v - eps1;
    return true;
  };
  double best_kl = INFINITY;
  int64_t best_i = bins;
  std::vector<double> p, q;
  for (int64_t i = levels; i <= bins; ++i) {
    p.assign(hist.begin(), hist.begin() + i);
    double outliers = 0.0;
    for (int64_t b = i; b < bins; ++b) outliers += hist[size_t(b)];
    p[size_t(i - 1)] += outliers;
    q.assign(size_t(i), 0.0);
    for (int64_t j = 0; j < levels; ++j) {
      const int64_t lo = j * i / levels, hi = j + 1 == levels ? i : (j + 1) * i / levels;
      double sum = 0.0;
      int64_t nonzero = 0;
      for (int64_t b = lo; b < hi; ++b) {
        sum += hist[size_t(b)];
        nonzero += hist[size_t(b)] != 0.0;
      }
      for (int64_t b = lo; b < hi; ++b) {
        if (hist[size_t(b)] != 0.0) q[size_t(b)] = sum / double(nonzero);
      }
    }
    if (!smooth(p) || !smooth(q)) continue;
    double kl = 0.0;
    for (int64_t b = 0; b < i; ++b) kl += p[size_t(b)] * std::log(p[size_t(b)] / q[size_t(b)]);
    if (kl < best_kl) {
      best_kl = kl;
      best_i = i;
    }
  }
  return double(best_i) * amax / double(bins);
}

namespace {

class KlObserver : public StoredValuesObserver {
 public:
  KlObserver(int64_t bins, int64_t max_values, const ObserverContext& ctx)
      : StoredValuesObserver(max_values), bins_(bins), ctx_(ctx) {}
  const char* name() const override { return "kl"; }
  std::string repr() const override { return str_cat("kl, kl_bins=", bins_); }

 protected:
  std::pair<float, float> channel_range(int64_t c) override {
    std::vector<float> v;
    std::vector<double> w;
    store_.points(c, &v, &w);
    const float lo = store_.min(c), hi = store_.max(c);
    const double amax = std::max(std::fabs(double(lo)), std::fabs(double(hi)));
    std::vector<double> hist(size_t(bins_), 0.0);
    for (size_t i = 0; i < v.size(); ++i) {
      // Exact zeros (half of a post-ReLU tensor) are exact at any threshold: left out, they would
      // dominate the first chunk and drive the threshold to the smallest candidate.
      if (v[i] == 0.0f) continue;
      const int64_t b = amax > 0.0 ? int64_t(std::fabs(double(v[i])) / amax * double(bins_)) : 0;
      hist[size_t(std::min(b, bins_ - 1))] += w.empty() ? 1.0 : w[i];
    }
    // Levels on the side of zero the histogram covers: all codes for one-signed data, half of
    // them when the values take both signs.
    const int64_t codes = ctx_.range.qmax - ctx_.range.qmin + 1;
    const int64_t levels = std::max<int64_t>(1, lo < 0.0f && hi > 0.0f ? codes / 2 : codes);
    const double t = kl_threshold(hist, amax, levels);
    return {float(std::max(double(lo), -t)), float(std::min(double(hi), t))};
  }

 private:
  int64_t bins_;
  ObserverContext ctx_;
};

constexpr int64_t kDefaultMaxValues = int64_t(1) << 24;

}  // namespace

LOWBIT_OPTION_HELP("ema_constant", "ema: weight c of each batch, x_min = (1 - c) x_min + c min");
LOWBIT_OPTION_HELP("percentile_low", "percentile: x_min is this percentile of the values");
LOWBIT_OPTION_HELP("percentile_high", "percentile: x_max is this percentile of the values");
LOWBIT_OPTION_HELP("max_values",
                   "values kept exactly on the host, then per-channel 2048-bin histograms");
LOWBIT_OPTION_HELP("mse_steps", "mse: candidates t * max|x|, t = j / steps, least error wins");
LOWBIT_OPTION_HELP("kl_bins", "kl: histogram bins of the KL-divergence threshold search");

LOWBIT_REGISTER_OBSERVER("minmax", [](OptionReader&, const ObserverContext&) {
  return std::unique_ptr<Observer>(std::make_unique<MinMaxObserver>());
});
LOWBIT_REGISTER_OBSERVER("ema", [](OptionReader& r, const ObserverContext&) {
  const double c = r.get_double("ema_constant", 0.01, 0.0, 1.0, true);
  return std::unique_ptr<Observer>(std::make_unique<EmaObserver>(c));
});
LOWBIT_REGISTER_OBSERVER("percentile", [](OptionReader& r, const ObserverContext&) {
  const double lo = r.get_double("percentile_low", 0.01, 0.0, 100.0);
  const double hi = r.get_double("percentile_high", 99.99, 0.0, 100.0);
  if (lo > hi) r.fail("percentile_low", str_cat("is above percentile_high = ", hi));
  const int64_t max_values = r.get_int("max_values", kDefaultMaxValues, 1, int64_t(1) << 40);
  return std::unique_ptr<Observer>(std::make_unique<PercentileObserver>(lo, hi, max_values));
});
LOWBIT_REGISTER_OBSERVER("mse", [](OptionReader& r, const ObserverContext& ctx) {
  const int64_t steps = r.get_int("mse_steps", 100, 1, 100000);
  const int64_t max_values = r.get_int("max_values", kDefaultMaxValues, 1, int64_t(1) << 40);
  return std::unique_ptr<Observer>(std::make_unique<MseObserver>(steps, max_values, ctx));
});

LOWBIT_REGISTER_OBSERVER("kl", [](OptionReader& r, const ObserverContext& ctx) {
  const int64_t bins = r.get_int("kl_bins", 2048, 2, 1 << 20);
  const int64_t max_values = r.get_int("max_values", kDefaultMaxValues, 1, int64_t(1) << 40);
  return std::unique_ptr<Observer>(std::make_unique<KlObserver>(bins, max_values, ctx));
});

}  // namespace lowbit::quant
