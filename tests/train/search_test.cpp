// kind: search end to end on a small synthetic dataset: the lambda rule (a loose bound drives
// every layer to the narrow candidate, a bound never met keeps the wide one), the choices feeding
// the next QAT stage and, as an included YAML fragment, another config; resume inside a search
// bit for bit; and the config errors.
#include <gmock/gmock.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "quant/convert.h"
#include "tests/common/test_util.h"
#include "tests/train/train_test_util.h"
#include "train/config.h"
#include "train/safetensors.h"
#include "train/trainer.h"

namespace lowbit::train {
namespace {

namespace fs = std::filesystem;
using testing_util::quiet;
fs::path fresh_dir(const std::string& name) { return testing_util::fresh_dir("search_test", name); }
using ::testing::HasSubstr;
using json = nlohmann::json;

// The wide candidate first, so that a tie (alpha = 0 at the start) is an 8-bit choice and a
// binary choice must be earned by the size steps.
const char* kSearch = R"(
name: tinysearch
seed: 4
device: cpu
log_interval: 2
data: {dataset: synthetic, synthetic_size: 96, synthetic_hw: 8, synthetic_channels: 1,
       synthetic_classes: 4, batch_size: 16, eval_batch_size: 32, num_workers: 2}
model: {name: dsnet}
search:
  candidates:
    - {quantizer: uniform, bits: 8, per_channel: false, observer: minmax, symmetric: true}
    - {quantizer: binary}
  theta: 100
  stable_epochs: 10
  alpha_optimizer: {name: adamw, lr: 0.05, beta1: 0.5, weight_decay: 0.001}
quant:
  weight: {quantizer: lsq, bits: 4, per_channel: true}
  first_last_bits: 0
  fold_bn: false
stages:
  - {name: pre, epochs: 1, optimizer: {lr: 0.05}}
  - {name: search, kind: search, epochs: 3, optimizer: {lr: 0.025, weight_decay: 3.0e-4}}
  - {name: tune, kind: qat, quantize: weights, epochs: 1, optimizer: {lr: 0.01}}
)";

std::vector<json> search_records(const fs::path& out) {
  std::vector<json> r;
  std::ifstream in(out / "log.jsonl");
  for (std::string line; std::getline(in, line);) {
    json j = json::parse(line);
    if (j["kind"] == "epoch" && j.contains("search")) r.push_back(j["search"]);
  }
  return r;
}

// The weight quantizer of every layer of a finished run's model.
std::map<std::string, std::string> planned_quantizers(const fs::path& model) {
  SafetensorsFile f = load_safetensors(model.string());
  const quant::QuantPlan plan = quant::QuantPlan::parse(f.metadata.at("quant_plan"));
  std::map<std::string, std::string> out;
  for (const auto& l : plan.layers) out[l.name] = l.weight.name;
  return out;
}

TEST(SearchStage, LooseBoundGoesBinaryAndTheChoicesFeedTheNextStages) {
  ExperimentConfig cfg = parse_config(kSearch, "tinysearch.yaml");
  fs::path out = fresh_dir("loose");
  RunSummary s = run_training(cfg, quiet(out));
  EXPECT_TRUE(s.finished);
  const auto recs = search_records(out);
  ASSERT_EQ(recs.size(), 3u);
  for (const json& r : recs) {
    EXPECT_EQ(r["violated_fraction"].get<double>(), 0.0);  // L_val never reaches 100
    EXPECT_EQ(r["alpha"].size(), 4u);
    EXPECT_EQ(r["probabilities"].size(), 4u);
  }
  // Only size steps: the expected size falls every epoch and every layer ends binary.
  EXPECT_LT(recs[2]["expected_size"].get<double>(), recs[0]["expected_size"].get<double>());
  for (auto& [layer, bits] : recs[2]["bits"].items()) EXPECT_EQ(bits.get<int>(), 1) << layer;
  // The QAT stage quantized every searched layer with its choice (not the lsq default).
  for (auto& [layer, q] : planned_quantizers(out / "model.safetensors")) EXPECT_EQ(q, "binary");
  // summary.json carries the result; the fragment is in the run folder.
  std::ifstream sj(out / "summary.json");
  const json j = json::parse(sj);
  EXPECT_EQ(j["stages"]["search"]["layers"].size(), 4u);
  EXPECT_NEAR(j["stages"]["search"]["weight_compression"].get<double>(), 32.0, 1e-9);
  ASSERT_TRUE(fs::exists(out / "search_search.yaml"));
  ASSERT_TRUE(fs::exists(out / "search_search.txt"));

  // Another config includes the fragment: its QAT stage takes the same scheme.
  const fs::path other = out / "other.yaml";
  std::ofstream(other) << R"(
name: reuse
seed: 1
device: cpu
include: [search_search.yaml]
data: {dataset: synthetic, synthetic_size: 48, synthetic_hw: 8, synthetic_channels: 1,
       synthetic_classes: 4, batch_size: 16, num_workers: 0}
model: {name: dsnet}
quant:
  weight: {quantizer: lsq, bits: 4, per_channel: true}
  first_last_bits: 0
  rules: [{match: "fc", weight: {bits: 2}}]
stages:
  - {name: q, kind: qat, quantize: weights, epochs: 1, optimizer: {lr: 0.01}}
)";
  ExperimentConfig c2 = load_config(other.string());
  ASSERT_EQ(c2.quant.rules.size(), 5u);  // its own rule, then the four included
  EXPECT_EQ(c2.quant.rules[0].match, "fc");
  EXPECT_TRUE(c2.quant.rules[4].replace);
  EXPECT_THAT(c2.raw_yaml, ::testing::Not(HasSubstr("include")));
  fs::path out2 = out / "run2";
  EXPECT_TRUE(run_training(c2, quiet(out2)).finished);
  for (auto& [layer, q] : planned_quantizers(out2 / "model.safetensors")) EXPECT_EQ(q, "binary");
  fs::remove_all(out);
}

