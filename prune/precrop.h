// PreCropping: structured pruning at initialization (docs/methods.md, "PreCropping"). The
// accuracy of a network pruned at initialization depends mainly on how many weights each layer
// keeps, not on which; so PreCropping takes the layer densities of a pruning-at-initialization
// score and crops whole channels to match them, giving a narrower dense network to train from
// scratch. Steps:
//   1. layer densities p_l: SynFlow (default; iterative, data-free) or SNIP (one batch of data)
//      scores of every Conv2d and Linear weight, a global threshold to the budget's density;
//   2. channel keep ratio rho_g = sqrt(p_l) for the channel group g that dense conv l creates
//      (prune/graph.h: depthwise convs and BNs follow their input's group; a residual group takes
//      the largest ratio of its convs; the input's and the classifier's channels are not groups
//      that can change), K'_g = max(1, round(min(1, t rho_g) K_g)), with one factor t for the
//      whole network found by bisection so that the cropped network meets the budget (parameters
//      or MACs);
//   3. the first K'_g channels are kept (at initialization channels are exchangeable), the
//      cropped network is re-initialised with the layers' default init for their new fan-in.
// Baselines (method): `pai` keeps the full network and masks the weights the score drops
// (unstructured pruning at initialization at the same layer densities; the masks stay through
// training, layers/conv2d.h and layers/basic.h), `random` crops channels with random keep ratios
// scaled to the same budget.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "layers/module.h"

namespace lowbit::prune {

struct PrecropOptions {
  std::string method = "precrop";      // precrop | pai | random
  std::string score = "synflow";       // synflow | snip
  std::string budget_kind = "params";  // params | flops (MACs)
  double budget = 0.5;                 // fraction of the full network kept, in (0, 1]
  int64_t iterations = 100;            // SynFlow's pruning rounds
  int64_t snip_batches = 1;            // SNIP: training batches the gradient is summed over
  uint64_t seed = 0;                   // method random: the keep ratios' generator
  // Throws InputError naming the key ("budget: 0 is out of range (0, 1]", "score: 'x' ...").
  void validate() const;
};

// A prunable weight: every Conv2d's and Linear's, by the layer's dotted name.
struct ScoredLayer {
  std::string name;
  Tensor score;  // |w * dR/dw| (SynFlow) or |w * dL/dw| (SNIP), the weight's shape, f32 CPU
  Tensor mask;   // 1 kept, 0 pruned, the weight's shape, f32 CPU
  int64_t kept = 0, total = 0;
  double density() const { return total > 0 ? double(kept) / double(total) : 1.0; }
};

// SynFlow (Tanaka et al.): `iterations` rounds; round k scores R = sum of the output for an
// all-ones input through the network with every weight |w| * mask (biases, BN shifts and running
// means zero, eval mode), score = |w * mask * dR/dw|, and keeps the top density^(k/iterations)
// of all weights (global threshold). The scores are exact up to one positive factor per round:
// the input and the output gradient are scaled so that fp32 does not overflow on deep nets.
// The model's values and mode are restored.
std::vector<ScoredLayer> synflow_scores(layers::Module& model, const Shape& sample_hwc,
                                        double density, int64_t iterations);
// SNIP (Lee et al.): score = |w * dL/dw| summed over the calls of `loss` (each returns the loss of
// one training batch through `model`), then the top `density` of all weights kept.
std::vector<ScoredLayer> snip_scores(layers::Module& model, double density,
                                     const std::function<Tensor(layers::Module&)>& loss,
                                     int64_t batches);

struct PrecropLayer {
  std::string name;
  std::string type;      // Conv2d | Linear
  double density = 1.0;  // p_l from the score
  int64_t out_before = 0, out_after = 0;
  int64_t in_before = 0, in_after = 0;
};

struct PrecropReport {
  PrecropOptions options;
  double scale = 1.0;                           // t (precrop, random)
  int64_t params_before = 0, params_after = 0;  // params_after: nonzero weights for pai
  int64_t macs_before = 0, macs_after = 0;      // per sample (pai: the dense network's)
  std::vector<PrecropLayer> layers;
  std::string table() const;
  nlohmann::json to_json() const;
};

// What PreCropping decided, before it touches the model: the kept channel count of every group
// of the channel graph traced from the model (groups not listed keep their width), or the masks
// of method pai (by layer name). Every rank of a distributed run must apply the same plan.
struct PrecropPlan {
  std::map<int, int64_t> kept;          // group id -> channels kept
  std::map<std::string, Tensor> masks;  // pai: layer name -> mask (the weight's shape)
  PrecropReport report;
};

// Scores `model` (at initialization), then plans the crop. `loss` is needed for score snip.
PrecropPlan plan_precrop(layers::Module& model, const PrecropOptions& options,
                         const Shape& sample_hwc,
                         const std::function<Tensor(layers::Module&)>& loss = {});
// Crops (and re-initialises) or masks `model` as planned; the plan must come from this model.
// Optimizers built before must be rebuilt.
void apply_precrop(layers::Module& model, const PrecropPlan& plan, const Shape& sample_hwc);

// The default init of every Conv2d, Linear and BatchNorm2d for its current shape (PyTorch's:
// U(+-1/sqrt(fan_in)) weights and biases, BN gamma 1, beta 0, running statistics 0 and 1).
void reinitialize(layers::Module& model);

}  // namespace lowbit::prune
