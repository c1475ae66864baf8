// Experiment configs: one YAML file describes a run (data, model, optional quant and prune
// sections, and a list of stages). Parsing validates every key: unknown keys, wrong types and
// out-of-range values throw lowbit::InputError naming the file, the key path, the value and
// what is allowed. docs/config.md documents every key; keep the two in step.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "prune/criteria.h"
#include "prune/precrop.h"
#include "quant/convert.h"
#include "quant/mixed.h"

namespace YAML {
class Node;
}

namespace lowbit::train {

struct DataConfig {
  std::string dataset =
      "fashion_mnist";  // fashion_mnist | mnist | cifar10 | cifar100 | imagenet | synthetic
  std::string root;     // dataset folder ("" = the dataset's default)
  int64_t batch_size = 128;
  int64_t eval_batch_size = 256;
  int64_t num_workers = 2;
  int64_t max_train_samples = 0;  // 0 = all; a prefix of the training set (smoke tests)
  int64_t max_test_samples = 0;
  // Augmentation (training only).
  int64_t random_crop_padding = 0;  // 0 = off
  bool hflip = false;
  bool random_resized_crop = false;  // ImageNet recipe
  bool scaled_decode = true;         // random_resized_crop decodes its window of the JPEG alone
  int64_t image_size = 0;            // output size of (random resized / centre) crops; 0 = native
  int64_t resize = 0;                // eval: resize shorter side to this before the centre crop
  std::vector<double> mean;          // per channel, on [0, 1] pixels; empty = dataset default
  std::vector<double> std;
  // synthetic dataset
  int64_t synthetic_size = 1024;
  int64_t synthetic_hw = 32;
  int64_t synthetic_channels = 3;
  int64_t synthetic_classes = 10;
};

struct ModelConfig {
  std::string name = "resnet20";
  int64_t num_classes = 0;  // 0 = the dataset's
  int64_t in_channels = 0;  // 0 = the dataset's
  int64_t input_size = 0;   // 0 = the dataset's (after crops)
  double width_mult = 1.0;
  std::string shortcut = "A";
  double dropout = 0.2;
};

struct OptimizerConfig {
  std::string name = "sgd";  // sgd | adamw
  double lr = 0.1;
  double momentum = 0.9;
  bool nesterov = false;
  double weight_decay = 5e-4;
  bool no_decay_bn_bias = true;  // 1-D parameters (BN, biases) get no weight decay
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
};

struct ScheduleConfig {
  std::string name = "cosine";  // constant | step | multistep | cosine | onecycle
  double warmup_epochs = 0.0;   // linear warm-up over this many epochs (fractions allowed)
  double warmup_start_factor = 0.1;
  double step_epochs = 30;         // step
  std::vector<double> milestones;  // multistep, in epochs
  double gamma = 0.1;              // step, multistep
  double eta_min = 0.0;            // cosine
  double pct_start = 0.3;          // onecycle
  double div_factor = 25.0, final_div_factor = 1e4;
};

struct StageConfig {
  std::string name;
  std::string kind =
      "train";  // a stage_kind_registry() name: train | qat | prune | search | ptq | precrop
  int64_t epochs = 1;
  // qat: what is quantized in this stage: weights (activations float) | all (weights and inputs).
  std::string quantize = "all";
  // Weights loaded at the start of the stage (a checkpoint or weights file, PyTorch layout), e.g.
  // a float pretrained model for QAT; "" = continue from the previous stage.
  std::string init;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  double label_smoothing = 0.0;
  double clip_grad_norm = 0.0;  // 0 = off
  // Micro-batches per optimizer step: gradients of k batches are summed (each batch's loss
  // divided by k), then one step (and, distributed, one all-reduce) follows.
  int64_t accumulate_steps = 1;
  // precrop: PreCropping and its baselines at the stage's start (prune/precrop.h).
  prune::PrecropOptions precrop;
};

// Data-parallel training (docs/distributed.md); read only when the run has several ranks.
struct DistConfig {
  double bucket_mb = 25.0;  // gradient all-reduce buckets (MB = 2^20 bytes)
  double timeout_s =
      0.0;  // a collective waiting longer ends the job; 0: LOWBIT_DIST_TIMEOUT_S or 300
  bool sync_bn = false;  // BatchNorm batch statistics over the global batch (SyncBN)
};

// Post-training quantization (lowbit ptq and stages of kind ptq; docs/ptq.md).
struct ZeroqConfig {
  int64_t iterations = 500;       // Adam steps on the input batch
  int64_t batch_size = 32;        // distilled images per batch
  int64_t batches = 1;            // distilled batches
  double lr = 0.5;                // Adam, ReduceLROnPlateau on the loss (factor 0.1, patience 100)
  std::string init = "gaussian";  // gaussian (N(0, 1), the paper) | code (the reference code's)
};

struct PtqConfig {
  std::string calibration = "train";  // train | zeroq | noise
  int64_t calibration_images = 100;   // train and noise (zeroq: zeroq.batch_size * batches)
  int64_t weight_bits = 8, activation_bits = 8;
  std::string weight_observer = "minmax";      // minmax | percentile | mse | kl
  std::string activation_observer = "minmax";  // minmax | percentile | mse | kl | ema
  // asymmetric | symmetric (signed codes everywhere) | symmetric_unsigned (unsigned codes for
  // non-negative inputs) | pow2 (symmetric, power-of-two scales)
  std::string scheme = "asymmetric";
  bool per_channel = true;                   // weights
  std::string first_last = "8bit";           // first conv and last layer: 8bit | float | same
  std::string budget;                        // ZeroQ mixed precision: "" (off) | Kbit | bytes
  std::vector<int64_t> mp_bits = {2, 4, 8};  // the bit widths the allocation chooses from
  std::string search = "none";               // none | quantune | grid | random
  int64_t search_budget = 0;                 // measurements (0: grid the whole space, others 64)
  int64_t search_images = 1000;              // test images each measurement evaluates
  std::string fix;                           // search: knobs held fixed, "knob=value,knob=value"
  ZeroqConfig zeroq;
};

// The mixed-precision search (stage kind search; quant/mixed.h, docs/methods.md).
struct SearchConfig {
  quant::SearchSpec spec;  // candidates, shared_bn, skip
  // The validation-loss bound: theta (> 0) when given, else theta_factor times the validation
  // loss of the model with every layer at its widest candidate (measured at the search's start
  // over theta_batches validation batches).
  double theta = 0.0;
  double theta_factor = 1.1;
  int64_t theta_batches = 20;
  double val_fraction = 0.5;  // of the training set, for the alpha steps (the rest trains w)
  int64_t max_samples = 0;    // the search uses this many training images (0: all), split as above
  int64_t stable_epochs = 5;  // the search ends when every layer's argmax held this many epochs
  OptimizerConfig alpha_optimizer = [] {
    OptimizerConfig o;
    o.name = "adamw";
    o.lr = 3e-4;
    o.beta1 = 0.5;
    o.beta2 = 0.999;
    o.weight_decay = 1e-3;
    return o;
  }();
};

struct ExperimentConfig {
  std::string file;  // where it came from, for messages
  std::string name = "experiment";
  uint64_t seed = 0;
  std::string device = "auto";  // auto | cpu | cuda | cuda:N
  int64_t log_interval = 50;    // steps between log records
  bool tensorboard = true;      // also write TensorBoard event files into the run folder
  int64_t threads = 0;          // CPU threads (0 = OpenMP's default)
  std::string amp = "off";      // mixed precision: off | bf16 | f16 (core/autocast.h)
  // checkpoint_every: also checkpoint inside epochs, every N optimizer steps or M minutes ("500",
  // "500 steps", "15 min"); 0 / "" = at epoch ends only.
  int64_t checkpoint_every_steps = 0;
  double checkpoint_every_minutes = 0.0;
  std::string cpu_conv = "auto";  // CPU 3x3 convolutions: auto | direct | winograd | winograd_f2 |
                                  // winograd_f4 (layers/conv2d.h)
  DataConfig data;
  ModelConfig model;
  DistConfig dist;
  std::vector<StageConfig> stages;
  bool has_quant = false;  // a quant: section was given (needed by qat stages)
  quant::QuantConfig quant;
  bool has_prune = false;  // a prune: section was given (needed by prune stages)
  prune::PruneOptions prune;
  int64_t prune_calibration_batches = 8;  // prune.calibration_batches (constant: data_mean)
  PtqConfig ptq;                          // the ptq: section (defaults without one)
  SearchConfig search;                    // search: (defaults when absent)
  std::string raw_yaml;                   // the config after --set overrides, for summary.json
};

// Parses and validates `path`, applying `overrides` ("key.path=value", YAML value syntax;
// sequence items by index: "stages.0.epochs=2") first. Throws InputError naming the problem.
ExperimentConfig load_config(const std::string& path,
                             const std::vector<std::string>& overrides = {});
ExperimentConfig parse_config(const std::string& yaml_text, const std::string& file_label,
                              const std::vector<std::string>& overrides = {});

// The keys whose values differ between two configs (YAML texts), one "key.path: a -> b" line
// each, sorted; keys present in one only show "(absent)". For --resume with a changed config.
std::vector<std::string> config_differences(const std::string& before, const std::string& after);

}  // namespace lowbit::train
