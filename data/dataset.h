// Datasets: random access to (image, label) samples. Images are uint8, HWC, row-major; labels
// are integer class ids in [0, num_classes()). Every reader validates what it opens (magic
// numbers, sizes, counts) and throws lowbit::InputError naming the file and what is wrong, so
// the CLI exits with code 2 on a bad data file.
//
// Readers and their file layouts (docs/data.md has the details):
//   open_idx            MNIST / Fashion-MNIST IDX pair (images 0x00000803, labels 0x00000801),
//                       raw or gzip (detected by the magic bytes 1f 8b, not by the name)
//   open_fashion_mnist  the IDX pair in a directory (default: Debian's dataset-fashion-mnist at
//                       /usr/share/datasets/fashion-mnist, or env LOWBIT_FASHION_MNIST_DIR)
//   open_cifar          CIFAR-10 / CIFAR-100 binary batches (3073- / 3074-byte records)
//   open_image_folder   root/<class>/*.jpg, ImageNet style, decoded with libjpeg-turbo
//   synthetic           deterministic random images for benchmarks and smoke tests
//
// IDX and CIFAR are loaded into memory at open (Fashion-MNIST train is 47 MB, CIFAR-10 train
// 150 MB); image folders decode each file on get(). get() is const and thread-safe: the loader
// calls it from its worker threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace lowbit::data {

struct Sample {
  std::vector<uint8_t> image;  // (height, width, channels) uint8, row-major
  int64_t label = 0;
  int64_t height = 0;
  int64_t width = 0;
  int64_t channels = 0;

  // A sample not decoded yet (Dataset::get_encoded): the JPEG file's bytes and its path for
  // messages; height, width and channels come from its header and `image` is empty. The first
  // transform decodes it (random_resized_crop only the window it keeps, docs/data.md).
  std::shared_ptr<const std::vector<uint8_t>> encoded;
  std::string source;

  Shape shape() const { return {height, width, channels}; }
  int64_t numel() const { return height * width * channels; }
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  // Sample i, for 0 <= i < size(). Thread-safe.
  virtual Sample get(int64_t i) const = 0;
  // Sample i, possibly still encoded (Sample::encoded; image folders), for a pipeline that
  // decodes it (Pipeline::augment). The default decodes: get(i).
  virtual Sample get_encoded(int64_t i) const { return get(i); }
  // The label of sample i without decoding its image.
  virtual int64_t label(int64_t i) const { return get(i).label; }
  virtual int64_t num_classes() const = 0;
  // (H, W, C) of every image; H and W are -1 when images differ in size (image folders).
  virtual Shape image_shape() const = 0;
  // One name per class (the directory names of an image folder, the Fashion-MNIST article
  // names); "0", "1", ... where the format has none.
  virtual std::vector<std::string> class_names() const;
  // A short description for logs: "fashion-mnist train (60000 images 28x28x1)".
  virtual std::string description() const = 0;

 protected:
  void check_index(int64_t i) const;  // throws naming i and size()
};

using DatasetPtr = std::shared_ptr<const Dataset>;

// Decodes an encoded sample (Sample::encoded) in place; a no-op for a decoded one.
void decode_sample(Sample& s);

// MNIST-format IDX pair. Throws InputError naming the file: missing, bad magic, zero or
// inconsistent dimensions, truncated or overlong, image and label counts that differ, corrupt
// gzip. num_classes() is the largest label + 1.
DatasetPtr open_idx(const std::string& images_path, const std::string& labels_path);

// Fashion-MNIST (or MNIST: same layout) from a directory holding
// {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (also "test-" for "t10k-" and the
// ".idx3-ubyte" spelling of some mirrors). dir "" means $LOWBIT_FASHION_MNIST_DIR when set, else
// kFashionMnistDefaultDir.
inline constexpr const char* kFashionMnistDefaultDir = "/usr/share/datasets/fashion-mnist";
std::string fashion_mnist_dir(const std::string& dir = "");
DatasetPtr open_fashion_mnist(const std::string& dir, bool train);

// CIFAR binary version. cifar10: data_batch_1.bin .. data_batch_5.bin (train) or test_batch.bin,
// records of 1 label byte + 3072 bytes (1024 R, 1024 G, 1024 B planes, row-major 32x32).
// cifar100: train.bin or test.bin, records of 2 label bytes (coarse, fine) + 3072 bytes; the
// fine label (100 classes) is used. `dir` may also be the parent of the archive's
// cifar-10-batches-bin / cifar-100-binary folder.
enum class CifarKind { cifar10, cifar100 };
DatasetPtr open_cifar(const std::string& dir, CifarKind kind, bool train);

// ImageNet-style folder: classes are the sorted names of root's subdirectories, class i holds
// the files *.jpg / *.jpeg (any case) of subdirectory i, sorted by name; other files are
// ignored. JPEGs decode to RGB (grayscale and CMYK are converted to 3 channels). Throws at
// open for a missing root, no class directories or a class without images, and at get() for
// a file that does not decode (naming the file and libjpeg's message).
DatasetPtr open_image_folder(const std::string& root);

// n images of (h, w, c) with labels in [0, classes), both a pure function of (seed, i). The
// pixels are noise around a class-dependent level per channel, so a model can learn them.
// The samples `indices` of d (each in [0, d.size())), in that order: a split, a prefix. `what`
// is added to the description ("first 1000", "search validation split").
DatasetPtr subset(DatasetPtr d, std::vector<int64_t> indices, const std::string& what);

DatasetPtr synthetic(int64_t n, int64_t h, int64_t w, int64_t c, int64_t classes,
                     uint64_t seed = 0);

}  // namespace lowbit::data
