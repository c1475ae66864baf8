// Pruning options and the criteria that pick channels, registered by name (no switch over
// names): "pfq" (docs/methods.md, "PfQ": BN running variance below tau; the removed channels are
// replaced by constants folded into the next layer), "l1" (Li et al. 2017, "Pruning Filters for
// Efficient ConvNets": the filters with the smallest L1 norm) and "bn_gamma" (Liu et al. 2017,
// "Learning Efficient Convolutional Networks through Network Slimming": the smallest |gamma| of the
// BN after the conv). The two baselines remove `ratio` of the channels without folding and skip
// residual streams.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "prune/graph.h"

namespace lowbit::prune {

struct PruneOptions {
  std::string method = "pfq";  // a registered criterion: pfq | l1 | bn_gamma
  // l1 / bn_gamma: fraction of each layer's channels to remove (rounded down, at least one
  // channel kept), or of all candidate channels with scope = global.
  double ratio = 0.0;
  std::string scope = "layer";  // layer | global (l1 / bn_gamma)
  // PfQ (docs/methods.md, "PfQ"): prune channel i iff running_var_i < var_threshold; < 0: that BN's
  // eps (lowbit default). Optional second condition |gamma_i| sqrt(var_i / (var_i + eps)) <
  // out_std_threshold, off when 0.
  double var_threshold = -1.0;
  double out_std_threshold = 0.0;
  // PfQ folding (docs/methods.md, "PfQ"): full = fold the full-kernel sum into the bias (lowbit
  // default, exact away from zero-padded borders); exact = per-position bias map (P, Q, K).
  std::string border = "full";
  // PfQ constant: beta = act(beta_i) (lowbit default); data_mean = mean of act(BN(x_i)) over
  // the calibration batches.
  std::string constant = "beta";
  // structural = remove channels (dense, smaller model); mask = keep shapes, zero and freeze
  // the filters (PfQ only).
  std::string mode = "structural";
  // PfQ channels on residual streams (docs/methods.md, "PfQ"): mask (lowbit default) or skip.
  std::string residual = "mask";

  // Throws InputError naming the bad option, its value and the allowed values.
  void validate() const;
};

// A channel picked by a criterion: output channel `channel` of graph layer `layer` (the BN of a
// Conv+BN pair for pfq, the dense conv for l1 / bn_gamma) with its score (running variance,
// L1 norm or |gamma|).
struct Candidate {
  int layer = -1;
  int64_t channel = 0;
  double score = 0.0;
};

struct Criterion {
  std::function<std::vector<Candidate>(const ChannelGraph&, const PruneOptions&)> select;
  // true: removed channels are replaced by constants folded into the consumers (PfQ).
  bool folds = false;
};

// Registry; registering a name twice throws.
void register_criterion(const std::string& name, Criterion c);
const Criterion& find_criterion(const std::string& name);  // InputError listing the names
std::vector<std::string> criterion_names();

// The PfQ statistics of BN channel c: running variance, gamma, beta and the BN output std
// |gamma| sqrt(var / (var + eps)) (docs/methods.md, "PfQ" asks to log them).
struct BnChannelStats {
  double var = 0, gamma = 0, beta = 0, out_std = 0, eps = 0;
};
std::vector<BnChannelStats> bn_channel_stats(const GraphLayer& bn);

}  // namespace lowbit::prune
