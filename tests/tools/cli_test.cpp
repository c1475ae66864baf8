// The lowbit CLI as a user meets it: --help on every command, and exit code 2 with one clear
// line for a bad config, a missing data file and a corrupt checkpoint.
#include <gmock/gmock.h>
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

struct Result {
  int code;
  std::string output;  // stdout and stderr
};

Result run(const std::string& args) {
  const std::string cmd = std::string(LOWBIT_CLI) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

fs::path temp_dir() {
  fs::path d = fs::temp_directory_path() / ("lowbit_cli_test_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

const char* kTiny = R"(name: tiny
device: cpu
data: {dataset: synthetic, synthetic_size: 32, synthetic_hw: 8, synthetic_channels: 1, synthetic_classes: 2, batch_size: 16}
model: {name: dsnet}
stages: [{epochs: 1, optimizer: {lr: 0.01}}]
)";

TEST(Cli, HelpOnEveryCommand) {
  for (const char* c : {"--help", "train --help", "eval --help", "info --help", "export --help"}) {
    Result r = run(c);
    EXPECT_EQ(r.code, 0) << c;
    EXPECT_THAT(r.output, HasSubstr("usage: lowbit")) << c;
  }
  EXPECT_EQ(run("").code, 2);
  Result r = run("frobnicate");
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.output, HasSubstr("unknown command 'frobnicate'"));
}

TEST(Cli, InfoRuns) {
  Result r = run("info");
  EXPECT_EQ(r.code, 0);
  EXPECT_THAT(r.output, HasSubstr("cuda devices:"));
}

TEST(Cli, BadConfigExitsTwoNamingTheKey) {
  fs::path d = temp_dir();
  std::ofstream(d / "bad.yaml") << kTiny << "data2: 1\n";
  Result r = run("train " + (d / "bad.yaml").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.output, HasSubstr("bad.yaml: data2: unknown key"));
  r = run("train " + (d / "missing.yaml").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.output, HasSubstr("cannot open the config file"));
  r = run("train " + (d / "bad.yaml").string() + " --bogus");
  EXPECT_EQ(r.code, 2);
  fs::remove_all(d);
}

TEST(Cli, MissingDataFileExitsTwo) {
  fs::path d = temp_dir();
  std::ofstream(d / "c.yaml") << kTiny;
  Result r = run("train " + (d / "c.yaml").string() + " --out " + (d / "out").string() +
                 " --set data.dataset=fashion_mnist --set data.root=" + (d / "nodata").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.output, HasSubstr("nodata"));
  fs::remove_all(d);
}

TEST(Cli, TrainThenEvalAndCorruptCheckpoint) {
  fs::path d = temp_dir();
  std::ofstream(d / "c.yaml") << kTiny;
  Result r =
      run("train " + (d / "c.yaml").string() + " --out " + (d / "out").string() + " --no-progress");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("results in"));
  r = run("eval " + (d / "c.yaml").string() + " --checkpoint " +
          (d / "out" / "model.safetensors").string());
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("top1"));
  {
    // Truncate a copy of the checkpoint.
    std::ifstream in(d / "out" / "model.safetensors", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(d / "cut.safetensors", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  r = run("eval " + (d / "c.yaml").string() + " --checkpoint " + (d / "cut.safetensors").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.output, HasSubstr("cut.safetensors"));
  fs::remove_all(d);
}

TEST(Cli, BenchHelpAndBadArgumentsExitTwo) {
  for (const char* c : {"bench --help", "bench kernel --help", "bench train --help"}) {
    Result r = run(c);
    EXPECT_EQ(r.code, 0) << c;
    EXPECT_THAT(r.output, HasSubstr("usage: lowbit bench")) << c;
  }
  EXPECT_EQ(run("bench").code, 2);
  struct Case {
    const char* args;
    const char* message;
  };
  const Case cases[] = {
      {"bench frobnicate", "unknown subcommand 'frobnicate'"},
      {"bench kernel nosuch --device cpu", "unknown kernel 'nosuch'"},
      {"bench kernel fake_quant --device cpu --size 100,64", "must be a multiple of C = 64"},
      {"bench kernel conv --device cpu --dtype f64", "--dtype must be f32 or bf16"},
      {"bench kernel conv --device cpu --size 1,2,3", "--size wants"},
      {"bench kernel all --device cpu --size 4", "different meaning"},
      {"bench train --device cpu --mode qat --quantizer nosuch", "unknown quantizer 'nosuch'"},
      {"bench train --device cpu --mode bf16 --steps 0", "must be >= 1"},
      {"bench train --device cpu --mode fp16", "fp32, bf16 or qat"},
      {"bench train --device cpu --model nosuch", "nosuch"},
      {"bench train --device cpu --batch x", "wants an integer"},
      {"bench train --device cpu --bogus", "unknown option '--bogus'"},
  };
  for (const Case& c : cases) {
    Result r = run(c.args);
    EXPECT_EQ(r.code, 2) << c.args << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(c.message)) << c.args;
  }
}

TEST(Cli, RunFoldersAreNeverMixed) {
  fs::path d = temp_dir() / "folders";
  fs::create_directories(d);
  std::ofstream(d / "c.yaml") << kTiny;
  const std::string cfg = (d / "c.yaml").string(), out = (d / "out").string();
  // An empty --out is refused like a missing one (it used to mean runs/<name>).
  Result r = run("train " + cfg + " --out '' --no-progress");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--out needs a value, got an empty one"));
  ASSERT_EQ(run("train " + cfg + " --out " + out + " --no-progress").code, 0);
  // The same experiment again restarts in place; another one is refused without --force.
  r = run("train " + cfg + " --out " + out + " --no-progress");
  EXPECT_EQ(r.code, 0) << r.output;
  r = run("train " + cfg + " --out " + out + " --no-progress --set seed=7");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("holds another run (a different config.yaml)"));
  std::ofstream(d / "out" / "notes.txt") << "mine";
  std::ofstream(d / "out" / "checkpoint.safetensors.tmp.12345") << "half a write";
  r = run("train " + cfg + " --out " + out + " --no-progress --set seed=7 --force");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(fs::exists(d / "out" / "notes.txt"));  // only run files are cleared
  EXPECT_FALSE(fs::exists(d / "out" / "checkpoint.safetensors.tmp.12345"));
  std::ifstream in(d / "out" / "config.yaml");
  const std::string written((std::istreambuf_iterator<char>(in)), {});
  EXPECT_THAT(written, HasSubstr("seed: 7"));
  // --resume with another config says what changed.
  r = run("train " + cfg + " --out " + out +
          " --no-progress --resume --set seed=8 --set stages.0.epochs=2");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("the config differs from the checkpoint's"));
  EXPECT_THAT(r.output, HasSubstr("seed: 7 -> 8"));
  EXPECT_THAT(r.output, HasSubstr("stages.0.epochs: 1 -> 2"));
  r = run("train " + cfg + " --out " + out + " --resume --force");
  EXPECT_EQ(r.code, 2) << r.output;
  fs::remove_all(d);
}

