// TensorBoard event files (train/tensorboard.h, train/run_log.h): CRC-32C against the RFC 3720
// test vectors, the protobuf pieces and records against hand-encoded bytes, and a round trip: a
// short real training run (float, then QAT with LSQ weights and PACT activations) whose event
// file the `tensorboard` package of the project's venv reads back, every scalar checked against
// log.jsonl, every histogram against the final weights, and the config text
// (tests/train/tensorboard_check.py).
#include "train/tensorboard.h"

#include <gmock/gmock.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/common/test_util.h"
#include "tests/train/train_test_util.h"
#include "train/config.h"
#include "train/trainer.h"

namespace lowbit::train {
namespace {

namespace fs = std::filesystem;
using lowbit::testing::run_command;
using ::testing::HasSubstr;

// Bit-at-a-time CRC-32C: the definition, sharing nothing with the table-driven code.
uint32_t crc32c_bitwise(const std::string& s) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : s) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
  }
  return ~c;
}

template <typename T>
std::string le(T v) {
  std::string s(sizeof(T), '\0');
  std::memcpy(s.data(), &v, sizeof(T));
  return s;
}

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int x : b) s.push_back(char(x));
  return s;
}

TEST(TensorBoard, Crc32cMatchesTheRfc3720Vectors) {
  // RFC 3720 (iSCSI), appendix B.4.
  const std::string zeros(32, '\0'), ones(32, '\xFF');
  std::string ascending, descending;
  for (int i = 0; i < 32; ++i) {
    ascending.push_back(char(i));
    descending.push_back(char(31 - i));
  }
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(crc32c(ascending.data(), ascending.size()), 0x46DD794Eu);
  EXPECT_EQ(crc32c(descending.data(), descending.size()), 0x113FDB5Cu);
  // The usual check value, and the empty input.
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(crc32c("", 0), 0u);
  // Every length 0..300 of a byte pattern against the bitwise definition.
  std::string s;
  for (int i = 0; i < 300; ++i) {
    EXPECT_EQ(crc32c(s.data(), s.size()), crc32c_bitwise(s)) << "length " << s.size();
    s.push_back(char((i * 37 + 11) & 0xFF));
  }
}

TEST(TensorBoard, MaskedCrcRotatesAndAddsTheTfRecordConstant) {
  // crc 0xE3069283 rotated right by 15 is 0x2507C60D; plus 0xa282ead8 (mod 2^32).
  EXPECT_EQ(masked_crc32c("123456789", 9), 0xC78AB0E5u);
}

TEST(TensorBoard, VarintsAndFields) {
  const auto varint = [](uint64_t v) {
    std::string s;
    tb::put_varint(&s, v);
    return s;
  };
  EXPECT_EQ(varint(0), bytes({0x00}));
  EXPECT_EQ(varint(1), bytes({0x01}));
  EXPECT_EQ(varint(127), bytes({0x7F}));
  EXPECT_EQ(varint(128), bytes({0x80, 0x01}));
  EXPECT_EQ(varint(300), bytes({0xAC, 0x02}));
  EXPECT_EQ(varint(16384), bytes({0x80, 0x80, 0x01}));
  EXPECT_EQ(varint(~uint64_t(0)),
            bytes({0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01}));
  std::string f;
  tb::put_varint_field(&f, 2, 150);  // the protobuf documentation's example: 08 96 01 for field 1
  EXPECT_EQ(f, bytes({0x10, 0x96, 0x01}));
  f.clear();
  tb::put_bytes_field(&f, 1, "testing");
  EXPECT_EQ(f, bytes({0x0A, 0x07}) + "testing");
  f.clear();
  tb::put_double_field(&f, 1, 1.5);
  EXPECT_EQ(f, bytes({0x09}) + le(1.5));
  f.clear();
  tb::put_float_field(&f, 2, 0.25f);
  EXPECT_EQ(f, bytes({0x15}) + le(0.25f));
  f.clear();
  tb::put_packed_doubles(&f, 6, {1.0, -2.0});
  EXPECT_EQ(f, bytes({0x32, 0x10}) + le(1.0) + le(-2.0));
}

