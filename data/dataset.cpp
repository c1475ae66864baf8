// The Dataset base, InMemoryDataset (the storage of the IDX and CIFAR readers) and the
// synthetic dataset.
#include "data/dataset.h"

#include <algorithm>

#include "core/error.h"
#include "core/philox.h"
#include "data/in_memory_dataset.h"

namespace lowbit::data {

std::vector<std::string> Dataset::class_names() const {
  std::vector<std::string> names;
  for (int64_t k = 0; k < num_classes(); ++k) names.push_back(std::to_string(k));
  return names;
}

void Dataset::check_index(int64_t i) const {
  LOWBIT_CHECK(i >= 0 && i < size(), "sample index ", i, " out of range for ", description(),
               " (size ", size(), ")");
}

// ---------------------------------------------------------------------------- InMemoryDataset

InMemoryDataset::InMemoryDataset(std::vector<uint8_t> pixels, std::vector<int64_t> labels,
                                 Shape image_shape, int64_t num_classes, std::string description,
                                 std::vector<std::string> class_names)
    : pixels_(std::move(pixels)),
      labels_(std::move(labels)),
      shape_(std::move(image_shape)),
      num_classes_(num_classes),
      description_(std::move(description)),
      class_names_(std::move(class_names)) {
  LOWBIT_CHECK(shape_.size() == 3 && shape_[0] > 0 && shape_[1] > 0 && shape_[2] > 0, description_,
               ": image shape must be (H, W, C) with positive sizes, got ", shape_);
  image_bytes_ = numel_of(shape_);
  LOWBIT_CHECK(int64_t(pixels_.size()) == image_bytes_ * int64_t(labels_.size()), description_,
               ": ", pixels_.size(), " pixel bytes for ", labels_.size(), " images of ", shape_,
               " (expected ", image_bytes_ * int64_t(labels_.size()), ")");
  LOWBIT_CHECK(num_classes_ > 0, description_, ": num_classes must be positive, got ",
               num_classes_);
  for (size_t i = 0; i < labels_.size(); ++i) {
    LOWBIT_CHECK(labels_[i] >= 0 && labels_[i] < num_classes_, description_, ": label ", labels_[i],
                 " of sample ", i, " is outside [0, ", num_classes_, ")");
  }
  LOWBIT_CHECK(class_names_.empty() || int64_t(class_names_.size()) == num_classes_, description_,
               ": ", class_names_.size(), " class names for ", num_classes_, " classes");
}

Sample InMemoryDataset::get(int64_t i) const {
  check_index(i);
  Sample s;
  const uint8_t* p = image_data(i);
  s.image.assign(p, p + image_bytes_);
  s.label = labels_[size_t(i)];
  s.height = shape_[0];
  s.width = shape_[1];
  s.channels = shape_[2];
  return s;
}

int64_t InMemoryDataset::label(int64_t i) const {
  check_index(i);
  return labels_[size_t(i)];
}

std::vector<std::string> InMemoryDataset::class_names() const {
  return class_names_.empty() ? Dataset::class_names() : class_names_;
}

// ---------------------------------------------------------------------------- synthetic

namespace {

class SyntheticDataset final : public Dataset {
 public:
  SyntheticDataset(int64_t n, Shape shape, int64_t classes, uint64_t seed)
      : n_(n), shape_(std::move(shape)), classes_(classes), seed_(seed) {}

  int64_t size() const override { return n_; }
  int64_t num_classes() const override { return classes_; }
  Shape image_shape() const override { return shape_; }
  std::string description() const override {
    return str_cat("synthetic (", n_, " images ", shape_[0], "x", shape_[1], "x", shape_[2], ", ",
                   classes_, " classes, seed ", seed_, ")");
  }

  int64_t label(int64_t i) const override {
    check_index(i);
    const core::Philox4x32 r = core::Philox4x32::at(seed_, kLabelStream, uint64_t(i));
    return int64_t(((uint64_t(r.c[0]) << 32) | r.c[1]) % uint64_t(classes_));
  }

  Sample get(int64_t i) const override {
    Sample s;
    s.label = label(i);
    s.height = shape_[0];
    s.width = shape_[1];
    s.channels = shape_[2];
    s.image.resize(size_t(s.numel()));
    const int64_t c = shape_[2];
    // Pixel = a class- and channel-dependent level in [0, 128) plus noise in [0, 128). The noise
    // is SplitMix64 seeded per image by Philox: cheap (8 pixels per step) and still a pure
    // function of (seed, i), so benchmarks measure the pipeline rather than the generator.
    const core::Philox4x32 r = core::Philox4x32::at(seed_, kPixelStream, uint64_t(i));
    uint64_t state = (uint64_t(r.c[0]) << 32) | r.c[1];
    uint64_t word = 0;
    for (int64_t k = 0; k < s.numel(); ++k) {
      if (k % 8 == 0) word = splitmix64(state);
      const int64_t ch = k % c;
      const uint32_t level = uint32_t((s.label * 37 + ch * 59) % 128);
      s.image[size_t(k)] = uint8_t(level + ((word >> (8 * (k % 8))) & 0x7f));
    }
    return s;
  }

 private:
  // Philox offsets (streams) of the labels and of the per-image noise seeds.
  static constexpr uint64_t kLabelStream = 0x5eed1abe1ULL;
  static constexpr uint64_t kPixelStream = 0x5eed91e15ULL;

  // Steele, Lea and Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014.
  static uint64_t splitmix64(uint64_t& state) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  int64_t n_;
  Shape shape_;
  int64_t classes_;
  uint64_t seed_;
};

}  // namespace

namespace {

class Subset : public Dataset {
 public:
  Subset(DatasetPtr inner, std::vector<int64_t> idx, std::string what)
      : inner_(std::move(inner)), idx_(std::move(idx)), what_(std::move(what)) {
    for (int64_t i : idx_) {
      LOWBIT_CHECK(i >= 0 && i < inner_->size(), "subset: index ", i, " out of range for ",
                   inner_->description());
    }
  }
  int64_t size() const override { return int64_t(idx_.size()); }
  Sample get(int64_t i) const override {
    check_index(i);
    return inner_->get(idx_[size_t(i)]);
  }
  int64_t label(int64_t i) const override {
    check_index(i);
    return inner_->label(idx_[size_t(i)]);
  }
  int64_t num_classes() const override { return inner_->num_classes(); }
  Shape image_shape() const override { return inner_->image_shape(); }
  std::vector<std::string> class_names() const override { return inner_->class_names(); }
  std::string description() const override {
    return str_cat(inner_->description(), ", ", what_, " (", idx_.size(), ")");
  }

 private:
  DatasetPtr inner_;
  std::vector<int64_t> idx_;
  std::string what_;
};

}  // namespace

DatasetPtr subset(DatasetPtr d, std::vector<int64_t> indices, const std::string& what) {
  return std::make_shared<Subset>(std::move(d), std::move(indices), what);
}

DatasetPtr synthetic(int64_t n, int64_t h, int64_t w, int64_t c, int64_t classes, uint64_t seed) {
  LOWBIT_CHECK_INPUT(n >= 0, "synthetic dataset: size must be >= 0, got ", n);
  LOWBIT_CHECK_INPUT(h > 0 && w > 0 && c > 0,
                     "synthetic dataset: image size must be positive, got ", h, "x", w, "x", c);
  LOWBIT_CHECK_INPUT(classes > 0, "synthetic dataset: classes must be positive, got ", classes);
  return std::make_shared<SyntheticDataset>(n, Shape{h, w, c}, classes, seed);
}

}  // namespace lowbit::data