TEST(Cli, NonFiniteWeightsAreRefusedNamingTheTensor) {
  fs::path d = temp_dir() / "nan";
  fs::create_directories(d);
  std::ofstream(d / "c.yaml") << kTiny;
  const std::string cfg = (d / "c.yaml").string();
  ASSERT_EQ(run("train " + cfg + " --out " + (d / "out").string() + " --no-progress").code, 0);
  // The same file with one weight made NaN: the header says where the tensor's bytes are.
  std::ifstream in(d / "out" / "model.safetensors", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  uint64_t header = 0;
  std::memcpy(&header, bytes.data(), 8);
  nlohmann::json h = nlohmann::json::parse(bytes.substr(8, header));
  std::string name;
  for (auto& [k, v] : h.items()) {
    if (k != "__metadata__" && v["dtype"] == "F32") {
      name = k;
      const size_t at = 8 + header + v["data_offsets"][0].get<size_t>();
      const float nan = std::numeric_limits<float>::quiet_NaN();
      std::memcpy(&bytes[at], &nan, 4);
      break;
    }
  }
  ASSERT_FALSE(name.empty());
  std::ofstream(d / "nan.safetensors", std::ios::binary) << bytes;
  const std::string nan_file = (d / "nan.safetensors").string();
  Result r = run("eval " + cfg + " --checkpoint " + nan_file);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("tensor '" + name + "' holds nan"));
  r = run("train " + cfg + " --out " + (d / "o2").string() +
          " --no-progress --set stages.0.init=" + nan_file);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("holds nan"));
  fs::remove_all(d);
}

