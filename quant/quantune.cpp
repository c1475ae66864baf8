// Quantune, grid and random search over a configuration space (quant/quantune.h).
#include "quant/quantune.h"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <random>
#include <sstream>

#include "core/error.h"

namespace lowbit::quant {

ConfigSpace::ConfigSpace(std::vector<Knob> knobs) : knobs_(std::move(knobs)) {
  LOWBIT_CHECK(!knobs_.empty(), "a configuration space needs at least one knob");
  for (const Knob& k : knobs_) {
    LOWBIT_CHECK(!k.values.empty(), "knob '", k.name, "' has no values");
  }
}

int64_t ConfigSpace::size() const {
  int64_t n = 1;
  for (const Knob& k : knobs_) n *= int64_t(k.values.size());
  return n;
}

Config ConfigSpace::config(int64_t index) const {
  LOWBIT_CHECK(index >= 0 && index < size(), "configuration index ", index, " outside [0, ", size(),
               ")");
  Config c(knobs_.size());
  for (size_t i = knobs_.size(); i-- > 0;) {
    const int64_t n = int64_t(knobs_[i].values.size());
    c[i] = index % n;
    index /= n;
  }
  return c;
}

int64_t ConfigSpace::index(const Config& c) const {
  LOWBIT_CHECK(c.size() == knobs_.size(), "a configuration of ", c.size(), " values for ",
               knobs_.size(), " knobs");
  int64_t idx = 0;
  for (size_t i = 0; i < knobs_.size(); ++i) idx = idx * int64_t(knobs_[i].values.size()) + c[i];
  return idx;
}

int64_t ConfigSpace::encoded_size() const {
  int64_t n = 0;
  for (const Knob& k : knobs_) n += int64_t(k.values.size());
  return n;
}

std::vector<float> ConfigSpace::one_hot(const Config& c) const {
  std::vector<float> v(size_t(encoded_size()), 0.0f);
  int64_t off = 0;
  for (size_t i = 0; i < knobs_.size(); ++i) {
    v[size_t(off + c[i])] = 1.0f;
    off += int64_t(knobs_[i].values.size());
  }
  return v;
}

std::string ConfigSpace::describe(const Config& c) const {
  std::ostringstream os;
  for (size_t i = 0; i < knobs_.size(); ++i) {
    os << (i ? " " : "") << knobs_[i].name << "=" << knobs_[i].values[size_t(c[i])];
  }
  return os.str();
}

int64_t ConfigSpace::value_index(const std::string& knob, const std::string& value) const {
  for (const Knob& k : knobs_) {
    if (k.name != knob) continue;
    auto it = std::find(k.values.begin(), k.values.end(), value);
    if (it != k.values.end()) return int64_t(it - k.values.begin());
    std::ostringstream os;
    for (size_t i = 0; i < k.values.size(); ++i) os << (i ? ", " : "") << k.values[i];
    throw InputError(str_cat("knob ", knob, ": unknown value '", value, "'; allowed: ", os.str()));
  }
  std::ostringstream os;
  for (size_t i = 0; i < knobs_.size(); ++i) os << (i ? ", " : "") << knobs_[i].name;
  throw InputError(str_cat("unknown knob '", knob, "'; knobs: ", os.str()));
}

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void measure(const ConfigSpace& space, const Objective& f, int64_t index, SearchResult* r) {
  const auto t0 = Clock::now();
  Measurement m;
  m.config = space.config(index);
  m.value = f(m.config);
  m.seconds = since(t0);
  if (r->measured.empty() || m.value > r->best.value) r->best = m;
  r->measured.push_back(m);
}

int64_t budget_of(const ConfigSpace& space, const SearchOptions& o) {
  return o.budget > 0 ? std::min(o.budget, space.size()) : space.size();
}

}  // namespace

SearchResult grid_search(const ConfigSpace& space, const Objective& f, const SearchOptions& o) {
  const auto t0 = Clock::now();
  SearchResult r;
  r.method = "grid";
  const int64_t n = budget_of(space, o);
  for (int64_t i = 0; i < n; ++i) measure(space, f, i, &r);
  r.seconds = since(t0);
  return r;
}

SearchResult random_search(const ConfigSpace& space, const Objective& f, const SearchOptions& o) {
  const auto t0 = Clock::now();
  SearchResult r;
  r.method = "random";
  std::vector<int64_t> order(size_t(space.size()));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(o.seed);
  std::shuffle(order.begin(), order.end(), rng);
  const int64_t n = budget_of(space, o);
  for (int64_t i = 0; i < n; ++i) measure(space, f, order[size_t(i)], &r);
  r.seconds = since(t0);
  return r;
}

SearchResult quantune_search(const ConfigSpace& space, const Objective& f, const SearchOptions& o,
                             CostModel& model) {
  const auto t0 = Clock::now();
  SearchResult r;
  r.method = "quantune";
  const int64_t total = space.size(), budget = budget_of(space, o);
  std::mt19937_64 rng(o.seed);
  std::vector<bool> done(size_t(total), false);
  std::vector<int64_t> order(static_cast<size_t>(total));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  auto measure_index = [&](int64_t idx) {
    done[size_t(idx)] = true;
    measure(space, f, idx, &r);
  };
  // n0 random configurations.
  for (int64_t i = 0; i < std::min(o.initial, budget); ++i) measure_index(order[size_t(i)]);
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  int64_t stale = 0;
  while (int64_t(r.measured.size()) < budget && stale < o.patience) {
    const auto tm = Clock::now();
    std::vector<std::vector<float>> x;
    std::vector<float> y;
    for (const Measurement& m : r.measured) {
      x.push_back(space.one_hot(m.config));
      y.push_back(float(m.value));
    }
    model.fit(x, y);
    std::vector<int64_t> rest;
    std::vector<std::vector<float>> xr;
    for (int64_t i = 0; i < total; ++i) {
      if (done[size_t(i)]) continue;
      rest.push_back(i);
      xr.push_back(space.one_hot(space.config(i)));
    }
    if (rest.empty()) break;
    const std::vector<float> pred = model.predict(xr);
    std::vector<size_t> rank(rest.size());
    std::iota(rank.begin(), rank.end(), size_t(0));
    // Highest predicted first; ties by index, so the search is deterministic.
    std::stable_sort(rank.begin(), rank.end(),
                     [&](size_t a, size_t b) { return pred[a] > pred[b]; });
    r.model_seconds += since(tm);
    const double before = r.best.value;
    std::vector<int64_t> pick;
    for (size_t k = 0; k < rank.size() && int64_t(pick.size()) < o.per_round; ++k) {
      pick.push_back(rest[rank[k]]);
    }
    if (coin(rng) < o.explore && rest.size() > pick.size()) {
      // One random configuration among the rest not picked.
      std::vector<int64_t> others;
      for (size_t k = pick.size(); k < rank.size(); ++k) others.push_back(rest[rank[k]]);
      std::uniform_int_distribution<size_t> any(0, others.size() - 1);
      pick.push_back(others[any(rng)]);
    }
    for (int64_t idx : pick) {
      if (int64_t(r.measured.size()) >= budget) break;
      measure_index(idx);
    }
    ++r.rounds;
    stale = r.best.value > before ? 0 : stale + 1;
  }
  r.seconds = since(t0);
  return r;
}

}  // namespace lowbit::quant
