// ZeroQ (docs/methods.md, "ZeroQ"): data-free post-training quantization.
//   - the distillation loss: how far the per-sample statistics of every BatchNorm2d's input (and
//     of the network input) are from the BN running statistics (N(0, 1) for the input); its
//     gradient with respect to the input batch, through lowbit's autograd, distills the data
//     (the Adam loop lives with the optimizers, train/ptq.cpp);
//   - the sensitivity Omega_i(k): mean KL divergence between the float model's softmax and the
//     softmax with only layer i's weights quantized to k bits, over the distilled data;
//   - the bit allocation: the exact dynamic programme over layers and model bytes, which yields
//     the whole Pareto frontier (least total sensitivity for every size) in one pass.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "layers/module.h"

namespace lowbit::quant {

// Number of BatchNorm2d layers that track running statistics (ZeroQ needs at least one).
int64_t count_batchnorm(layers::Module& model);

// InputError unless the model has a BatchNorm2d with running statistics (ZeroQ distils from
// them); `what` names the caller's setting ("ptq.calibration: zeroq").
void require_batchnorm(layers::Module& model, const std::string& what);

// The ZeroQ distillation loss of x (NHWC) through `model` (run as it is; call eval() first), a
// differentiable 0-d tensor: sum over BN layers l and over the input (l = 0) of
//   ( ||mu_l - m_l||^2 + ||sqrt(var_l + 1e-6) - d_l||^2 ) / N
// with m, d the per-sample, per-channel mean and standard deviation (unbiased variance + 1e-6)
// over (H, W) of the BN's input, mu_l, var_l its running statistics (0 and 1 for the input).
// *logits receives the model output when not null.
Tensor zeroq_bn_loss(layers::Module& model, const Tensor& x, Tensor* logits = nullptr);

// Per-sample, per-channel (mean, std) of an NHWC tensor over (H, W), as the loss computes them:
// (N, C) each; for a 1x1 map (no variance over one pixel) the batch's statistics, (1, C).
std::pair<Tensor, Tensor> per_sample_stats(const Tensor& x);

// Mean over the batch of KL(softmax(p) || softmax(q)) of two logits tensors (N, classes).
double mean_kl_divergence(const Tensor& logits_p, const Tensor& logits_q);

// The quantizable layers of a model (Conv2d and Linear, in module order) with their weight
// element counts N_i.
struct WeightLayer {
  std::string name;
  int64_t weights = 0;
};
std::vector<WeightLayer> weight_layers(layers::Module& model);

// Omega_i(k) for every weight layer i and every k of `bits` (32 = float: zero by definition and
// computed as such), on `data` (NHWC): layer i's weights quantized per output channel,
// asymmetric min-max (ZeroQ's weight quantizer), everything else float, model in eval mode.
struct Sensitivity {
  std::vector<WeightLayer> layers;
  std::vector<int64_t> bits;
  std::vector<std::vector<double>> omega;  // [layer][bit index]
  std::string table() const;
};
Sensitivity zeroq_sensitivity(layers::Module& model, const Tensor& data,
                              const std::vector<int64_t>& bits);

// Bytes of N weights at b bits, packed: ceil(N b / 8) (docs/methods.md, "Accounting").
int64_t packed_bytes(int64_t n, int64_t bits);

// One point of the frontier: a bit width index per layer, its bytes and total cost.
struct Allocation {
  std::vector<int64_t> choice;  // index into the options of each layer
  int64_t bytes = 0;
  double cost = 0.0;
};

// The exact Pareto frontier of min sum_i cost[i][choice_i] over sum_i size[i][choice_i]:
// every allocation no other beats in both bytes and cost (strictly smaller cost than every
// smaller allocation), sorted by bytes. Dynamic programme over layers and total size in units of
// the greatest common divisor of the sizes. size[i][j] > 0.
std::vector<Allocation> pareto_frontier(const std::vector<std::vector<int64_t>>& size,
                                        const std::vector<std::vector<double>>& cost);
// The frontier point with the most bytes within `budget` (the least cost there). InputError
// when even the smallest allocation exceeds it.
Allocation allocate_within(const std::vector<Allocation>& frontier, int64_t budget);

// A size budget: "Kbit" (K in 1..32: the bytes of every weight layer at K bits) or a number of
// bytes. InputError naming the value otherwise.
int64_t parse_size_budget(const std::string& text, const std::vector<WeightLayer>& layers);

}  // namespace lowbit::quant
