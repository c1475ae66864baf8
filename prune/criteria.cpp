#include "prune/criteria.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>

#include "core/autograd.h"
#include "core/error.h"
#include "core/ops.h"
#include "core/registry.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"

namespace lowbit::prune {

namespace {

Registry<Criterion>& registry() {
  static Registry<Criterion> r("pruning method");
  return r;
}

std::string join(const std::vector<std::string>& v) {
  std::ostringstream os;
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  return os.str();
}

void check_choice(const char* key, const std::string& value, const std::vector<std::string>& ok) {
  LOWBIT_CHECK_INPUT(std::find(ok.begin(), ok.end(), value) != ok.end(), "pruning option ", key,
                     " = '", value, "' is not one of: ", join(ok));
}

std::vector<double> host(const Tensor& t) {
  std::vector<double> out;
  if (!t.defined()) return out;
  for (float v : t.detach().to(DType::f32).contiguous().to_vector<float>()) out.push_back(v);
  return out;
}

// PfQ criterion, docs/methods.md, "PfQ": running_var_i < tau (tau = the BN's eps unless
// var_threshold is set), optionally also |gamma_i| sqrt(var_i / (var_i + eps)) < out_std_threshold.
// Every Conv+BN pair is a site; what happens to the channel (removal, mask) is decided by the
// caller.
std::vector<Candidate> select_pfq(const ChannelGraph& g, const PruneOptions& o) {
  std::vector<Candidate> out;
  for (size_t i = 0; i < g.layers.size(); ++i) {
    if (g.conv_of_bn(int(i)) < 0) continue;
    const auto stats = bn_channel_stats(g.layers[i]);
    for (size_t c = 0; c < stats.size(); ++c) {
      const BnChannelStats& s = stats[c];
      const double tau = o.var_threshold < 0 ? s.eps : o.var_threshold;
      if (!(s.var < tau)) continue;
      if (o.out_std_threshold > 0 && !(s.out_std < o.out_std_threshold)) continue;
      out.push_back({int(i), int64_t(c), s.var});
    }
  }
  return out;
}

// The baselines' sites: dense convs that alone produce a removable, non-residual group.
std::vector<int> baseline_sites(const ChannelGraph& g) {
  std::vector<int> sites;
  for (const ChannelGroup& grp : g.groups) {
    if (!grp.removable || grp.residual || grp.roots.size() != 1) continue;
    if (g.layers[size_t(grp.roots[0])].kind != LayerKind::conv) continue;
    sites.push_back(grp.roots[0]);
  }
  std::sort(sites.begin(), sites.end());
  return sites;
}

// The `ratio` lowest scores per site (or over all sites), keeping at least one channel each.
std::vector<Candidate> lowest(const std::map<int, std::vector<double>>& scores,
                              const PruneOptions& o) {
  std::vector<Candidate> all;
  for (const auto& [site, s] : scores) {
    for (size_t c = 0; c < s.size(); ++c) all.push_back({site, int64_t(c), s[c]});
  }
  auto by_score = [](const Candidate& a, const Candidate& b) {
    if (a.score != b.score) return a.score < b.score;
    if (a.layer != b.layer) return a.layer < b.layer;
    return a.channel < b.channel;
  };
  std::vector<Candidate> out;
  if (o.scope == "global") {
    std::sort(all.begin(), all.end(), by_score);
    const size_t n = size_t(std::floor(o.ratio * double(all.size())));
    std::map<int, int64_t> taken;
    for (size_t i = 0; i < all.size() && out.size() < n; ++i) {
      const Candidate& c = all[i];
      if (taken[c.layer] + 1 >= int64_t(scores.at(c.layer).size())) continue;
      ++taken[c.layer];
      out.push_back(c);
    }
  } else {
    for (const auto& [site, s] : scores) {
      std::vector<Candidate> mine;
      for (size_t c = 0; c < s.size(); ++c) mine.push_back({site, int64_t(c), s[c]});
      std::sort(mine.begin(), mine.end(), by_score);
      const int64_t n =
          std::min<int64_t>(int64_t(std::floor(o.ratio * double(s.size()))), int64_t(s.size()) - 1);
      for (int64_t i = 0; i < n; ++i) out.push_back(mine[size_t(i)]);
    }
  }
  std::sort(out.begin(), out.end(), [](const Candidate& a, const Candidate& b) {
    return a.layer != b.layer ? a.layer < b.layer : a.channel < b.channel;
  });
  return out;
}

// Li et al. 2017: sum_{r,s,c} |W[k, r, s, c]| of each filter.
std::vector<Candidate> select_l1(const ChannelGraph& g, const PruneOptions& o) {
  std::map<int, std::vector<double>> scores;
  autograd::NoGradGuard guard;
  for (int site : baseline_sites(g)) {
    const Tensor w = g.layers[size_t(site)].conv()->effective_weight();
    scores[site] = host(abs(w).sum({1, 2, 3}));
  }
  return lowest(scores, o);
}

// Network slimming: |gamma| of the BN right after the conv (convs without one are skipped).
std::vector<Candidate> select_bn_gamma(const ChannelGraph& g, const PruneOptions& o) {
  std::map<int, std::vector<double>> scores;
  for (int site : baseline_sites(g)) {
    const int bn = g.bn_of_conv(site);
    if (bn < 0 || !g.layers[size_t(bn)].bn()->weight().defined()) continue;
    std::vector<double> s = host(g.layers[size_t(bn)].bn()->weight());
    for (double& v : s) v = std::fabs(v);
    scores[site] = s;
  }
  return lowest(scores, o);
}

struct Registrar {
  Registrar() {
    register_criterion("pfq", {select_pfq, true});
    register_criterion("l1", {select_l1, false});
    register_criterion("bn_gamma", {select_bn_gamma, false});
  }
};
const Registrar registrar;

}  // namespace

void PruneOptions::validate() const {
  const auto names = criterion_names();
  check_choice("method", method, names);
  check_choice("scope", scope, {"layer", "global"});
  check_choice("border", border, {"full", "exact"});
  check_choice("constant", constant, {"beta", "data_mean"});
  check_choice("mode", mode, {"structural", "mask"});
  check_choice("residual", residual, {"mask", "skip"});
  LOWBIT_CHECK_INPUT(ratio >= 0.0 && ratio < 1.0, "pruning option ratio = ", ratio,
                     " must be in [0, 1)");
  LOWBIT_CHECK_INPUT(out_std_threshold >= 0.0,
                     "pruning option out_std_threshold = ", out_std_threshold,
                     " must be >= 0 (0: off)");
}

void register_criterion(const std::string& name, Criterion c) {
  LOWBIT_CHECK(c.select != nullptr, "pruning criterion '", name, "' has no select function");
  registry().add(name, std::move(c));
}

const Criterion& find_criterion(const std::string& name) { return registry().get(name); }

std::vector<std::string> criterion_names() { return registry().names(); }

std::vector<BnChannelStats> bn_channel_stats(const GraphLayer& l) {
  layers::BatchNorm2d* bn = l.bn();
  LOWBIT_CHECK(bn != nullptr, "bn_channel_stats: '", l.name, "' is not a BatchNorm2d");
  LOWBIT_CHECK_INPUT(bn->running_var().defined(), "PfQ needs running statistics, but '", l.name,
                     "' has track_running_stats = false");
  const std::vector<double> var = host(bn->running_var());
  const std::vector<double> gamma = host(bn->weight()), beta = host(bn->bias());
  const double eps = bn->options().eps;
  std::vector<BnChannelStats> out(var.size());
  for (size_t c = 0; c < var.size(); ++c) {
    BnChannelStats& s = out[c];
    s.var = var[c];
    s.gamma = gamma.empty() ? 1.0 : gamma[c];
    s.beta = beta.empty() ? 0.0 : beta[c];
    s.eps = eps;
    s.out_std = std::fabs(s.gamma) * std::sqrt(std::max(s.var, 0.0) / (std::max(s.var, 0.0) + eps));
  }
  return out;
}

}  // namespace lowbit::prune
