// safetensors: byte-exact agreement with the reference writer's own test vectors, a hand-built
// file, round trips of every dtype, every refusal the reader makes (with the file name in the
// message), failed writes that leave the old file intact, and (label torch) interoperability
// with Python's safetensors + torch.
#include "train/safetensors.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/ops.h"
#include "core/random.h"
#include "tests/common/test_util.h"

namespace lowbit::train {
namespace {

namespace fs = std::filesystem;
using testing::run_command;
using testing::tensor_of;

// A fresh directory per test, removed afterwards.
class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = ::testing::TempDir() + "lowbit_safetensors_XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }
  // Names of the entries in the directory, sorted.
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path_)) out.push_back(e.path().filename());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  std::string path_;
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char((v >> (8 * i)) & 0xff);
  return s;
}

// A file: the length, the header padded with spaces to a multiple of 8, the data.
std::string make_file(std::string header, const std::string& data) {
  header.append((8 - header.size() % 8) % 8, ' ');
  return le64(header.size()) + header + data;
}

template <typename T>
std::string raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

std::string bytes_of(std::initializer_list<int> v) {
  std::string s;
  for (int b : v) s.push_back(char(b));
  return s;
}

// The InputError message that load_safetensors throws for these file bytes.
std::string load_error(const ScratchDir& dir, const std::string& bytes) {
  const std::string path = dir.file("bad.safetensors");
  write_bytes(path, bytes);
  try {
    load_safetensors(path);
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

#define EXPECT_REFUSED(bytes, needle)                                             \
  do {                                                                            \
    const std::string msg_ = load_error(dir, bytes);                              \
    EXPECT_NE(msg_.find(needle), std::string::npos) << msg_;                      \
    EXPECT_NE(msg_.find(dir.file("bad.safetensors")), std::string::npos) << msg_; \
  } while (0)

// --- the format, byte for byte ------------------------------------------------------------------

TEST(Safetensors, MatchesReferenceWriterBytes) {
  // The expected bytes are the test vectors of the reference implementation
  // (safetensors/src/tensor.rs: test_serialization, test_empty).
  ScratchDir dir;
  const std::string path = dir.file("ref.safetensors");
  save_safetensors(path, {{"attn.0", tensor_of({0, 1, 2, 3, 4, 5}, {1, 2, 3})}});
  EXPECT_EQ(
      read_bytes(path),
      bytes_of({64, 0,  0,   0,   0,   0,   0,   0,   123, 34,  97,  116, 116, 110, 46,  48,
                34, 58, 123, 34,  100, 116, 121, 112, 101, 34,  58,  34,  70,  51,  50,  34,
                44, 34, 115, 104, 97,  112, 101, 34,  58,  91,  49,  44,  50,  44,  51,  93,
                44, 34, 100, 97,  116, 97,  95,  111, 102, 102, 115, 101, 116, 115, 34,  58,
                91, 48, 44,  50,  52,  93,  125, 125, 0,   0,   0,   0,   0,   0,   128, 63,
                0,  0,  0,   64,  0,   0,   64,  64,  0,   0,   128, 64,  0,   0,   160, 64}));
  save_safetensors(path, {});
  EXPECT_EQ(read_bytes(path), bytes_of({8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32}));
  save_safetensors(path, {}, {{"framework", "pt"}});
  EXPECT_EQ(read_bytes(path),
            bytes_of({40,  0,   0,   0,  0,  0,  0,   0,   123, 34,  95,  95,  109, 101, 116, 97,
                      100, 97,  116, 97, 95, 95, 34,  58,  123, 34,  102, 114, 97,  109, 101, 119,
                      111, 114, 107, 34, 58, 34, 112, 116, 34,  125, 125, 32,  32,  32,  32,  32}));
}

// A file written by hand: four tensors of four dtypes (a 0-d one and an empty one among them)
// and metadata, laid out as the reference writer lays them out.
std::string hand_built_file() {
  const std::string header = R"({"__metadata__":{"format":"pt"},)"
                             R"("step":{"dtype":"I64","shape":[],"data_offsets":[0,8]},)"
                             R"("weight":{"dtype":"F32","shape":[2,2],"data_offsets":[8,24]},)"
                             R"("bias":{"dtype":"BF16","shape":[2],"data_offsets":[24,28]},)"
                             R"("empty":{"dtype":"U8","shape":[0],"data_offsets":[28,28]}})";
  const std::string data = raw(std::vector<int64_t>{7}) +
                           raw(std::vector<float>{1.0f, -2.0f, 0.5f, 3.0f}) +
                           raw(std::vector<uint16_t>{0x3F80, 0xBFC0});  // bf16 1.0, -1.5
  return make_file(header, data);
}

TEST(Safetensors, ParsesHandBuiltFile) {
  ScratchDir dir;
  const std::string path = dir.file("hand.safetensors");
  const std::string bytes = hand_built_file();
  write_bytes(path, bytes);
  const SafetensorsFile f = load_safetensors(path);
  ASSERT_EQ(f.tensors.size(), 4u);
  EXPECT_EQ(f.metadata, (std::map<std::string, std::string>{{"format", "pt"}}));

  const Tensor& step = f.tensors.at("step");
  EXPECT_EQ(step.dtype(), DType::i64);
  EXPECT_EQ(step.dim(), 0);
  EXPECT_EQ(step.item(), 7.0);
  const Tensor& w = f.tensors.at("weight");
  EXPECT_EQ(w.dtype(), DType::f32);
  EXPECT_TENSOR_NEAR(w, tensor_of({1, -2, 0.5, 3}, {2, 2}), 0, 0);
  const Tensor& b = f.tensors.at("bias");
  EXPECT_EQ(b.dtype(), DType::bf16);
  EXPECT_TENSOR_NEAR(b, tensor_of({1.0, -1.5}, {2}), 0, 0);
  const Tensor& e = f.tensors.at("empty");
  EXPECT_EQ(e.dtype(), DType::u8);
  EXPECT_EQ(e.shape(), (Shape{0}));

  // Writing what was read gives the same bytes back.
  const std::string again = dir.file("again.safetensors");
  save_safetensors(again, f.tensors, f.metadata);
  EXPECT_EQ(read_bytes(again), bytes);
}

TEST(Safetensors, ReaderIgnoresHeaderOrderAndWhitespace) {
  // Entries in any order, pretty-printed JSON, tensors not in alignment order, and fields the
  // format does not define (ignored, as by the reference reader): all valid.
  ScratchDir dir;
  const std::string header =
      R"({ "b" : {"shape": [3], "data_offsets": [2, 5], "dtype": "I8", "x": 1},
    "a": {"data_offsets": [0, 2], "dtype": "U8", "shape": [1, 2]} })";
  write_bytes(dir.file("x.safetensors"), make_file(header, bytes_of({1, 2, 253, 0, 5})));
  const SafetensorsFile f = load_safetensors(dir.file("x.safetensors"));
  EXPECT_TENSOR_NEAR(f.tensors.at("a"), tensor_of({1, 2}, {1, 2}), 0, 0);
  EXPECT_TENSOR_NEAR(f.tensors.at("b"), tensor_of({-3, 0, 5}, {3}), 0, 0);
  EXPECT_TRUE(f.metadata.empty());
}

