// Experiment config parsing: defaults, overrides, and error messages that name the file, the
// key path, the value and what is allowed.
#include "train/config.h"

#include <gmock/gmock.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "tests/common/test_util.h"
#include "train/registries.h"

namespace lowbit::train {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

const char* kMinimal = R"(
name: t
data: {dataset: synthetic}
model: {name: resnet20}
stages:
  - epochs: 2
    optimizer: {name: sgd, lr: 0.05}
)";

std::string error_of(const std::string& yaml, const std::vector<std::string>& sets = {}) {
  try {
    parse_config(yaml, "cfg.yaml", sets);
  } catch (const InputError& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(Config, DefaultsAndValues) {
  ExperimentConfig c = parse_config(kMinimal, "cfg.yaml");
  EXPECT_EQ(c.name, "t");
  EXPECT_EQ(c.data.dataset, "synthetic");
  EXPECT_EQ(c.data.batch_size, 128);
  ASSERT_EQ(c.stages.size(), 1u);
  EXPECT_EQ(c.stages[0].epochs, 2);
  EXPECT_DOUBLE_EQ(c.stages[0].optimizer.lr, 0.05);
  EXPECT_EQ(c.stages[0].schedule.name, "cosine");
  EXPECT_EQ(c.stages[0].name, "stage0");
}

TEST(Config, SetOverridesAnyKey) {
  ExperimentConfig c = parse_config(kMinimal, "cfg.yaml",
                                    {"stages.0.epochs=5", "data.batch_size=64", "data.mean=[0.5]",
                                     "data.std=[0.25]", "model.width_mult=0.5"});
  EXPECT_EQ(c.stages[0].epochs, 5);
  EXPECT_EQ(c.data.batch_size, 64);
  EXPECT_EQ(c.data.mean, std::vector<double>{0.5});
  EXPECT_DOUBLE_EQ(c.model.width_mult, 0.5);
  EXPECT_THAT(c.raw_yaml, HasSubstr("epochs: 5"));
}

TEST(Config, UnknownKeyNamesPathAndAllowed) {
  const std::string e = error_of(std::string(kMinimal) + "data2: {}\n");
  EXPECT_THAT(e, HasSubstr("cfg.yaml: data2: unknown key"));
  EXPECT_THAT(e, HasSubstr("allowed here:"));
  EXPECT_THAT(error_of(kMinimal, {"stages.0.optimizer.lrr=1"}),
              HasSubstr("stages.0.optimizer.lrr: unknown key"));
}

TEST(Config, WrongTypeNamesValue) {
  EXPECT_THAT(error_of(kMinimal, {"data.batch_size=lots"}),
              HasSubstr("data.batch_size: wants an integer, got 'lots'"));
  EXPECT_THAT(error_of(kMinimal, {"data.batch_size=1.5"}), HasSubstr("wants an integer"));
  EXPECT_THAT(error_of(kMinimal, {"data.hflip=maybe"}), HasSubstr("data.hflip: wants a boolean"));
}

TEST(Config, AmpSwitch) {
  EXPECT_EQ(parse_config(kMinimal, "cfg.yaml").amp, "off");
  EXPECT_EQ(parse_config(std::string(kMinimal) + "amp: bf16\n", "cfg.yaml").amp, "bf16");
  EXPECT_THAT(error_of(kMinimal, {"amp=fp8"}),
              HasSubstr("amp: 'fp8' is not allowed; allowed: off, bf16, f16"));
}

TEST(Config, CpuConvSwitch) {
  EXPECT_EQ(parse_config(kMinimal, "cfg.yaml").cpu_conv, "auto");
  EXPECT_EQ(parse_config(std::string(kMinimal) + "cpu_conv: winograd\n", "cfg.yaml").cpu_conv,
            "winograd");
  EXPECT_THAT(error_of(kMinimal, {"cpu_conv=fft"}),
              HasSubstr("cpu_conv: 'fft' is not allowed; allowed: auto, direct, winograd, "
                        "winograd_f2, winograd_f4"));
}

TEST(Config, OutOfRangeAndChoices) {
  EXPECT_THAT(error_of(kMinimal, {"data.batch_size=0"}),
              HasSubstr("data.batch_size: 0 is out of range [1, "));
  EXPECT_THAT(error_of(kMinimal, {"stages.0.optimizer.name=sgdd"}),
              HasSubstr("stages.0.optimizer.name: 'sgdd' is not allowed; allowed: adamw, sgd"));
  EXPECT_THAT(error_of(kMinimal, {"device=tpu"}), HasSubstr("device: 'tpu' is not allowed"));
  EXPECT_THAT(error_of(kMinimal, {"data.mean=[0.5, 0.5]", "data.std=[1]"}),
              HasSubstr("data.std: has 1 values but mean has 2"));
  EXPECT_THAT(
      error_of(kMinimal, {"stages.0.optimizer.momentum=0", "stages.0.optimizer.nesterov=true"}),
      HasSubstr("nesterov: needs momentum > 0"));
}

TEST(Config, StagesRequired) {
  EXPECT_THAT(error_of("name: x\n"), HasSubstr("stages: wants a non-empty list"));
  EXPECT_THAT(error_of(kMinimal, {"stages.3.epochs=1"}), HasSubstr("index 3 is past the end"));
}

TEST(Config, BadYamlAndMissingFile) {
  EXPECT_THAT(error_of("a: [1, 2\n"), HasSubstr("cfg.yaml: not valid YAML"));
  try {
    load_config("/nonexistent/x.yaml");
    FAIL();
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("/nonexistent/x.yaml: cannot open"));
  }
}

TEST(Config, QuantSectionAndQatStages) {
  const std::string base = R"(
model: {name: dsnet}
quant:
  weight: {quantizer: uniform, bits: 4, per_channel: true, observer: minmax}
  activation: {quantizer: pact, bits: 4}
  first_last_bits: 8
  rules:
    - {match: "features.*", type: Conv2d, weight: {bits: 2}, quantize_input: false}
stages:
  - {name: q, kind: qat, quantize: weights, epochs: 2}
)";
  ExperimentConfig c = parse_config(base, "q.yaml");
  ASSERT_TRUE(c.has_quant);
  EXPECT_EQ(c.quant.weight.name, "uniform");
  EXPECT_EQ(c.quant.weight.options.values().at("observer"), "minmax");
  EXPECT_EQ(c.quant.activation.name, "pact");
  ASSERT_EQ(c.quant.rules.size(), 1u);
  EXPECT_EQ(c.quant.rules[0].weight.values().at("bits"), "2");
  EXPECT_FALSE(c.quant.rules[0].quantize_input);
  EXPECT_EQ(c.stages[0].quantize, "weights");
  // Errors name the file, the key path and the quantizer's complaint.
  EXPECT_THAT(
      testing::error_of([&] { parse_config(base, "q.yaml", {"quant.activation.signed=true"}); }),
      AllOf(HasSubstr("q.yaml: quant.activation"), HasSubstr("signed")));
  EXPECT_THAT(
      testing::error_of([&] { parse_config(base, "q.yaml", {"quant.weight.quantizer=nope"}); }),
      AllOf(HasSubstr("quant.weight"), HasSubstr("nope"), HasSubstr("lsq")));
  EXPECT_THAT(testing::error_of([&] { parse_config(base, "q.yaml", {"quant.weight.bits=0"}); }),
              HasSubstr("bits"));
  EXPECT_THAT(testing::error_of([&] { parse_config(base, "q.yaml", {"quant.rules.0.typo=1"}); }),
              HasSubstr("quant.rules.0.typo"));
  EXPECT_THAT(testing::error_of([&] { parse_config(base, "q.yaml", {"quant=null"}); }),
              HasSubstr("qat needs a top-level quant"));
  EXPECT_THAT(testing::error_of([&] { parse_config(base, "q.yaml", {"stages.0.kind=train"}); }),
              HasSubstr("quantize"));
}

