// The trainer end to end on a small synthetic dataset: outputs, resume bit for bit, and the
// errors a user meets (bad config values, missing data, corrupt checkpoints).
#include "train/trainer.h"

#include <gmock/gmock.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/common/test_util.h"
#include "tests/train/train_test_util.h"
#include "train/config.h"
#include "train/safetensors.h"

namespace lowbit::train {
namespace {

namespace fs = std::filesystem;
using testing_util::quiet;
fs::path fresh_dir(const std::string& name) {
  return testing_util::fresh_dir("trainer_test", name);
}
using ::testing::HasSubstr;

const char* kSynthetic = R"(
name: tiny
seed: 3
device: cpu
log_interval: 2
data: {dataset: synthetic, synthetic_size: 96, synthetic_hw: 8, synthetic_channels: 1,
       synthetic_classes: 4, batch_size: 16, eval_batch_size: 32, num_workers: 2}
model: {name: dsnet}
stages:
  - name: a
    epochs: 2
    optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
    schedule: {name: cosine}
  - name: b
    epochs: 1
    optimizer: {name: adamw, lr: 0.001, weight_decay: 0.01}
    schedule: {name: constant}
)";

TEST(Trainer, RunsStagesAndWritesOutputs) {
  ExperimentConfig cfg = parse_config(kSynthetic, "tiny.yaml");
  fs::path out = fresh_dir("outputs");
  RunSummary s = run_training(cfg, quiet(out));
  EXPECT_TRUE(s.finished);
  EXPECT_EQ(s.epochs_done, 3);
  EXPECT_EQ(s.device, "cpu");
  EXPECT_GT(s.params, 0);
  for (const char* f : {"summary.json", "log.jsonl", "checkpoint.safetensors", "model.safetensors",
                        "config.yaml"}) {
    EXPECT_TRUE(fs::exists(out / f)) << f;
  }
  std::ifstream sj(out / "summary.json");
  nlohmann::json j = nlohmann::json::parse(sj);
  for (const char* k : {"test_top1", "test_top5", "params", "model_bytes", "wall_s", "images_per_s",
                        "device", "config", "git_commit"}) {
    EXPECT_TRUE(j.contains(k)) << k;
  }
  EXPECT_EQ(j["params"].get<int64_t>(), s.params);
  int epochs = 0, steps = 0;
  std::ifstream log(out / "log.jsonl");
  for (std::string line; std::getline(log, line);) {
    nlohmann::json r = nlohmann::json::parse(line);
    if (r["kind"] == "epoch") ++epochs;
    if (r["kind"] == "step") ++steps;
  }
  EXPECT_EQ(epochs, 3);
  EXPECT_GE(steps, 3 * 3);  // 6 steps an epoch, a record every 2
  // The final weights load in a fresh evaluation with the same accuracy.
  EvalResult ev = run_evaluation(cfg, (out / "model.safetensors").string());
  EXPECT_NEAR(ev.top1, s.test.top1, 1e-12);
  fs::remove_all(out);
}

TEST(Trainer, ResumeEndsWithTheSameWeights) {
  ExperimentConfig cfg = parse_config(kSynthetic, "tiny.yaml");
  fs::path full = fresh_dir("full"), parts = fresh_dir("parts");
  run_training(cfg, quiet(full));
  // Interrupted after 1 epoch (inside stage a), then again after the stage boundary.
  TrainerOptions o = quiet(parts);
  o.stop_after_epochs = 1;
  EXPECT_FALSE(run_training(cfg, o).finished);
  o.resume = true;
  o.stop_after_epochs = 2;
  EXPECT_FALSE(run_training(cfg, o).finished);
  o.stop_after_epochs = -1;
  EXPECT_TRUE(run_training(cfg, o).finished);
  auto a = load_safetensors((full / "model.safetensors").string()).tensors;
  auto b = load_safetensors((parts / "model.safetensors").string()).tensors;
  ASSERT_EQ(a.size(), b.size());
  for (auto& [k, v] : a) {
    ASSERT_TRUE(b.count(k)) << k;
    EXPECT_TENSOR_NEAR(b.at(k), v, 0, 0) << k;
  }
  fs::remove_all(full);
  fs::remove_all(parts);
}

// Float, then QAT with quantized weights, then weights and activations (the PfQ workflow's last
// two stages), with BN and quantizer freezing inside the last stage.
const char* kQat = R"(
name: tinyqat
seed: 5
device: cpu
log_interval: 2
data: {dataset: synthetic, synthetic_size: 96, synthetic_hw: 8, synthetic_channels: 1,
       synthetic_classes: 4, batch_size: 16, eval_batch_size: 32, num_workers: 2}
model: {name: dsnet}
quant:
  weight: {quantizer: lsq, bits: 4, per_channel: true}
  activation: {quantizer: lsq, bits: 4}
  freeze_bn_epoch: 1
  freeze_quantizers_epoch: 1
  calibration_batches: 2
stages:
  - {name: float, epochs: 1, optimizer: {lr: 0.05}}
  - {name: qat_w, kind: qat, quantize: weights, epochs: 1, optimizer: {lr: 0.01}}
  - {name: qat_wa, kind: qat, epochs: 2, optimizer: {lr: 0.01}}
)";