// --- round trips --------------------------------------------------------------------------------

TEST(Safetensors, RoundTripEveryDtype) {
  ScratchDir dir;
  manual_seed(41);
  std::map<std::string, Tensor> tensors;
  const DType floats[] = {DType::f32, DType::f64, DType::bf16, DType::f16};
  const DType ints[] = {DType::i8, DType::u8, DType::i32, DType::i64};
  for (DType d : floats) {
    const std::string n = dtype_name(d);
    tensors[n] = randn({3, 5}, TensorOptions(d));
    tensors[n + ".scalar"] = scalar_tensor(-1.25, TensorOptions(d));
    tensors[n + ".empty"] = zeros({2, 0, 3}, TensorOptions(d));
  }
  for (DType d : ints) {
    const std::string n = dtype_name(d);
    tensors[n] = randint(d == DType::u8 ? 0 : -100, 120, {4, 2, 3}, TensorOptions(d));
    tensors[n + ".scalar"] = scalar_tensor(d == DType::u8 ? 200 : -7, TensorOptions(d));
    tensors[n + ".empty"] = zeros({0}, TensorOptions(d));
  }
  tensors["i64.big"] = from_vector<int64_t>({INT64_MAX, INT64_MIN, 1}, {3}, DType::i64);
  tensors["strided"] = testing::non_contiguous_copy(randn({4, 6}));  // written contiguous
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"epoch", "3"}};
  const std::string path = dir.file("all.safetensors");
  save_safetensors(path, tensors, meta);

  const SafetensorsFile f = load_safetensors(path);
  EXPECT_EQ(f.metadata, meta);
  ASSERT_EQ(f.tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    SCOPED_TRACE(name);
    const Tensor& got = f.tensors.at(name);
    EXPECT_EQ(got.dtype(), t.dtype());
    EXPECT_EQ(got.shape(), t.shape());
    if (got.numel() > 0) {
      EXPECT_TRUE(got.is_contiguous());
    }
    if (name == "i64.big") {
      EXPECT_EQ(got.to_vector<int64_t>(), t.to_vector<int64_t>());  // beyond double's 53 bits
    } else {
      EXPECT_TENSOR_NEAR(got, t, 0, 0);
    }
  }
  // The header is padded to a multiple of 8, so the data section is 8-aligned; with tensors in
  // descending element size each then starts at a multiple of its own size.
  const std::string bytes = read_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
}