TEST(TensorBoard, RecordFramingCarriesLengthAndMaskedCrcs) {
  const std::string payload = "an event";
  const std::string r = tb::frame_record(payload);
  ASSERT_EQ(r.size(), 8 + 4 + payload.size() + 4);
  const std::string len = le(uint64_t(payload.size()));
  EXPECT_EQ(r.substr(0, 8), len);
  const auto mask = [](uint32_t c) { return ((c >> 15) | (c << 17)) + 0xa282ead8u; };
  EXPECT_EQ(r.substr(8, 4), le(mask(crc32c_bitwise(len))));
  EXPECT_EQ(r.substr(12, payload.size()), payload);
  EXPECT_EQ(r.substr(12 + payload.size()), le(mask(crc32c_bitwise(payload))));
}

TEST(TensorBoard, EventsEncodeAsTheProtoFilesSay) {
  // Event {wall_time: 2.5, step: 3, summary {value {tag: "a/b", simple_value: 0.5}}}
  const std::string value = bytes({0x0A, 0x03}) + "a/b" + bytes({0x15}) + le(0.5f);
  const std::string summary = bytes({0x0A, int(value.size())}) + value;
  EXPECT_EQ(tb::scalar_event(2.5, 3, "a/b", 0.5f),
            bytes({0x09}) + le(2.5) + bytes({0x10, 0x03, 0x2A, int(summary.size())}) + summary);
  // Event {wall_time: 1, file_version: "brain.Event:2"}
  EXPECT_EQ(tb::file_version_event(1.0),
            bytes({0x09}) + le(1.0) + bytes({0x1A, 13}) + "brain.Event:2");
  // HistogramProto of {1, 3, 3} in two buckets: [1, 2) holds 1, [2, 3] holds 3 and 3.
  const float v[] = {1.0f, 3.0f, 3.0f};
  EXPECT_EQ(tb::histogram_proto(v, 3, 2),
            bytes({0x09}) + le(1.0) + bytes({0x11}) + le(3.0) + bytes({0x19}) + le(3.0) +
                bytes({0x21}) + le(7.0) + bytes({0x29}) + le(19.0) + bytes({0x32, 16}) + le(2.0) +
                le(3.0) + bytes({0x3A, 16}) + le(1.0) + le(2.0));
  // Equal values: one bucket whose limit is the value.
  const float same[] = {0.5f, 0.5f};
  EXPECT_EQ(tb::histogram_proto(same, 2, 30),
            bytes({0x09}) + le(0.5) + bytes({0x11}) + le(0.5) + bytes({0x19}) + le(2.0) +
                bytes({0x21}) + le(1.0) + bytes({0x29}) + le(0.5) + bytes({0x32, 8}) + le(0.5) +
                bytes({0x3A, 8}) + le(2.0));
  // Text: tag, metadata {plugin_data {plugin_name: "text"}}, tensor {dtype: DT_STRING (7),
  // tensor_shape {}, string_val: "hi"}.
  const std::string text_value = bytes({0x0A, 0x01}) + "c" +
                                 bytes({0x4A, 0x08, 0x0A, 0x06, 0x0A, 0x04}) + "text" +
                                 bytes({0x42, 0x08, 0x08, 0x07, 0x12, 0x00, 0x42, 0x02}) + "hi";
  const std::string text_summary = bytes({0x0A, int(text_value.size())}) + text_value;
  EXPECT_EQ(
      tb::text_event(1.0, 0, "c", "hi"),
      bytes({0x09}) + le(1.0) + bytes({0x10, 0x00, 0x2A, int(text_summary.size())}) + text_summary);
}

