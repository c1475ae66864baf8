// InMemoryDataset: n fixed-size uint8 HWC images in one contiguous buffer plus their labels.
// The IDX and CIFAR readers decode into it; tests and tools can build one from bytes directly.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"

namespace lowbit::data {

class InMemoryDataset final : public Dataset {
 public:
  // pixels: n * h * w * c bytes, image i at i * h * w * c (HWC). labels: n values in
  // [0, num_classes). Throws lowbit::Error on inconsistent sizes or labels out of range.
  InMemoryDataset(std::vector<uint8_t> pixels, std::vector<int64_t> labels, Shape image_shape,
                  int64_t num_classes, std::string description,
                  std::vector<std::string> class_names = {});

  int64_t size() const override { return int64_t(labels_.size()); }
  Sample get(int64_t i) const override;
  int64_t label(int64_t i) const override;
  int64_t num_classes() const override { return num_classes_; }
  Shape image_shape() const override { return shape_; }
  std::vector<std::string> class_names() const override;
  std::string description() const override { return description_; }

  // Image i in place: h * w * c bytes.
  const uint8_t* image_data(int64_t i) const { return pixels_.data() + i * image_bytes_; }

 private:
  std::vector<uint8_t> pixels_;
  std::vector<int64_t> labels_;
  Shape shape_;
  int64_t image_bytes_ = 0;
  int64_t num_classes_ = 0;
  std::string description_;
  std::vector<std::string> class_names_;
};

}  // namespace lowbit::data