TEST(Trainer, QatStagesQuantizeResumeAndEvaluate) {
  ExperimentConfig cfg = parse_config(kQat, "tinyqat.yaml");
  fs::path full = fresh_dir("qat_full"), parts = fresh_dir("qat_parts");
  RunSummary s = run_training(cfg, quiet(full));
  ASSERT_TRUE(s.finished);
  std::ifstream sj(full / "summary.json");
  nlohmann::json j = nlohmann::json::parse(sj);
  EXPECT_GT(j["compression_ratio"].get<double>(), 4.0);  // 4-bit weights, 8-bit first/last
  EXPECT_LT(j["model_bytes"].get<int64_t>(), j["float_bytes"].get<int64_t>() / 3);
  bool any_qconv = false;
  for (auto& l : j["account"]["layers"]) any_qconv |= l["type"] == "QConv2d" && l["act_bits"] == 4;
  EXPECT_TRUE(any_qconv);
  auto final_weights = load_safetensors((full / "model.safetensors").string());
  EXPECT_TRUE(final_weights.metadata.count("quant_plan"));
  bool has_scale = false;
  for (auto& [k, v] : final_weights.tensors)
    has_scale |= k.find("input_quantizer.scale") != std::string::npos;
  EXPECT_TRUE(has_scale);
  // The quantized model evaluates from its weights file alone (the plan is in its metadata).
  EXPECT_NEAR(run_evaluation(cfg, (full / "model.safetensors").string()).top1, s.test.top1, 1e-12);

  // Interrupted inside the float stage, at the float -> qat boundary, and inside the last stage.
  TrainerOptions o = quiet(parts);
  for (int64_t stop : {1, 2, 3}) {
    o.stop_after_epochs = stop;
    EXPECT_FALSE(run_training(cfg, o).finished);
    o.resume = true;
  }
  o.stop_after_epochs = -1;
  EXPECT_TRUE(run_training(cfg, o).finished);
  auto a = final_weights.tensors;
  auto b = load_safetensors((parts / "model.safetensors").string()).tensors;
  ASSERT_EQ(a.size(), b.size());
  for (auto& [k, v] : a) {
    ASSERT_TRUE(b.count(k)) << k;
    EXPECT_TENSOR_NEAR(b.at(k), v, 0, 0) << k;
  }
  fs::remove_all(full);
  fs::remove_all(parts);
}

TEST(Trainer, QatStageFromAFloatInitFile) {
  ExperimentConfig pre = parse_config(kSynthetic, "tiny.yaml", {"stages=[{name: a, epochs: 1}]"});
  fs::path p = fresh_dir("pre"), q = fresh_dir("qat_init");
  run_training(pre, quiet(p));
  const std::string init = (p / "model.safetensors").string();
  ExperimentConfig cfg = parse_config(
      kQat, "tinyqat.yaml", {"stages=[{name: q, kind: qat, epochs: 1, init: " + init + "}]"});
  RunSummary s = run_training(cfg, quiet(q));
  EXPECT_TRUE(s.finished);
  ExperimentConfig bad = parse_config(
      kQat, "tinyqat.yaml", {"stages=[{name: q, kind: qat, init: /nonexistent.safetensors}]"});
  EXPECT_THAT(testing::error_of([&] { run_training(bad, quiet(q)); }),
              HasSubstr("/nonexistent.safetensors"));
  fs::remove_all(p);
  fs::remove_all(q);
}