TEST(Safetensors, MetadataRoundTrip) {
  ScratchDir dir;
  const std::map<std::string, std::string> meta = {
      {"quotes \" and \\ backslash", "line\nbreak\ttab"},
      {"unicode", "µ-law, 量子化, ✓"},
      {"empty", ""},
      {"json", R"({"nested": [1, 2]})"}};
  const std::string path = dir.file("meta.safetensors");
  save_safetensors(path, {{"x", ones({2})}}, meta);
  EXPECT_EQ(load_safetensors(path).metadata, meta);
}

TEST(Safetensors, SaveRejectsBadNames) {
  ScratchDir dir;
  const std::string path = dir.file("n.safetensors");
  EXPECT_THROW(save_safetensors(path, {{"", ones({1})}}), Error);
  EXPECT_THROW(save_safetensors(path, {{"__metadata__", ones({1})}}), Error);
  EXPECT_THROW(save_safetensors(path, {{"x", Tensor()}}), Error);
  EXPECT_THROW(save_safetensors(path, {{std::string("bad\xff"), ones({1})}}), Error);
  EXPECT_TRUE(dir.entries().empty());  // refused before any file was created
}

// --- refusals -----------------------------------------------------------------------------------

TEST(Safetensors, RefusesShortAndTruncatedFiles) {
  ScratchDir dir;
  EXPECT_REFUSED(std::string("\x08\x00\x00", 3), "shorter than the 8-byte header length");
  EXPECT_REFUSED(std::string(), "shorter than the 8-byte header length");
  EXPECT_REFUSED(le64(200) + "{}      ", "header length 200 runs past the end of the file");
  EXPECT_REFUSED(le64(uint64_t(1) << 40) + "{}", "over the limit");
  const std::string good = hand_built_file();
  EXPECT_REFUSED(good.substr(0, good.size() - 3), "out of range");  // data cut short
  EXPECT_REFUSED(good.substr(0, 20), "runs past the end");          // header cut short
}

