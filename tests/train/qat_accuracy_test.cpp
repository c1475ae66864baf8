// Issue 6's accuracy check on real data within the CI budget: the small depthwise-separable net
// of docs/methods.md, "Mixed-precision search" on Fashion-MNIST, float vs QAT from that float
// model: W8A8 within 0.5 points, W4A4 within 2 points (LSQ, per-channel weights, first/last layer 8
// bit, BN folded). A prefix of the training set keeps it to a few minutes on 2 cores; the test set
// is the same for all.
#include <gmock/gmock.h>

#include <filesystem>

#include "data/dataset.h"
#include "data/file_io.h"
#include "tests/common/test_util.h"
#include "train/config.h"
#include "train/trainer.h"

namespace lowbit::train {
namespace {

namespace fs = std::filesystem;

const char* kData =
    "data: {dataset: fashion_mnist, batch_size: 128, eval_batch_size: 1000, num_workers: 2,\n"
    "       max_train_samples: 20000, max_test_samples: 5000}\n"
    "model: {name: dsnet}\n"
    "seed: 1\n"
    "device: cpu\n"
    "log_interval: 1000\n";

RunSummary run(const std::string& yaml, const fs::path& out) {
  TrainerOptions o;
  o.out_dir = out.string();
  o.progress = false;
  return run_training(parse_config(yaml, out.filename().string() + ".yaml"), o);
}

// QAT from the float model, 1 epoch. The recipes: W8A8 is PyTorch's default QAT (uniform
// fake-quant, per-channel min-max weights, EMA activations); W4A4 has LSQ activations and uniform
// per-channel weights whose range is the MSE-optimal clip of the initial weights. On this net
// LSQ's learned per-channel weight step is unstable: its depthwise filters have 9 weights per
// step, so g = 1/sqrt(9 Qp) is large and a 1-epoch fine-tune loses 3-4 points at W8A8 and W4A4
// (docs/quantization.md, "Choosing a weight quantizer").
std::string qat(const std::string& weight, const std::string& activation, const fs::path& init) {
  return std::string(kData) + "name: qat\nquant:\n  weight: " + weight +
         "\n  activation: " + activation +
         "\nstages:\n  - {name: qat, kind: qat, epochs: 1, init: " + init.string() +
         ", optimizer: {lr: 0.01, nesterov: true, weight_decay: 5.0e-5}, schedule: {name: "
         "cosine}}\n";
}

TEST(QatAccuracy, DsNetFashionMnistW8A8AndW4A4NearFloat) {
  const std::string dir = data::fashion_mnist_dir("");
  if (data::first_existing({dir + "/train-images-idx3-ubyte.gz", dir + "/train-images-idx3-ubyte"})
          .empty()) {
    GTEST_SKIP() << "Fashion-MNIST not found in " << dir << " (scripts/setup.sh installs it)";
  }
  const fs::path root =
      fs::temp_directory_path() / ("lowbit_qat_accuracy_" + std::to_string(::getpid()));
  fs::remove_all(root);
  const RunSummary f = run(
      std::string(kData) +
          "name: float\nstages:\n  - {name: float, epochs: 3, optimizer: {lr: 0.1, nesterov: true,"
          " weight_decay: 5.0e-5}, schedule: {name: onecycle, pct_start: 0.25}}\n",
      root / "float");
  // Issue 8: the same float training under `amp: bf16` (bf16 convolutions, f32 master weights).
  const RunSummary fb = run(
      std::string(kData) +
          "name: float_bf16\namp: bf16\nstages:\n  - {name: float, epochs: 3, optimizer: {lr: 0.1,"
          " nesterov: true, weight_decay: 5.0e-5}, schedule: {name: onecycle, pct_start: 0.25}}\n",
      root / "float_bf16");
  const fs::path init = root / "float" / "model.safetensors";
  const RunSummary q8 = run(qat("{quantizer: uniform, per_channel: true, bits: 8}",
                                "{quantizer: uniform, bits: 8}", init),
                            root / "w8a8");
  const RunSummary q4 = run(qat("{quantizer: uniform, per_channel: true, bits: 4, observer: mse}",
                                "{quantizer: lsq, bits: 4}", init),
                            root / "w4a4");
  std::printf(
      "dsnet Fashion-MNIST top-1: float %.2f%%, float amp bf16 %.2f%%, W8A8 %.2f%%, W4A4 %.2f%%\n",
      100 * f.test.top1, 100 * fb.test.top1, 100 * q8.test.top1, 100 * q4.test.top1);
  EXPECT_GT(f.test.top1, 0.75);  // the float model learned something real
  // bf16 training follows f32 (measured -0.4 to -0.5 points here; the 0.3-point bound is
  // checked on ResNet-20 with the full test set, docs/results.md).
  EXPECT_GE(fb.test.top1, f.test.top1 - 0.01);
  EXPECT_GE(q8.test.top1, f.test.top1 - 0.005);
  EXPECT_GE(q4.test.top1, f.test.top1 - 0.02);
  EXPECT_LT(q4.model_bytes, f.model_bytes / 4);
  fs::remove_all(root);
}

}  // namespace
}  // namespace lowbit::train