// Pretrain, prune (L1 at 25%: shapes change), then QAT: reports are written and the run resumes
// bit for bit across the shape change (the checkpoint's "pruned" metadata rebuilds the shapes).
// Runs `cfg` stopped after epoch 1 and 2 and resumed each time into `parts`: the final model
// must equal `want` (an uninterrupted run's) tensor for tensor.
void expect_resumed_run_matches(const ExperimentConfig& cfg, const fs::path& parts,
                                const std::map<std::string, Tensor>& want) {
  TrainerOptions o = quiet(parts);
  for (int64_t stop : {1, 2}) {
    o.stop_after_epochs = stop;
    EXPECT_FALSE(run_training(cfg, o).finished);
    o.resume = true;
  }
  o.stop_after_epochs = -1;
  EXPECT_TRUE(run_training(cfg, o).finished);
  auto b = load_safetensors((parts / "model.safetensors").string()).tensors;
  ASSERT_EQ(want.size(), b.size());
  for (auto& [k, v] : want) {
    ASSERT_TRUE(b.count(k)) << k;
    EXPECT_TENSOR_NEAR(b.at(k), v, 0, 0) << k;
  }
}

TEST(Trainer, PruneStageThenQatResumes) {
  const std::string yaml = std::string(kQat) + "prune: {method: l1, ratio: 0.25}\n";
  ExperimentConfig cfg =
      parse_config(yaml, "tinyprune.yaml",
                   {"stages=[{name: float, epochs: 1}, {name: prune, kind: prune, epochs: 1},"
                    " {name: q, kind: qat, epochs: 1}]"});
  fs::path full = fresh_dir("prune_full"), parts = fresh_dir("prune_parts");
  RunSummary s = run_training(cfg, quiet(full));
  ASSERT_TRUE(s.finished);
  EXPECT_TRUE(fs::exists(full / "prune_report_prune.txt"));
  std::ifstream rj(full / "prune_report_prune.json");
  nlohmann::json r = nlohmann::json::parse(rj);
  EXPECT_LT(r["params_after"].get<int64_t>(), r["params_before"].get<int64_t>());
  auto fw = load_safetensors((full / "model.safetensors").string());
  EXPECT_EQ(fw.metadata.at("pruned"), "1");
  EXPECT_NEAR(run_evaluation(cfg, (full / "model.safetensors").string()).top1, s.test.top1, 1e-12);
  expect_resumed_run_matches(cfg, parts, fw.tensors);
  EXPECT_THAT(testing::error_of(
                  [] { parse_config(kQat, "tinyqat.yaml", {"stages=[{name: p, kind: prune}]"}); }),
              HasSubstr("prune needs a top-level prune: section"));
  fs::remove_all(full);
  fs::remove_all(parts);
}

// kind: precrop (prune/precrop.h). pai: the score's masks stay applied through SGD steps with
// momentum and weight decay and AdamW steps (the masked weights are exactly zero in the saved
// model, the others trained), survive --resume and lowbit eval; precrop: a narrower dense model.
TEST(Trainer, PrecropStageMasksStayThroughOptimizerStepsAndCropsShrink) {
  const std::string stages =
      "stages=[{name: crop, kind: precrop, epochs: 2, precrop: {method: pai, budget: 0.2, "
      "iterations: 5}, optimizer: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.01}},"
      " {name: b, epochs: 1, optimizer: {name: adamw, lr: 0.001, weight_decay: 0.01}}]";
  ExperimentConfig cfg = parse_config(kSynthetic, "tinypai.yaml", {stages});
  fs::path full = fresh_dir("pai_full"), parts = fresh_dir("pai_parts");
  RunSummary s = run_training(cfg, quiet(full));
  ASSERT_TRUE(s.finished);
  auto f = load_safetensors((full / "model.safetensors").string());
  int masked = 0, trained = 0;
  for (auto& [k, mask] : f.tensors) {
    const size_t at = k.rfind(".weight_mask");
    if (at == std::string::npos) continue;
    const std::vector<float> m = mask.to_vector<float>();
    const std::vector<float> w = f.tensors.at(k.substr(0, at) + ".weight").to_vector<float>();
    ASSERT_EQ(m.size(), w.size()) << k;
    for (size_t i = 0; i < m.size(); ++i) {
      if (m[i] == 0.0f) {
        ++masked;
        ASSERT_EQ(w[i], 0.0f) << k << " element " << i;
      } else {
        trained += w[i] != 0.0f;
      }
    }
  }
  EXPECT_GT(masked, 0);
  EXPECT_GT(trained, 0);
  std::ifstream sj(full / "summary.json");
  nlohmann::json sum = nlohmann::json::parse(sj);
  EXPECT_EQ(sum["stages"]["crop"]["kind"], "precrop");
  EXPECT_EQ(sum["stages"]["crop"]["method"], "pai");
  bool logged = false;  // the report is a log.jsonl record too
  std::ifstream lj(full / "log.jsonl");
  for (std::string line; std::getline(lj, line);) {
    const nlohmann::json rec = nlohmann::json::parse(line);
    if (rec.value("kind", "") == "precrop") {
      EXPECT_EQ(rec["stage"], "crop");
      EXPECT_EQ(rec["params_after"], sum["stages"]["crop"]["params_after"]);
      logged = true;
    }
  }
  EXPECT_TRUE(logged);
  EXPECT_LT(sum["nonzero_params"].get<int64_t>(), sum["params"].get<int64_t>());
  EXPECT_TRUE(fs::exists(full / "precrop_report_crop.json"));
  EXPECT_NEAR(run_evaluation(cfg, (full / "model.safetensors").string()).top1, s.test.top1, 1e-12);
  // Stopped after each epoch and resumed: the same weights, masks included, and the report.
  expect_resumed_run_matches(cfg, parts, f.tensors);
  std::ifstream psj(parts / "summary.json");
  EXPECT_EQ(nlohmann::json::parse(psj)["stages"]["crop"], sum["stages"]["crop"]);
  // precrop: a dense model with fewer parameters.
  ExperimentConfig crop = parse_config(
      kSynthetic, "tinycrop.yaml",
      {"stages=[{name: crop, kind: precrop, epochs: 1, precrop: {budget: 0.5, iterations: 5}}]"});
  fs::path cdir = fresh_dir("crop");
  RunSummary c = run_training(crop, quiet(cdir));
  ASSERT_TRUE(c.finished);
  EXPECT_LT(c.params, s.params);
  EXPECT_NEAR(run_evaluation(crop, (cdir / "model.safetensors").string()).top1, c.test.top1, 1e-12);
  fs::remove_all(full);
  fs::remove_all(parts);
  fs::remove_all(cdir);
}