TEST(Config, QuantSat) {
  const std::string base = R"(
model: {name: dsnet}
quant:
  weight: {quantizer: dorefa, bits: 4}
  activation: {quantizer: cg_pact, bits: 4}
stages:
  - {name: q, kind: qat, epochs: 2}
)";
  ExperimentConfig c = parse_config(base, "q.yaml");
  EXPECT_FALSE(c.quant.sat);
  EXPECT_FALSE(c.quant.sat_rescale_conv);
  c = parse_config(base, "q.yaml", {"quant.sat={rescale_conv: true}"});
  EXPECT_TRUE(c.quant.sat);  // a sat: mapping turns SAT on
  EXPECT_TRUE(c.quant.sat_rescale_conv);
  c = parse_config(base, "q.yaml", {"quant.sat={enabled: false}"});
  EXPECT_FALSE(c.quant.sat);
  EXPECT_THAT(testing::error_of([&] {
                parse_config(base, "q.yaml", {"quant.sat={enabled: false, rescale_conv: true}"});
              }),
              AllOf(HasSubstr("q.yaml: quant.sat.rescale_conv"), HasSubstr("sat.enabled")));
  EXPECT_THAT(testing::error_of([&] { parse_config(base, "q.yaml", {"quant.sat.scope=all"}); }),
              HasSubstr("quant.sat.scope"));
  EXPECT_THAT(testing::error_of([&] { parse_config(base, "q.yaml", {"quant.sat.enabled=2"}); }),
              HasSubstr("quant.sat.enabled"));
}