TEST(SearchStage, BoundNeverMetStepsOnTheLossOnly) {
  // theta below any loss: lambda = inf on every step, so alpha follows grad L_val alone and the
  // size term never acts; the 8-bit candidate (lower loss) keeps every layer.
  ExperimentConfig cfg = parse_config(kSearch, "tinysearch.yaml", {"search.theta=1.0e-6"});
  fs::path out = fresh_dir("tight");
  RunSummary s = run_training(cfg, quiet(out));
  EXPECT_TRUE(s.finished);
  const auto recs = search_records(out);
  ASSERT_EQ(recs.size(), 3u);
  for (const json& r : recs) EXPECT_EQ(r["violated_fraction"].get<double>(), 1.0);
  for (auto& [layer, bits] : recs[2]["bits"].items()) EXPECT_EQ(bits.get<int>(), 8) << layer;
  for (auto& [layer, q] : planned_quantizers(out / "model.safetensors")) EXPECT_EQ(q, "uniform");
  fs::remove_all(out);
}

TEST(SearchStage, ResumeInsideTheSearchIsBitForBit) {
  ExperimentConfig cfg =
      parse_config(kSearch, "tinysearch.yaml",
                   {"search.theta=1.5x", "checkpoint_every=1 steps", "search.max_samples=64"});
  fs::path full = fresh_dir("rfull"), parts = fresh_dir("rparts");
  run_training(cfg, quiet(full));
  // Stopped after the first search epoch (global epoch 2), then killed inside the next one.
  TrainerOptions o = quiet(parts);
  o.stop_after_epochs = 2;
  EXPECT_FALSE(run_training(cfg, o).finished);
  ::setenv("LOWBIT_FAULT", "throw:0:3:2", 1);
  o.resume = true;
  o.stop_after_epochs = -1;
  EXPECT_THAT(testing::error_of([&] { run_training(cfg, o); }), HasSubstr("injected failure"));
  ::unsetenv("LOWBIT_FAULT");
  EXPECT_TRUE(run_training(cfg, o).finished);
  auto a = load_safetensors((full / "model.safetensors").string()).tensors;
  auto b = load_safetensors((parts / "model.safetensors").string()).tensors;
  ASSERT_EQ(a.size(), b.size());
  for (auto& [k, v] : a) EXPECT_TENSOR_NEAR(b.at(k), v, 0, 0) << k;
  EXPECT_EQ(search_records(parts), search_records(full));
  fs::remove_all(full);
  fs::remove_all(parts);
}

TEST(SearchStage, BadConfigsNameTheKey) {
  const std::vector<std::pair<std::string, std::string>> cases{
      {"search.candidates=[]", "search.candidates: wants a non-empty list"},
      {"search.candidates=[{quantizer: nope}]", "search.candidates.0"},
      {"search.candidates=[{quantizer: binary, bits: 4}]", "search.candidates.0"},
      {"search.theta=0", "search.theta: '0'"},
      {"search.theta=-1x", "search.theta: '-1x'"},
      {"search.val_fraction=0", "search.val_fraction"},
      {"search.val_fraction=1", "search.val_fraction"},
  };
  for (const auto& c : cases) {
    const std::string set = c.first;
    EXPECT_THAT(testing::error_of([&] { parse_config(kSearch, "tinysearch.yaml", {set}); }),
                HasSubstr("tinysearch.yaml: " + c.second))
        << set;
  }
  ExperimentConfig cfg = parse_config(kSearch, "tinysearch.yaml", {"search.skip=[\"*\"]"});
  fs::path out = fresh_dir("bad");
  EXPECT_THAT(testing::error_of([&] { run_training(cfg, quiet(out)); }),
              HasSubstr("stage search: search: the model has no Conv2d or Linear layer left"));
  fs::remove_all(out);
  // A search after quantization is refused.
  ExperimentConfig late =
      parse_config(kSearch, "tinysearch.yaml", {"stages.0.kind=qat", "stages.0.quantize=weights"});
  EXPECT_THAT(testing::error_of([&] { run_training(late, quiet(out)); }),
              HasSubstr("kind search runs on the float model"));
  fs::remove_all(out);
}

}  // namespace
}  // namespace lowbit::train