TEST(Safetensors, RefusesCorruptHeaders) {
  ScratchDir dir;
  EXPECT_REFUSED(make_file(R"({"a": {"dtype": "F32", )", ""), "not valid JSON");
  EXPECT_REFUSED(make_file("[1, 2]", ""), "does not start with '{'");
  EXPECT_REFUSED(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} x)",
                           raw(std::vector<float>{1})),
                 "not valid JSON");
  EXPECT_REFUSED(make_file(std::string("{\"\xff\":1}"), ""), "not valid JSON");  // not UTF-8
  EXPECT_REFUSED(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                           R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                           raw(std::vector<float>{1, 2})),
                 "names 'a' more than once");
  EXPECT_REFUSED(
      make_file(R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", raw(std::vector<float>{1})),
      "no 'shape' field");
  EXPECT_REFUSED(make_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})",
                           raw(std::vector<float>{1})),
                 "sizes >= 0");
  EXPECT_REFUSED(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})",
                           raw(std::vector<float>{1})),
                 "not a pair of offsets");
  EXPECT_REFUSED(make_file(R"({"__metadata__":{"k":1}})", ""), "entry 'k' is 1, not a string");
  EXPECT_REFUSED(make_file(R"({"a":7})", ""), "not an object");
}

TEST(Safetensors, RefusesBadDtypes) {
  ScratchDir dir;
  EXPECT_REFUSED(make_file(R"({"a":{"dtype":"Q7","shape":[1],"data_offsets":[0,1]}})", "x"),
                 "unknown dtype 'Q7'");
  EXPECT_REFUSED(make_file(R"({"a":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]}})", "x"),
                 "lowbit has no such tensor type");
  EXPECT_REFUSED(make_file(R"({"a":{"dtype":3,"shape":[1],"data_offsets":[0,1]}})", "x"),
                 "is not a string");
}

TEST(Safetensors, RefusesBadOffsets) {
  ScratchDir dir;
  const std::string f12 = raw(std::vector<float>{1, 2, 3});
  EXPECT_REFUSED(make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", f12),
                 "span 8 bytes but shape [3] of F32 needs 12");
  EXPECT_REFUSED(make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[4,16]}})", f12),
                 "data_offsets [4, 16] are out of range");
  EXPECT_REFUSED(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                           f12),
                 "overlap");
  EXPECT_REFUSED(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                           R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                           f12),
                 "bytes [4, 8) of the data section belong to no tensor");
  EXPECT_REFUSED(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", f12),
                 "4 bytes of trailing data");
  EXPECT_REFUSED(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", f12),
                 "end before they begin");
  EXPECT_REFUSED(
      make_file(R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
                f12),
      "too large");
  // Empty, but its strides would overflow int64_t (a UBSan report in contiguous_strides before;
  // found by tests/fuzz/fuzz_safetensors, corpus regress-zero-size-huge-strides).
  EXPECT_REFUSED(
      make_file(R"({"a":{"dtype":"F32","shape":[0,4611686018427387904,4611686018427387904],)"
                R"("data_offsets":[0,0]}})",
                ""),
      "too large");
  // Empty tensors with sizes whose product fits still load.
  write_bytes(dir.file("empty.safetensors"),
              make_file(R"({"a":{"dtype":"F32","shape":[0,4611686018427387904],)"
                        R"("data_offsets":[0,0]}})",
                        ""));
  const SafetensorsFile ok = load_safetensors(dir.file("empty.safetensors"));
  EXPECT_EQ(ok.tensors.at("a").numel(), 0);
}

