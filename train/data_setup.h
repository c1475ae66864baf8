// Builds the train and test loaders of an experiment from its data section: the dataset
// reader, the augmentation pipeline and normalisation defaults of each dataset.
#pragma once

#include <cstdint>
#include <memory>

#include "core/device.h"
#include "data/loader.h"
#include "train/config.h"

namespace lowbit::train {

using data::Batch;
using data::DataLoader;

struct DataSource {
  std::unique_ptr<DataLoader> train;
  std::unique_ptr<DataLoader> test;
  data::DatasetPtr train_dataset;  // what train loads (splits of it: the search stage)
  int64_t num_classes = 0;
  int64_t channels = 0;
  int64_t image_size = 0;  // after crops (square)
};

DataSource make_data(const ExperimentConfig& cfg, Device device);

}  // namespace lowbit::train
