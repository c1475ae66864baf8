// MNIST / Fashion-MNIST IDX reader. An IDX file is a big-endian header (magic 00 00 <type>
// <ndims>, then ndims u32 sizes) followed by the data; we accept type 0x08 (unsigned byte) with
// 3 dims for images (n, rows, cols) and 1 dim for labels (n). Files may be gzip-compressed
// (detected by content). Every check names the file: wrong magic (including swapped image and
// label files), zero sizes, truncated or overlong data, and counts that differ between the two.
#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "data/dataset.h"
#include "data/file_io.h"
#include "data/in_memory_dataset.h"

namespace lowbit::data {

namespace {

constexpr uint32_t kImagesMagic = 0x00000803;
constexpr uint32_t kLabelsMagic = 0x00000801;

uint32_t read_be32(const uint8_t* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
}

std::string hex32(uint32_t v) {
  static const char* digits = "0123456789abcdef";
  std::string s = "0x";
  for (int shift = 28; shift >= 0; shift -= 4) s += digits[(v >> shift) & 0xf];
  return s;
}

// Which IDX this magic is, in words, for error messages.
std::string describe_magic(uint32_t magic) {
  if (magic == kImagesMagic) return "an IDX image file";
  if (magic == kLabelsMagic) return "an IDX label file";
  if ((magic >> 16) == 0x1f8b) return "gzip data (compressed twice?)";
  if ((magic >> 16) != 0) return "not an IDX file";
  return str_cat("an IDX file of type 0x", hex32((magic >> 8) & 0xff).substr(8), " with ",
                 magic & 0xff, " dimensions");
}

const char* kGzipNote = " (after gzip decompression)";

struct IdxData {
  std::vector<uint8_t> pixels;
  std::vector<int64_t> labels;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t max_label = 0;
};

IdxData load_idx(const std::string& images_path, const std::string& labels_path) {
  bool images_gz = false;
  std::vector<uint8_t> images = read_maybe_gzip(images_path, &images_gz);
  const char* inote = images_gz ? kGzipNote : "";
  LOWBIT_CHECK_INPUT(images.size() >= 4, images_path, ": ", images.size(), " bytes", inote,
                     " is too short for an IDX image header (16 bytes)");
  const uint32_t imagic = read_be32(images.data());
  LOWBIT_CHECK_INPUT(imagic == kImagesMagic, images_path, ": bad magic number ", hex32(imagic),
                     ", expected ", hex32(kImagesMagic),
                     " (IDX unsigned bytes, 3 dimensions); the file is ", describe_magic(imagic),
                     imagic == kLabelsMagic ? " - are the image and label files swapped?" : "");
  LOWBIT_CHECK_INPUT(images.size() >= 16, images_path, ": ", images.size(), " bytes", inote,
                     " is too short for an IDX image header (16 bytes)");
  const int64_t n = read_be32(images.data() + 4);
  const int64_t rows = read_be32(images.data() + 8);
  const int64_t cols = read_be32(images.data() + 12);
  LOWBIT_CHECK_INPUT(n > 0 && rows > 0 && cols > 0, images_path, ": header says ", n, " images of ",
                     rows, "x", cols, "; every size must be positive");
  // Each factor fits in 32 bits; rows * cols * n may not fit in 64 only for absurd headers.
  const unsigned __int128 want128 =
      (unsigned __int128)n * (unsigned __int128)rows * (unsigned __int128)cols + 16;
  LOWBIT_CHECK_INPUT(
      want128 == (unsigned __int128)images.size(), images_path, ": header says ", n, " images of ",
      rows, "x", cols, " (", uint64_t(want128 - 16),
      " pixel bytes after the 16-byte header) but the file", inote, " has ", images.size() - 16,
      " bytes after the header: ", want128 > images.size() ? "truncated" : "trailing data");

  bool labels_gz = false;
  const std::vector<uint8_t> labels = read_maybe_gzip(labels_path, &labels_gz);
  const char* lnote = labels_gz ? kGzipNote : "";
  LOWBIT_CHECK_INPUT(labels.size() >= 4, labels_path, ": ", labels.size(), " bytes", lnote,
                     " is too short for an IDX label header (8 bytes)");
  const uint32_t lmagic = read_be32(labels.data());
  LOWBIT_CHECK_INPUT(lmagic == kLabelsMagic, labels_path, ": bad magic number ", hex32(lmagic),
                     ", expected ", hex32(kLabelsMagic),
                     " (IDX unsigned bytes, 1 dimension); the file is ", describe_magic(lmagic),
                     lmagic == kImagesMagic ? " - are the image and label files swapped?" : "");
  LOWBIT_CHECK_INPUT(labels.size() >= 8, labels_path, ": ", labels.size(), " bytes", lnote,
                     " is too short for an IDX label header (8 bytes)");
  const int64_t nl = read_be32(labels.data() + 4);
  LOWBIT_CHECK_INPUT(nl > 0, labels_path, ": header says 0 labels");
  LOWBIT_CHECK_INPUT(int64_t(labels.size()) == 8 + nl, labels_path, ": header says ", nl,
                     " labels but the file", lnote, " has ", int64_t(labels.size()) - 8,
                     " bytes after the 8-byte header: ",
                     int64_t(labels.size()) < 8 + nl ? "truncated" : "trailing data");
  LOWBIT_CHECK_INPUT(nl == n, "count mismatch: ", images_path, " holds ", n, " images but ",
                     labels_path, " holds ", nl, " labels");

  IdxData d;
  d.rows = rows;
  d.cols = cols;
  d.labels.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) {
    d.labels[size_t(i)] = labels[size_t(8 + i)];
    d.max_label = std::max(d.max_label, d.labels[size_t(i)]);
  }
  images.erase(images.begin(), images.begin() + 16);  // one memmove, no second buffer
  d.pixels = std::move(images);
  return d;
}

}  // namespace