TEST(Safetensors, RefusesMissingFilesAndDirectories) {
  ScratchDir dir;
  try {
    load_safetensors(dir.file("nope.safetensors"));
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("nope.safetensors': cannot open"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(load_safetensors(dir.path()), InputError);
}

// --- failed writes ------------------------------------------------------------------------------

// Saves a small file at `path` and checks later that it is still exactly that file.
class OldFile {
 public:
  explicit OldFile(std::string path) : path_(std::move(path)) {
    save_safetensors(path_, {{"old", tensor_of({1, 2, 3}, {3})}}, {{"v", "old"}});
    bytes_ = read_bytes(path_);
  }
  void expect_intact() const {
    EXPECT_EQ(read_bytes(path_), bytes_);
    const SafetensorsFile f = load_safetensors(path_);
    EXPECT_EQ(f.metadata.at("v"), "old");
  }

 private:
  std::string path_;
  std::string bytes_;
};

TEST(Safetensors, FailedWriteLeavesOldFileIntact) {
  // A full disk, simulated with a file-size limit: the data no longer fits.
  ScratchDir dir;
  const std::string path = dir.file("ckpt.safetensors");
  OldFile old(path);
  struct rlimit saved {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  void (*saved_handler)(int) = ::signal(SIGXFSZ, SIG_IGN);  // write() fails with EFBIG instead
  struct rlimit small = saved;
  small.rlim_cur = 64 * 1024;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string msg;
  try {
    save_safetensors(path, {{"big", zeros({1 << 20})}});
  } catch (const Error& e) {
    msg = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  ::signal(SIGXFSZ, saved_handler);
  EXPECT_NE(msg.find("ckpt.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("writing"), std::string::npos) << msg;
  old.expect_intact();
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"ckpt.safetensors"});  // no temp file left
}

TEST(Safetensors, UnwritableTemporaryLeavesOldFileIntact) {
  ScratchDir dir;
  const std::string path = dir.file("ckpt.safetensors");
  OldFile old(path);
  // The temporary name is taken by a directory: creating the file fails.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  ASSERT_EQ(::mkdir(tmp.c_str(), 0755), 0);
  EXPECT_THROW(save_safetensors(path, {{"new", ones({4})}}), Error);
  old.expect_intact();
  ::rmdir(tmp.c_str());

  // A directory that cannot be written (only meaningful when not running as root).
  if (::geteuid() != 0) {
    ASSERT_EQ(::chmod(dir.path().c_str(), 0555), 0);
    EXPECT_THROW(save_safetensors(path, {{"new", ones({4})}}), Error);
    ::chmod(dir.path().c_str(), 0755);
    old.expect_intact();
  }
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"ckpt.safetensors"});

  // A directory that does not exist.
  try {
    save_safetensors(dir.file("missing/x.safetensors"), {{"new", ones({4})}});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing/x.safetensors"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, FailedRenameRemovesTemporary) {
  // The target is a non-empty directory: rename fails after the data was written and synced.
  ScratchDir dir;
  const std::string path = dir.file("ckpt.safetensors");
  ASSERT_EQ(::mkdir(path.c_str(), 0755), 0);
  write_bytes(path + "/keep", "x");
  try {
    save_safetensors(path, {{"new", ones({4})}});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("renaming"), std::string::npos) << e.what();
  }
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"ckpt.safetensors"});
  EXPECT_EQ(read_bytes(path + "/keep"), "x");
}

TEST(Safetensors, OverwritesAtomically) {
  ScratchDir dir;
  const std::string path = dir.file("ckpt.safetensors");
  OldFile old(path);
  save_safetensors(path, {{"new", tensor_of({4, 5}, {2})}});
  const SafetensorsFile f = load_safetensors(path);
  EXPECT_EQ(f.tensors.count("old"), 0u);
  EXPECT_TENSOR_NEAR(f.tensors.at("new"), tensor_of({4, 5}, {2}), 0, 0);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"ckpt.safetensors"});
}

// --- PyTorch interoperability (label torch) -----------------------------------------------

constexpr const char* kTorchScript = R"PY(
import sys
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

src, dst = sys.argv[1], sys.argv[2]
t = load_file(src)
with safe_open(src, framework="pt") as f:
    meta = f.metadata()
assert meta == {"producer": "lowbit"}, meta

