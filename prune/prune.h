// The pruning entry point: trace the channel graph, pick channels with a registered criterion,
// and either remove them (structural surgery; PfQ folds the removed channels' constants into
// the consumers' biases, docs/methods.md, "PfQ") or mask them (zero, frozen filters), then report
// what changed: channels, parameters, model bytes and BOPs (quant::account_model, docs/methods.md,
// "Accounting") before and after, and every pruned channel with its BN statistics (docs/methods.md,
// "PfQ").
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "layers/module.h"
#include "prune/criteria.h"

namespace lowbit::prune {

struct PrunedChannel {
  std::string layer;    // the site: BN of the Conv+BN pair (pfq) or the conv (l1, bn_gamma)
  std::string conv;     // the conv producing the channel
  int64_t channel = 0;  // index in the original layer
  std::string action;   // removed | masked | skipped
  std::string reason;   // why masked or skipped instead of removed
  double score = 0.0;   // criterion score: running variance, L1 norm or |gamma|
  // BN statistics of the channel (NaN without a BN): running variance, gamma, beta, BN output
  // std |gamma| sqrt(var / (var + eps)), and (PfQ) the constant the BN output is replaced by.
  double var = 0, gamma = 0, beta = 0, out_std = 0, constant = 0;
};

struct LayerChange {
  std::string name, type;
  int64_t channels_before = 0, channels_after = 0;  // output channels (Linear: inputs)
  int64_t masked = 0;                               // masked output channels after pruning
  int64_t params_before = 0, params_after = 0;
};

struct PruneReport {
  PruneOptions options;
  std::vector<LayerChange> layers;      // layers whose shape or mask changed
  std::vector<PrunedChannel> channels;  // every channel the criterion picked
  int64_t removed = 0, masked = 0, skipped = 0;
  int64_t params_before = 0, params_after = 0;
  int64_t bytes_before = 0, bytes_after = 0;  // docs/methods.md, "Accounting" model size
  double bops_before = 0, bops_after = 0;     // per sample
  int64_t macs_before = 0, macs_after = 0;

  // Per-layer table, totals and the pruned channels, for the console and logs.
  std::string table() const;
  nlohmann::json to_json() const;
};

// Returns false when there are no more calibration batches; fills x (N, H, W, C) otherwise.
using CalibrationBatches = std::function<bool(Tensor& x)>;

// Prunes `model` in place for inputs of one sample shape {H, W, C}. The model's train/eval
// mode is restored; PfQ works on the float model with BN in eval mode (docs/methods.md, "PfQ").
// With constant = data_mean, `next_calibration_batch` supplies the data (required then). With
// border = exact, the model afterwards only accepts inputs of sample_hwc's spatial size.
PruneReport prune_model(layers::Module& model, const PruneOptions& options, const Shape& sample_hwc,
                        const CalibrationBatches& next_calibration_batch = {});

}  // namespace lowbit::prune
