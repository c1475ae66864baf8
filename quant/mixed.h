// Differentiable mixed precision (docs/methods.md, "Mixed-precision search"): each searched
// Conv2d or Linear computes its output once per candidate weight quantization from the same
// input and mixes them with p = softmax(alpha), one learned logit per candidate:
//   conv followed by a BN, one BN per candidate (default):  y = sum_j p_j BN_j(conv(x, Q_j(W)))
//   shared BN, or no BN after the layer (Linear):          y = layer(x, sum_j p_j Q_j(W))
// The second form is the first with a single BN, since the layer is linear in its weight and the
// p_j sum to one; it costs one pass over the input instead of one per candidate. With separate
// BNs the model's own BN after the conv is bypassed (its fused ReLU stays) and the candidates'
// BNs, copies of it, are the layer's children "bns.j"; alpha is the parameter "alpha" and the
// candidates' quantizers are "candidates.j".
//
// G(alpha), the expected weight size normalised to fp32, is the search's size objective:
//   G = sum_i N_i sum_j p_ij b_j / (32 sum_i N_i)      (N_i weights of layer i, b_j bits)
//
// A search goes: plan_search (which layers, with the BN after each) -> apply_search_plan (the
// layers become MixedConv2d / MixedLinear) -> training of weights and alphas -> finish_search
// (each layer takes its argmax candidate: a plain float layer again, its chosen BN copied into
// the model's BN) with the choices as quantization rules for the QAT stages that follow.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "layers/basic.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "quant/convert.h"
#include "quant/quantizer.h"

namespace lowbit::quant {

// What is shared by the mixed conv and linear layers: the candidates and their logits.
class MixedChoice {
 public:
  // cands: weight quantizers; alpha starts at zeros (J) on `dev`. The owning layer registers
  // holder() as "candidates" and alpha() as "alpha".
  void init(std::vector<QuantizerPtr> cands, Device dev);
  const std::shared_ptr<layers::Sequential>& holder() const { return holder_; }
  int64_t size() const { return int64_t(cands_.size()); }
  Tensor& alpha() { return alpha_; }
  const std::vector<QuantizerPtr>& candidates() const { return cands_; }
  const std::vector<int64_t>& bits() const { return bits_; }
  // softmax(alpha) (J), differentiable in alpha.
  Tensor probabilities() const;
  // The same on the host.
  std::vector<double> probabilities_host() const;
  // argmax_j alpha_j (the first of ties).
  int64_t choice() const;
  // -1: mix the candidates (training); j: use candidate j alone (the all-j model, e.g. the
  // all-8-bit model that sets the search's loss bound).
  void force(int64_t j);
  int64_t forced() const { return forced_; }
  // sum_j p_j Q_j(w), or Q_forced(w).
  Tensor mixed_weight(const Tensor& w);

 private:
  Tensor alpha_;
  std::shared_ptr<layers::Sequential> holder_;
  std::vector<QuantizerPtr> cands_;
  std::vector<int64_t> bits_;
  int64_t forced_ = -1;
};

class MixedConv2d : public layers::Conv2d {
 public:
  // Takes over src's options and tensors. bn: the BatchNorm2d that follows src (or null); with
  // it and !shared_bn the layer carries one copy of it per candidate and bypasses it.
  MixedConv2d(layers::Conv2d& src, std::vector<QuantizerPtr> cands,
              const std::shared_ptr<layers::BatchNorm2d>& bn, bool shared_bn);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "MixedConv2d"; }
  std::string extra_repr() const override;
  MixedChoice& choice() { return choice_; }
  // Candidate j's BN (null with a shared BN or none).
  layers::BatchNorm2d* candidate_bn(int64_t j) const;

 private:
  MixedChoice choice_;
  std::shared_ptr<layers::Sequential> bns_;
};

class MixedLinear : public layers::Linear {
 public:
  MixedLinear(layers::Linear& src, std::vector<QuantizerPtr> cands);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "MixedLinear"; }
  std::string extra_repr() const override;
  MixedChoice& choice() { return choice_; }

 private:
  MixedChoice choice_;
};

// The search's options (YAML search:, docs/config.md).
struct SearchSpec {
  // Candidate weight quantizations (default: binary, XNOR-scaled per output channel; 8-bit
  // symmetric per-tensor min-max).
  std::vector<QuantizerChoice> candidates{{"binary", QuantizerOptions{{"bits", "1"}}},
                                          {"uniform", QuantizerOptions{{"bits", "8"},
                                                                       {"per_channel", "false"},
                                                                       {"observer", "minmax"},
                                                                       {"symmetric", "true"}}}};
  bool shared_bn = false;
  std::vector<std::string> skip;  // globs of layer names left float (not searched)
};

struct MixedLayerPlan {
  std::string name;  // dotted module name
  std::string type;  // Conv2d | Linear
  std::string bn;    // the BatchNorm2d after the conv, "" for none
  int64_t weights = 0;
};

struct SearchPlan {
  std::vector<QuantizerChoice> candidates;  // role and channels are set per layer
  bool shared_bn = false;
  std::vector<MixedLayerPlan> layers;
  std::string str() const;  // JSON (checkpoint metadata "search_plan")
  static SearchPlan parse(const std::string& text);
};

// Which layers are searched (every Conv2d and Linear not skipped, in call order), from one
// recorded forward pass on `probe` (NHWC). InputError when no layer is left, or when a
// candidate is not a valid weight quantizer (naming search.candidates.j).
SearchPlan plan_search(layers::Module& model, const SearchSpec& spec, const Tensor& probe);
// The planned layers become MixedConv2d / MixedLinear (on the model's device).
void apply_search_plan(layers::Module& model, const SearchPlan& plan);

// Every mixed layer of the model, in plan order: {name, choice}.
std::vector<std::pair<std::string, MixedChoice*>> mixed_layers(layers::Module& model);
// The alphas of every mixed layer.
std::vector<Tensor> search_parameters(layers::Module& model);
// Forces candidate j in every layer (-1: mix again).
void force_candidate(layers::Module& model, int64_t j);

// G(alpha) as above, a differentiable scalar.
Tensor expected_size(layers::Module& model, const SearchPlan& plan);

// One layer's result.
struct LayerChoice {
  std::string name, type;
  int64_t weights = 0;
  std::vector<double> probabilities;
  int64_t choice = 0;
  int64_t bits = 0;
  QuantizerChoice quantizer;  // the chosen candidate
};
std::vector<LayerChoice> search_choices(layers::Module& model, const SearchPlan& plan);
// Each mixed layer becomes a plain Conv2d / Linear with its float weight, and the BN of its
// chosen candidate is copied into the model's BN (no longer bypassed). Returns the choices.
std::vector<LayerChoice> finish_search(layers::Module& model, const SearchPlan& plan);
// The choices as quant rules: one per layer, replacing its weight quantizer (replace: true).
std::vector<QuantRule> choice_rules(const std::vector<LayerChoice>& choices);
// The same as a YAML fragment (quant: rules:) another config can include.
std::string choice_rules_yaml(const std::vector<LayerChoice>& choices, const std::string& origin);
// Rules as JSON (checkpoint metadata "search_rules") and back.
std::string rules_str(const std::vector<QuantRule>& rules);
std::vector<QuantRule> parse_rules(const std::string& text);
// A table: layer, weights, probabilities, choice.
std::string choice_table(const std::vector<LayerChoice>& choices);

}  // namespace lowbit::quant