def expect(name, dtype, shape, values):
    x = t[name]
    assert x.dtype == dtype, (name, x.dtype)
    assert list(x.shape) == shape, (name, list(x.shape))
    got = x.flatten().tolist()
    assert got == values, (name, got, values)

expect("f32", torch.float32, [2, 3], [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
expect("f64", torch.float64, [3], [0.1, -2.0, 1e300])
expect("bf16", torch.bfloat16, [2], [1.0, -1.5])
expect("f16", torch.float16, [2], [0.25, 65504.0])
expect("i8", torch.int8, [3], [-128, 0, 127])
expect("u8", torch.uint8, [2], [0, 255])
expect("i32", torch.int32, [2, 1], [-7, 2147483647])
expect("i64", torch.int64, [], [-9000000000])
expect("empty", torch.float32, [0, 4], [])

save_file({
    "w": torch.arange(12, dtype=torch.float32).reshape(3, 4) / 4,
    "h": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
    "q": torch.tensor([-3, 4], dtype=torch.int8),
    "n": torch.tensor(3, dtype=torch.int64),
    "e": torch.zeros(0, 2, dtype=torch.float16),
}, dst, metadata={"producer": "torch"})
print("python side ok")
)PY";

TEST(SafetensorsTorch, InteropWithPython) {
  const auto [probe, why] =
      run_command(std::string(LOWBIT_PYTHON) + " -c 'import safetensors, torch'");
  if (probe != 0) {
    GTEST_SKIP() << "python3 cannot import safetensors and torch: " << why;
  }
  ScratchDir dir;
  const std::string from_lowbit = dir.file("lowbit.safetensors");
  const std::string from_torch = dir.file("torch.safetensors");
  const std::string script = dir.file("check.py");
  write_bytes(script, kTorchScript);
  save_safetensors(from_lowbit,
                   {{"f32", tensor_of({-1, -0.5, 0, 0.5, 1, 1.5}, {2, 3})},
                    {"f64", tensor_of({0.1, -2.0, 1e300}, {3}, DType::f64)},
                    {"bf16", tensor_of({1.0, -1.5}, {2}, DType::bf16)},
                    {"f16", tensor_of({0.25, 65504.0}, {2}, DType::f16)},
                    {"i8", tensor_of({-128, 0, 127}, {3}, DType::i8)},
                    {"u8", tensor_of({0, 255}, {2}, DType::u8)},
                    {"i32", tensor_of({-7, 2147483647}, {2, 1}, DType::i32)},
                    {"i64", from_vector<int64_t>({-9000000000}, {}, DType::i64)},
                    {"empty", zeros({0, 4})}},
                   {{"producer", "lowbit"}});
  const auto [rc, out] = run_command(std::string(LOWBIT_PYTHON) + " '" + script + "' '" +
                                     from_lowbit + "' '" + from_torch + "'");
  ASSERT_EQ(rc, 0) << out;

  const SafetensorsFile f = load_safetensors(from_torch);
  EXPECT_EQ(f.metadata.at("producer"), "torch");
  EXPECT_TENSOR_NEAR(
      f.tensors.at("w"),
      tensor_of({0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.25, 2.5, 2.75}, {3, 4}), 0, 0);
  EXPECT_EQ(f.tensors.at("h").dtype(), DType::bf16);
  EXPECT_TENSOR_NEAR(f.tensors.at("h"), tensor_of({1.5, -2.0}, {2}), 0, 0);
  EXPECT_EQ(f.tensors.at("q").dtype(), DType::i8);
  EXPECT_TENSOR_NEAR(f.tensors.at("q"), tensor_of({-3, 4}, {2}), 0, 0);
  EXPECT_EQ(f.tensors.at("n").dim(), 0);
  EXPECT_EQ(f.tensors.at("n").item(), 3.0);
  EXPECT_EQ(f.tensors.at("e").shape(), (Shape{0, 2}));
  EXPECT_EQ(f.tensors.at("e").dtype(), DType::f16);
}

}  // namespace
}  // namespace lowbit::train