fs::path fresh_dir(const std::string& name) {
  fs::path d = testing_util::fresh_dir("tensorboard_test", name);
  fs::create_directories(d);
  return d;
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST(TensorBoard, EventFileIsNamedForTensorBoardAndStartsWithItsVersion) {
  const fs::path d = fresh_dir("file");
  {
    EventFile f(d.string());
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    const std::string name = fs::path(f.path()).filename().string();
    EXPECT_THAT(name, ::testing::MatchesRegex("events\\.out\\.tfevents\\.[0-9]+\\..+"));
    EXPECT_EQ(name.substr(name.size() - std::strlen(host)), host);
    f.scalar("x", 7, 1.25);
    f.flush();
    const std::string b = read_all(f.path());
    const std::string first = tb::frame_record(tb::file_version_event(0.0));
    ASSERT_GT(b.size(), first.size());
    // The same length as a file_version record (wall times differ), then a scalar record.
    EXPECT_EQ(b.substr(0, 8), first.substr(0, 8));
    EXPECT_NE(b.find("brain.Event:2"), std::string::npos);
    EXPECT_EQ(b.size(), first.size() + tb::frame_record(tb::scalar_event(0, 7, "x", 1.25f)).size());
  }
  EXPECT_THROW(EventFile((d / "no" / "such" / "dir").string()), InputError);
  fs::remove_all(d);
}

// A short real run: 3 batches per epoch, a float stage then a QAT stage (LSQ weights, PACT
// activations), a step record at every batch.
const char* kRun = R"(
name: tb
seed: 5
device: cpu
log_interval: 1
data: {dataset: synthetic, synthetic_size: 48, synthetic_hw: 8, synthetic_channels: 1,
       synthetic_classes: 3, batch_size: 16, eval_batch_size: 48, num_workers: 1}
model: {name: dsnet}
quant:
  weight: {quantizer: lsq, bits: 4}
  activation: {quantizer: pact, bits: 4}
  calibration_batches: 1
stages:
  - {name: float, epochs: 2, optimizer: {name: sgd, lr: 0.05, momentum: 0.9}}
  - {name: qat, kind: qat, epochs: 1, optimizer: {name: sgd, lr: 0.01}}
)";

TEST(TensorBoard, TrainerWritesNoEventFileWhenTurnedOff) {
  const fs::path d = fresh_dir("off");
  ExperimentConfig cfg = parse_config(kRun, "tb.yaml", {"tensorboard=false", "stages.0.epochs=1"});
  TrainerOptions o;
  o.out_dir = (d / "run").string();
  o.progress = false;
  run_training(cfg, o);
  for (const auto& e : fs::directory_iterator(d / "run"))
    EXPECT_EQ(e.path().filename().string().find("tfevents"), std::string::npos) << e.path();
  EXPECT_TRUE(fs::exists(d / "run" / "log.jsonl"));
  fs::remove_all(d);
}

// The ctest label `torch` (the venv's PyPI packages). Skips only when scripts/setup.sh's venv is
// absent; a venv without tensorboard is a failure that says to rerun scripts/setup.sh.
TEST(TensorBoardTorch, TrainerEventsReadBackByTensorBoard) {
  const std::string python = LOWBIT_PYTHON;
  if (python.find(".venv") == std::string::npos)
    GTEST_SKIP() << "no project venv (.venv, scripts/setup.sh) at configure time";
  const auto [probe, why] = run_command(python + " -c 'import tensorboard, safetensors, numpy'");
  ASSERT_EQ(probe, 0) << "the venv lacks tensorboard (rerun scripts/setup.sh): " << why;
  const fs::path d = fresh_dir("roundtrip");
  const fs::path run = d / "run";
  ExperimentConfig cfg = parse_config(kRun, "tb.yaml");
  TrainerOptions o;
  o.out_dir = run.string();
  o.progress = false;
  run_training(cfg, o);
  const std::string script = std::string(LOWBIT_SOURCE_DIR) + "/tests/train/tensorboard_check.py";
  const auto [rc, out] = run_command(python + " '" + script + "' '" + run.string() + "'");
  EXPECT_EQ(rc, 0) << out;
  // What the check saw: 3 epochs x 3 steps, LSQ scales and PACT clips among the histograms.
  EXPECT_THAT(out, HasSubstr("step records 9, epoch records 3"));
  EXPECT_THAT(out, HasSubstr("quantizer kinds: alpha scale"));
  fs::remove_all(d);
}

}  // namespace
}  // namespace lowbit::train
