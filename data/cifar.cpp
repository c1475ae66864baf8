// CIFAR-10 / CIFAR-100 binary-version reader. A record is the label byte(s) then 3072 pixel bytes
// as three 32x32 planes (R, G, B), each row-major; we transpose to HWC once at load. Files are
// checked for a whole, non-zero number of records and labels in range; the error names the file
// and, for a bad label, the record.
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "data/dataset.h"
#include "data/file_io.h"
#include "data/in_memory_dataset.h"

namespace lowbit::data {

namespace {

constexpr int64_t kSide = 32;
constexpr int64_t kPixels = kSide * kSide * 3;

struct CifarLayout {
  const char* name = "";
  const char* subdir = "";  // the folder the official archive extracts to
  int64_t label_bytes = 1;
  int64_t label_byte = 0;  // which label byte we use (CIFAR-100: 1 = fine)
  int64_t classes = 0;
  std::vector<std::string> train_files;
  std::vector<std::string> test_files;
};

const CifarLayout& layout(CifarKind kind) {
  static const CifarLayout c10 = [] {
    CifarLayout l;
    l.name = "CIFAR-10";
    l.subdir = "cifar-10-batches-bin";
    l.label_bytes = 1;
    l.label_byte = 0;
    l.classes = 10;
    for (int k = 1; k <= 5; ++k) l.train_files.push_back(str_cat("data_batch_", k, ".bin"));
    l.test_files = {"test_batch.bin"};
    return l;
  }();
  static const CifarLayout c100 = [] {
    CifarLayout l;
    l.name = "CIFAR-100";
    l.subdir = "cifar-100-binary";
    l.label_bytes = 2;
    l.label_byte = 1;
    l.classes = 100;
    l.train_files = {"train.bin"};
    l.test_files = {"test.bin"};
    return l;
  }();
  return kind == CifarKind::cifar10 ? c10 : c100;
}

const std::vector<std::string>& cifar10_names() {
  static const std::vector<std::string> names = {
      "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};
  return names;
}

// The archive's label-name file (batches.meta.txt, fine_label_names.txt), one name per line,
// when present and complete; else no names.
std::vector<std::string> read_names(const std::string& path, int64_t classes) {
  std::ifstream in(path);
  std::vector<std::string> names;
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty()) names.push_back(line);
  }
  if (int64_t(names.size()) != classes) names.clear();
  return names;
}

}  // namespace

DatasetPtr open_cifar(const std::string& dir_arg, CifarKind kind, bool train) {
  const CifarLayout& L = layout(kind);
  const std::vector<std::string>& files = train ? L.train_files : L.test_files;
  std::error_code ec;
  LOWBIT_CHECK_INPUT(std::filesystem::is_directory(dir_arg, ec), L.name, ": ", dir_arg,
                     " is not a directory");
  // Accept the folder holding the .bin files or the parent of the archive's folder.
  std::string dir = dir_arg;
  if (!std::filesystem::exists(dir + "/" + files[0], ec) &&
      std::filesystem::exists(dir + "/" + L.subdir + "/" + files[0], ec)) {
    dir = dir + "/" + L.subdir;
  }
  const int64_t record = L.label_bytes + kPixels;
  std::vector<uint8_t> pixels;
  std::vector<int64_t> labels;
  for (const std::string& f : files) {
    const std::string path = dir + "/" + f;
    LOWBIT_CHECK_INPUT(std::filesystem::exists(path, ec), L.name, ": missing ", path,
                       " (expected the binary version: ", files.front(),
                       files.size() > 1 ? " ... " + files.back() : std::string(), ")");
    const std::vector<uint8_t> bytes = read_file_bytes(path);
    const int64_t size = int64_t(bytes.size());
    LOWBIT_CHECK_INPUT(size > 0, path, ": empty file");
    LOWBIT_CHECK_INPUT(size % record == 0, path, ": ", size, " bytes is not a whole number of ",
                       L.name, " records of ", record, " bytes (", L.label_bytes,
                       " label byte(s) + 3072 pixels): ", size / record, " records and ",
                       size % record, " bytes left over; truncated, or not a ", L.name,
                       " binary batch?");
    const int64_t n = size / record;
    const size_t base = pixels.size();
    pixels.resize(base + size_t(n * kPixels));
    for (int64_t r = 0; r < n; ++r) {
      const uint8_t* rec = bytes.data() + r * record;
      if (L.label_bytes == 2) {
        LOWBIT_CHECK_INPUT(rec[0] < 20, path, ": record ", r, " has coarse label ", int(rec[0]),
                           ", outside [0, 20)");
      }
      const int64_t label = rec[L.label_byte];
      LOWBIT_CHECK_INPUT(label < L.classes, path, ": record ", r, " has label ", label,
                         ", outside [0, ", L.classes, ") for ", L.name);
      labels.push_back(label);
      const uint8_t* planes = rec + L.label_bytes;
      uint8_t* out = pixels.data() + base + size_t(r * kPixels);
      for (int64_t p = 0; p < kSide * kSide; ++p) {
        for (int64_t c = 0; c < 3; ++c) out[p * 3 + c] = planes[c * kSide * kSide + p];
      }
    }
  }
  const int64_t n = int64_t(labels.size());
  const std::string desc =
      str_cat(kind == CifarKind::cifar10 ? "cifar10 " : "cifar100 ", train ? "train" : "test", " (",
              n, " images 32x32x3, from ", dir, ")");
  std::vector<std::string> names = kind == CifarKind::cifar10
                                       ? cifar10_names()
                                       : read_names(dir + "/fine_label_names.txt", L.classes);
  return std::make_shared<InMemoryDataset>(std::move(pixels), std::move(labels),
                                           Shape{kSide, kSide, 3}, L.classes, desc,
                                           std::move(names));
}

}  // namespace lowbit::data