DatasetPtr open_idx(const std::string& images_path, const std::string& labels_path) {
  IdxData d = load_idx(images_path, labels_path);
  const int64_t n = int64_t(d.labels.size());
  const std::string desc = str_cat("IDX ", images_path, " (", n, " images ", d.rows, "x", d.cols,
                                   "x1, ", d.max_label + 1, " classes)");
  return std::make_shared<InMemoryDataset>(std::move(d.pixels), std::move(d.labels),
                                           Shape{d.rows, d.cols, 1}, d.max_label + 1, desc);
}

// ---------------------------------------------------------------------------- Fashion-MNIST

std::string fashion_mnist_dir(const std::string& dir) {
  if (!dir.empty()) return dir;
  const char* env = std::getenv("LOWBIT_FASHION_MNIST_DIR");
  if (env != nullptr && env[0] != '\0') return env;
  return kFashionMnistDefaultDir;
}

namespace {

// The names a directory may use for one IDX file, in order of preference: the original
// distribution's (also Debian's) "train-images-idx3-ubyte.gz", the uncompressed name, the
// "test-" prefix some mirrors use for "t10k-", and the Kaggle-style "train-images.idx3-ubyte".
std::vector<std::string> idx_candidates(const std::string& dir, bool train, const char* what,
                                        const char* idx) {
  std::vector<std::string> out;
  const std::vector<std::string> prefixes =
      train ? std::vector<std::string>{"train"} : std::vector<std::string>{"t10k", "test"};
  for (const std::string& p : prefixes) {
    for (const char* sep : {"-", "."}) {
      const std::string base = str_cat(dir, "/", p, "-", what, sep, idx, "-ubyte");
      out.push_back(base + ".gz");
      out.push_back(base);
    }
  }
  return out;
}

std::string find_idx(const std::string& dir, bool train, const char* what, const char* idx) {
  const std::vector<std::string> candidates = idx_candidates(dir, train, what, idx);
  const std::string found = first_existing(candidates);
  LOWBIT_CHECK_INPUT(!found.empty(), "Fashion-MNIST: no ", train ? "training" : "test", " ", what,
                     " file in ", dir, " (looked for ", candidates[0], " and ",
                     candidates.size() - 1,
                     " other spellings; install Debian's dataset-fashion-mnist package or set "
                     "LOWBIT_FASHION_MNIST_DIR)");
  return found;
}

}  // namespace

DatasetPtr open_fashion_mnist(const std::string& dir_arg, bool train) {
  const std::string dir = fashion_mnist_dir(dir_arg);
  std::error_code ec;
  LOWBIT_CHECK_INPUT(std::filesystem::is_directory(dir, ec), "Fashion-MNIST: ", dir,
                     " is not a directory (install Debian's dataset-fashion-mnist package, or "
                     "set LOWBIT_FASHION_MNIST_DIR to the folder holding the IDX files)");
  const std::string images = find_idx(dir, train, "images", "idx3");
  const std::string labels = find_idx(dir, train, "labels", "idx1");
  IdxData d = load_idx(images, labels);
  static const std::vector<std::string> kNames = {"T-shirt/top", "Trouser",   "Pullover", "Dress",
                                                  "Coat",        "Sandal",    "Shirt",    "Sneaker",
                                                  "Bag",         "Ankle boot"};
  LOWBIT_CHECK_INPUT(d.max_label < 10, labels,
                     ": Fashion-MNIST has 10 classes (labels 0..9) "
                     "but the file holds label ",
                     d.max_label);
  const int64_t n = int64_t(d.labels.size());
  const std::string desc = str_cat("fashion-mnist ", train ? "train" : "test", " (", n, " images ",
                                   d.rows, "x", d.cols, "x1, from ", dir, ")");
  return std::make_shared<InMemoryDataset>(std::move(d.pixels), std::move(d.labels),
                                           Shape{d.rows, d.cols, 1}, 10, desc, kNames);
}

}  // namespace lowbit::data