TEST(Trainer, DivergedLossStopsTheRunWithAClearError) {
  // Inputs normalised by a std of 1e-39 overflow f32 (|x - 0.5| / 1e-39 > 3.4e38): infinite
  // pixels of both signs make the first convolution NaN and the loss NaN from the first step.
  // (SGD at lr 100 used to get there within 5 epochs, until BN's statistics became exact for
  // huge activations and kept that run finite.)
  ExperimentConfig cfg = parse_config(
      kSynthetic, "tiny.yaml", {"data.mean=[0.5]", "data.std=[1.0e-39]", "stages.0.epochs=3"});
  fs::path out = fresh_dir("diverged");
  try {
    run_training(cfg, quiet(out));
    FAIL() << "no error";
  } catch (const std::exception& e) {
    EXPECT_THAT(e.what(), HasSubstr("stage 'a' epoch "));
    EXPECT_THAT(e.what(), HasSubstr("(diverged); lower optimizer.lr"));
  }
  fs::remove_all(out);
}

TEST(Trainer, MissingDataFileIsAnInputError) {
  ExperimentConfig cfg = parse_config(kSynthetic, "tiny.yaml",
                                      {"data.dataset=cifar10", "data.root=/nonexistent/cifar"});
  fs::path out = fresh_dir("missing");
  try {
    run_training(cfg, quiet(out));
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("/nonexistent/cifar"));
  }
  fs::remove_all(out);
}

TEST(Trainer, CorruptCheckpointIsAnInputError) {
  ExperimentConfig cfg = parse_config(kSynthetic, "tiny.yaml");
  fs::path dir = fresh_dir("corrupt");
  fs::create_directories(dir);
  const fs::path bad = dir / "bad.safetensors";
  std::ofstream(bad) << "this is not a safetensors file at all";
  try {
    run_evaluation(cfg, bad.string());
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("bad.safetensors"));
  }
  fs::remove_all(dir);
}