TEST(Config, PrecropStage) {
  const std::string base = R"(
model: {name: resnet20}
stages:
  - {name: c, kind: precrop, epochs: 1, precrop: {budget: 0.25, score: snip}}
)";
  ExperimentConfig c = parse_config(base, "p.yaml");
  EXPECT_EQ(c.stages[0].precrop.budget, 0.25);
  EXPECT_EQ(c.stages[0].precrop.score, "snip");
  EXPECT_EQ(c.stages[0].precrop.method, "precrop");
  EXPECT_EQ(c.stages[0].precrop.budget_kind, "params");
  EXPECT_EQ(c.stages[0].precrop.iterations, 100);
  EXPECT_THAT(error_of(base, {"stages.0.precrop.budget=0"}),
              HasSubstr("cfg.yaml: stages.0.precrop.budget: 0 is out of range (0, 1]"));
  EXPECT_THAT(error_of(base, {"stages.0.precrop.budget=1.5"}),
              HasSubstr("stages.0.precrop.budget: 1.5 is out of range"));
  EXPECT_THAT(error_of(base, {"stages.0.precrop.score=grasp"}),
              HasSubstr("stages.0.precrop.score: 'grasp' is not allowed; allowed: synflow, snip"));
  EXPECT_THAT(error_of(base, {"stages.0.precrop.method=magic"}),
              HasSubstr("stages.0.precrop.method"));
  EXPECT_THAT(error_of(base, {"stages.0.precrop.budgett=1"}),
              HasSubstr("stages.0.precrop.budgett"));
  EXPECT_THAT(error_of(base, {"stages.0.kind=train"}),
              HasSubstr("stages.0.precrop: applies to kind: precrop only"));
}

TEST(Config, ShippedConfigsParse) {
  // Every ready experiment in configs/ parses and validates, including those whose data is
  // not on this machine.
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(LOWBIT_SOURCE_DIR) / "configs";
  int n = 0;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml") continue;
    EXPECT_NO_THROW(load_config(entry.path().string())) << entry.path();
    ++n;
  }
  EXPECT_GE(n, 40);  // configs/ and configs/qat/
}

TEST(Config, DuplicateKeysAreRefusedNamingTheLine) {
  EXPECT_THAT(error_of("name: a\nseed: 1\nname: b\nstages: [{epochs: 1}]\n"),
              HasSubstr("cfg.yaml:3: key 'name' appears twice (first at line 1)"));
  EXPECT_THAT(error_of("stages:\n  - {epochs: 1, epochs: 2}\n"),
              HasSubstr("key 'stages.0.epochs' appears twice"));
}

TEST(Config, SetMistakesNameTheArgument) {
  EXPECT_THAT(error_of(kMinimal, {"stages.epochs=3"}),
              HasSubstr("--set stages.epochs: 'stages' is a list: 'epochs' must be an item index"));
  EXPECT_THAT(error_of(kMinimal, {"name.sub=1"}), HasSubstr("'name' is a value"));
  EXPECT_THAT(error_of(kMinimal, {"stages.7.epochs=1"}),
              HasSubstr("index 7 is past the end of 'stages'"));
  EXPECT_THAT(error_of(kMinimal, {"stages.-1.epochs=1"}), HasSubstr("must be an item index"));
  EXPECT_THAT(error_of(kMinimal, {"=3"}), HasSubstr("wants key.path=value"));
}