TEST(Cli, CompareTabulatesRunsWithDifferencesToTheFirst) {
  fs::path d = temp_dir() / "compare";
  fs::create_directories(d);
  std::ofstream(d / "c.yaml") << kTiny;
  const std::string cfg = (d / "c.yaml").string();
  ASSERT_EQ(run("train " + cfg + " --out " + (d / "a").string() + " --no-progress").code, 0);
  ASSERT_EQ(
      run("train " + cfg + " --out " + (d / "b").string() + " --no-progress --set seed=7").code, 0);
  Result r = run("compare " + (d / "a").string() + " " + (d / "b" / "summary.json").string());
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("| run | config | top-1 % | top-5 % | params |"));
  EXPECT_THAT(r.output, HasSubstr("(seed: (absent) -> 7)"));
  // The header, its rule and one row per run.
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 4) << r.output;
  r = run("compare " + (d / "nothing").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.output, HasSubstr("no summary.json"));
  fs::remove_all(d);
}

// The height of a PNG (its IHDR chunk), 0 when the file is not a PNG.
uint32_t png_height(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::string b((std::istreambuf_iterator<char>(in)), {});
  if (b.size() < 24 || b.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) return 0;
  const auto* u = reinterpret_cast<const unsigned char*>(b.data());
  return (uint32_t(u[20]) << 24) | (uint32_t(u[21]) << 16) | (uint32_t(u[22]) << 8) | u[23];
}

TEST(Cli, PlotDrawsTheRunsAndABitsPanelForQuantizedOnes) {
  if (std::system("/usr/bin/python3 -c 'import matplotlib' >/dev/null 2>&1") != 0) {
    GTEST_SKIP()
        << "/usr/bin/python3 has no matplotlib (scripts/setup.sh installs python3-matplotlib)";
  }
  fs::path d = temp_dir() / "plot";
  fs::create_directories(d);
  std::ofstream(d / "c.yaml") << kTiny;
  std::ofstream(d / "q.yaml") << R"(name: tinyq
device: cpu
data: {dataset: synthetic, synthetic_size: 32, synthetic_hw: 8, synthetic_channels: 1, synthetic_classes: 2, batch_size: 16}
model: {name: dsnet}
quant: {weight: {quantizer: lsq, bits: 4}, activation: {quantizer: lsq, bits: 4}}
stages: [{epochs: 1, optimizer: {lr: 0.01}}, {kind: qat, epochs: 1, optimizer: {lr: 0.01}}]
)";
  const std::string f = (d / "f").string(), q = (d / "q").string();
  ASSERT_EQ(run("train " + (d / "c.yaml").string() + " --out " + f + " --no-progress").code, 0);
  Result t = run("train " + (d / "q.yaml").string() + " --out " + q + " --no-progress");
  ASSERT_EQ(t.code, 0) << t.output;
  Result r = run("plot " + f + " --out " + (d / "f.png").string());
  ASSERT_EQ(r.code, 0) << r.output;
  // Three panels of 3.2 in at 90 dpi for a float run; a fourth (bits per layer) once quantized.
  EXPECT_EQ(png_height(d / "f.png"), 3u * 288u);
  r = run("plot " + f + " " + q + " --out " + (d / "fq.png").string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(png_height(d / "fq.png"), 4u * 288u);
  r = run("plot " + (d / "nothing").string() + " --out " + (d / "x.png").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.output, HasSubstr("no log.jsonl"));
  fs::remove_all(d);
}

}  // namespace