TEST(Trainer, WhatWouldFailLaterIsRefusedAtTheStart) {
  // model.num_classes below the dataset's labels, a missing init: file, and a quant rule whose
  // option is out of range, all before anything is trained or written.
  fs::path out = fresh_dir("early");
  const auto err = [&](const std::string& yaml, const std::vector<std::string>& sets) {
    try {
      run_training(parse_config(yaml, "tiny.yaml", sets), quiet(out));
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("<no error>");
  };
  EXPECT_THAT(err(kSynthetic, {"model.num_classes=3"}),
              HasSubstr("model.num_classes 3 is smaller than the dataset's 4 classes"));
  EXPECT_THAT(err(kSynthetic, {"stages.1.init=/no/such/file.safetensors"}),
              HasSubstr("stages.1.init: '/no/such/file.safetensors' is not a file"));
  EXPECT_THAT(err(kQat, {"quant.rules=[{match: '*', weight: {bits: 8}}, {match: '*', type: Conv2d, "
                         "weight: {bits: 40}}]"}),
              HasSubstr("tiny.yaml: quant.rules.1: "));
  EXPECT_FALSE(fs::exists(out));  // nothing was written
}

TEST(Trainer, ResumeDropsTheLogRecordsOfTheRedoneEpoch) {
  ExperimentConfig cfg = parse_config(kSynthetic, "tiny.yaml");
  fs::path full = fresh_dir("logfull"), parts = fresh_dir("logparts");
  run_training(cfg, quiet(full));
  TrainerOptions o = quiet(parts);
  o.stop_after_epochs = 1;
  run_training(cfg, o);
  // Records of an epoch the checkpoint does not hold (as a kill mid-epoch 2 leaves them).
  std::ofstream(parts / "log.jsonl", std::ios::app) << R"({"kind":"step","epoch":2,"step":7})"
                                                    << "\n";
  o.resume = true;
  o.stop_after_epochs = -1;
  run_training(cfg, o);
  const auto records = [](const fs::path& p) {
    std::vector<std::string> r;
    std::ifstream in(p / "log.jsonl");
    for (std::string line; std::getline(in, line);) {
      nlohmann::json j = nlohmann::json::parse(line);
      r.push_back(str_cat(j["kind"].get<std::string>(), " ", j["epoch"].get<int64_t>(), " ",
                          j.contains("step") ? j["step"].get<int64_t>() : -1));
    }
    return r;
  };
  EXPECT_EQ(records(parts), records(full));
  fs::remove_all(full);
  fs::remove_all(parts);
}

TEST(Trainer, CheckpointsInsideAnEpochResumeBitForBit) {
  // checkpoint_every: 2 steps; a failure at epoch 2 batch 4 loses only the batch after the
  // checkpoint at batch 2, and the resumed run ends with the uninterrupted run's weights and log.
  ExperimentConfig cfg = parse_config(kSynthetic, "tiny.yaml", {"checkpoint_every=2 steps"});
  EXPECT_EQ(cfg.checkpoint_every_steps, 2);
  fs::path full = fresh_dir("midfull"), parts = fresh_dir("midparts");
  run_training(cfg, quiet(full));
  ::setenv("LOWBIT_FAULT", "throw:0:2:4", 1);
  EXPECT_THAT(testing::error_of([&] { run_training(cfg, quiet(parts)); }),
              HasSubstr("injected failure at epoch 2 batch 4"));
  ::unsetenv("LOWBIT_FAULT");
  SafetensorsFile ck = load_safetensors((parts / "checkpoint.safetensors").string());
  EXPECT_EQ(ck.metadata["batch"], "2");
  EXPECT_EQ(ck.metadata["global_epoch"], "1");
  TrainerOptions o = quiet(parts);
  o.resume = true;
  EXPECT_TRUE(run_training(cfg, o).finished);
  auto a = load_safetensors((full / "model.safetensors").string()).tensors;
  auto b = load_safetensors((parts / "model.safetensors").string()).tensors;
  for (auto& [k, v] : a) EXPECT_TENSOR_NEAR(b.at(k), v, 0, 0) << k;
  const auto steps = [](const fs::path& p) {
    std::vector<int64_t> r;
    std::ifstream in(p / "log.jsonl");
    for (std::string line; std::getline(in, line);) {
      nlohmann::json j = nlohmann::json::parse(line);
      if (j["kind"] == "step") r.push_back(j["step"].get<int64_t>());
    }
    return r;
  };
  EXPECT_EQ(steps(parts), steps(full));
  for (const char* bad : {"3 hours", "-2", "1.5 steps", "2 steps extra"}) {
    EXPECT_THAT(testing::error_of([&] {
                  parse_config(kSynthetic, "tiny.yaml", {std::string("checkpoint_every=") + bad});
                }),
                HasSubstr("tiny.yaml: checkpoint_every: '"))
        << bad;
  }
  EXPECT_EQ(
      parse_config(kSynthetic, "tiny.yaml", {"checkpoint_every=15 min"}).checkpoint_every_minutes,
      15.0);
  fs::remove_all(full);
  fs::remove_all(parts);
}

TEST(Trainer, CudaWithoutGpuIsAnInputError) {
  if (testing::gpu_available()) GTEST_SKIP() << "a GPU is present";
  EXPECT_THROW(resolve_device("cuda"), InputError);
  EXPECT_EQ(resolve_device("auto"), Device::cpu());
}

}  // namespace
}  // namespace lowbit::train