// Inputs that escaped as YAML exceptions, overflowed the stack or ran UB before (fuzz_config's
// corpus keeps them as regress-*): each is an InputError naming the file now.
TEST(Config, HostileYamlIsRefusedCleanly) {
  // A list as a key: yaml-cpp's as<std::string>() threw YAML::BadConversion.
  EXPECT_THAT(error_of(std::string(kMinimal) + "[a]: 1\n"),
              AllOf(HasSubstr("cfg.yaml"), HasSubstr("list or mapping as a key")));
  EXPECT_THAT(error_of(std::string(kMinimal) + "quant: {weight: {[bits]: 4}}\n"),
              AllOf(HasSubstr("quant.weight"), HasSubstr("list or mapping as a key")));
  // A list holding itself through an alias: unbounded recursion.
  EXPECT_THAT(error_of(std::string(kMinimal) + "x: &a [*a]\n"),
              AllOf(HasSubstr("cfg.yaml"), HasSubstr("nested deeper than")));
  // Aliases that expand exponentially ("billion laughs"): 10^9 visits.
  std::string laughs = std::string(kMinimal) + "l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n";
  for (int i = 1; i < 9; ++i) {
    laughs += str_cat("l", i, ": &l", i, " [");
    for (int k = 0; k < 10; ++k) laughs += str_cat(k ? ", " : "", "*l", i - 1);
    laughs += "]\n";
  }
  EXPECT_THAT(error_of(laughs), HasSubstr("values with aliases expanded"));
  // An override's value with a recursive alias.
  EXPECT_THAT(error_of(kMinimal, {"data.mean=&a [*a]"}), HasSubstr("nested deeper than"));
  // int64_t(1e300) was undefined behaviour.
  EXPECT_THAT(error_of(std::string(kMinimal) + "checkpoint_every: 1e300\n"),
              HasSubstr("checkpoint_every: '1e300'"));
  EXPECT_EQ(parse_config(std::string(kMinimal) + "checkpoint_every: 1099511627776\n", "cfg.yaml")
                .checkpoint_every_steps,
            int64_t(1) << 40);
  // --resume compares against a checkpoint's config text, which may be anything.
  EXPECT_EQ(config_differences("x: &a [*a]\n", "x: 1\n").size(), 2u);
}

TEST(Config, DifferencesListChangedAddedAndRemovedKeys) {
  const auto d = config_differences("a: 1\nb: {c: 2, d: 3}\nl: [1, 2]\n",
                                    "a: 1\nb: {c: 5}\nl: [1, 2, 4]\ne: x\n");
  EXPECT_EQ(d, (std::vector<std::string>{"b.c: 2 -> 5", "b.d: 3 -> (absent)", "e: (absent) -> x",
                                         "l.2: (absent) -> 4"}));
  EXPECT_TRUE(config_differences("a: 1", "a: 1").empty());
}

TEST(Registries, EveryRegisteredChoiceIsValidatedAndDocumented) {
  // The names of each registry are what config validation allows, and docs/config.md names each
  // of them (as `name`): a new optimizer, schedule, dataset or stage kind cannot land undocumented.
  std::ifstream in(std::string(LOWBIT_SOURCE_DIR) + "/docs/config.md");
  ASSERT_TRUE(in.good());
  const std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::vector<std::pair<std::string, std::vector<std::string>>> kinds = {
      {"stages.0.kind", stage_kind_registry().names()},
      {"stages.0.optimizer.name", optimizer_registry().names()},
      {"stages.0.schedule.name", schedule_registry().names()},
      {"data.dataset", dataset_registry().names()}};
  for (const auto& [key, names] : kinds) {
    ASSERT_GE(names.size(), 2u) << key;
    for (const std::string& n : names)
      EXPECT_NE(doc.find("`" + n + "`"), std::string::npos) << key << " " << n;
    EXPECT_THAT(error_of(kMinimal, {key + "=no_such_thing"}),
                HasSubstr("allowed: " + names.front()));
  }
  EXPECT_THAT(registered_choices(), HasSubstr("optimizers:    adamw, sgd"));
}

TEST(Registries, RefuseTwiceAndNameWhatIsRegistered) {
  Registry<int> r("widget");
  r.add("b", 2);
  r.add("a", 1);
  EXPECT_EQ(r.get("a"), 1);
  EXPECT_EQ(r.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_THAT(testing::error_of([&] { r.add("a", 3); }), HasSubstr("widget 'a' registered twice"));
  EXPECT_THAT(testing::error_of([&] { r.get("c"); }),
              HasSubstr("unknown widget 'c'; allowed: a, b"));
}

}  // namespace
}  // namespace lowbit::train