// lowbit export --format int: the integer model's files and report; bad input exits 2 and
// leaves nothing at --out.
TEST(Cli, ExportIntWritesTheIntegerModelAndRefusesBadInput) {
  fs::path d = temp_dir() / "export";
  fs::create_directories(d);
  const std::string data =
      "data: {dataset: synthetic, synthetic_size: 32, synthetic_hw: 8, synthetic_channels: 1, "
      "synthetic_classes: 2, batch_size: 16}\n";
  const std::string stages =
      "stages: [{epochs: 1, optimizer: {lr: 0.01}}, {kind: qat, epochs: 1, optimizer: {lr: "
      "0.01}}]\n";
  std::ofstream(d / "q.yaml") << "name: q\ndevice: cpu\n"
                              << data
                              << "model: {name: dsnet}\n"
                                 "quant: {weight: {quantizer: lsq, bits: 4}, activation: "
                                 "{quantizer: lsq, bits: 4}}\n"
                              << stages;
  std::ofstream(d / "dsq.yaml") << "name: dsq\ndevice: cpu\n"
                                << data
                                << "model: {name: dsnet}\n"
                                   "quant: {weight: {quantizer: lsq, bits: 4}, activation: "
                                   "{quantizer: dsq, bits: 4}}\n"
                                << stages;
  std::ofstream(d / "other.yaml") << "name: other\ndevice: cpu\n"
                                  << data
                                  << "model: {name: resnet20}\n"
                                     "quant: {weight: {quantizer: lsq, bits: 4}, activation: "
                                     "{quantizer: lsq, bits: 4}}\n"
                                  << stages;
  for (const char* n : {"q", "dsq"}) {
    Result t = run("train " + (d / (std::string(n) + ".yaml")).string() + " --out " +
                   (d / n).string() + " --no-progress");
    ASSERT_EQ(t.code, 0) << t.output;
  }
  const std::string q = (d / "q.yaml").string(), ckpt = (d / "q" / "model.safetensors").string();
  Result r = run("export " + q + " --checkpoint " + ckpt + " --format int --out " +
                 (d / "qi").string() + " --verify all");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("integer top-1"));
  for (const char* f : {"model.json", "weights.bin", "export_report.json"})
    EXPECT_TRUE(fs::exists(d / "qi" / f)) << f;
  nlohmann::json rep = nlohmann::json::parse(std::ifstream(d / "qi" / "export_report.json"));
  EXPECT_EQ(rep["verified_images"], 8);  // 32 synthetic images, a quarter for test
  EXPECT_GE(rep["codes"]["equal_fraction"].get<double>(), 0.999);
  EXPECT_LE(rep["codes"]["max_diff"].get<int>(), 1);
  EXPECT_GE(rep["codes_fed"]["equal_fraction"].get<double>(), 0.999);
  EXPECT_LE(rep["codes_fed"]["max_diff"].get<int>(), 1);
  EXPECT_EQ(rep["codes_per_layer"].size(), 4u);  // dsnet: three convs and the classifier
  // Again into the same folder (an earlier export is replaced), with fixed-point multipliers.
  r = run("export " + q + " --checkpoint " + ckpt + " --format int --out " + (d / "qi").string() +
          " --fixed-point");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(nlohmann::json::parse(std::ifstream(d / "qi" / "export_report.json"))["requant"],
            "fixed_point");

  struct Bad {
    std::string args, out, message;
  };
  const std::vector<Bad> bad{
      {(d / "dsq.yaml").string() + " --checkpoint " + (d / "dsq" / "model.safetensors").string(),
       "b1", "layer 'features.0.0': its input quantizer 'dsq' has no integer form"},
      {(d / "other.yaml").string() + " --checkpoint " + ckpt, "b2", "model.safetensors"},
      {q + " --checkpoint " + ckpt, "/proc/lowbit_no/x", "cannot create the output folder"},
      {q + " --checkpoint " + (d / "missing.safetensors").string(), "b3", "missing.safetensors"},
      {q + " --checkpoint " + ckpt + " --verify some", "b4", "--verify 'some'"},
  };
  for (const Bad& b : bad) {
    const fs::path out = b.out[0] == '/' ? fs::path(b.out) : d / b.out;
    r = run("export " + b.args + " --format int --out " + out.string());
    EXPECT_EQ(r.code, 2) << b.args << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(b.message));
    EXPECT_FALSE(fs::exists(out)) << out;
  }
  // A folder holding something else is not replaced.
  fs::create_directories(d / "keep");
  std::ofstream(d / "keep" / "mine.txt") << "x";
  r = run("export " + q + " --checkpoint " + ckpt + " --format int --out " + (d / "keep").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.output, HasSubstr("not an earlier export"));
  EXPECT_TRUE(fs::exists(d / "keep" / "mine.txt"));
  for (const auto& e : fs::directory_iterator(d))
    EXPECT_EQ(e.path().string().find(".partial-"), std::string::npos) << e.path();
  fs::remove_all(d);
}
