#include "train/data_setup.h"

#include <algorithm>

#include "core/error.h"
#include "dist/world.h"
#include "train/registries.h"

namespace lowbit::train {

namespace {

// The first n samples of a dataset (smoke tests, quick runs).
data::DatasetPtr limit(data::DatasetPtr d, int64_t n) {
  if (!(n > 0 && n < d->size())) return d;
  std::vector<int64_t> idx(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) idx[size_t(i)] = i;
  return data::subset(d, std::move(idx), str_cat("first ", n));
}

std::vector<float> as_floats(const std::vector<double>& v) {
  return std::vector<float>(v.begin(), v.end());
}

// data.dataset (train/registries.h): the readers, normalisation and geometry of each dataset.
const bool kDatasetsRegistered = [] {
  using Cfg = const ExperimentConfig&;
  using Norm = std::pair<std::vector<float>, std::vector<float>>;
  auto& r = dataset_registry();
  DatasetSpec fmnist;
  fmnist.open = [](Cfg c) {
    return std::make_pair(data::open_fashion_mnist(c.data.root, true),
                          data::open_fashion_mnist(c.data.root, false));
  };
  fmnist.normalisation = [](const DataConfig&) {
    return Norm{data::kFashionMnistMean, data::kFashionMnistStd};
  };
  fmnist.geometry = [](const DataConfig&) { return DatasetGeometry{28, 1, 10}; };
  r.add("fashion_mnist", fmnist);
  DatasetSpec mnist = fmnist;  // the same IDX reader; no default folder
  mnist.open = [](Cfg c) {
    LOWBIT_CHECK_INPUT(!c.data.root.empty(), c.file,
                       ": data.root: mnist needs the folder of its IDX files");
    return std::make_pair(data::open_fashion_mnist(c.data.root, true),
                          data::open_fashion_mnist(c.data.root, false));
  };
  mnist.normalisation = [](const DataConfig&) { return Norm{{0.1307f}, {0.3081f}}; };
  r.add("mnist", mnist);
  for (auto [name, kind] : {std::make_pair("cifar10", data::CifarKind::cifar10),
                            std::make_pair("cifar100", data::CifarKind::cifar100)}) {
    DatasetSpec cifar;
    const data::CifarKind k = kind;
    cifar.open = [k](Cfg c) {
      return std::make_pair(data::open_cifar(c.data.root, k, true),
                            data::open_cifar(c.data.root, k, false));
    };
    cifar.normalisation = [k](const DataConfig&) {
      return k == data::CifarKind::cifar10
                 ? Norm{data::kCifar10Mean, data::kCifar10Std}
                 : Norm{{0.5071f, 0.4865f, 0.4409f}, {0.2673f, 0.2564f, 0.2762f}};
    };
    cifar.geometry = [k](const DataConfig&) {
      return DatasetGeometry{32, 3, k == data::CifarKind::cifar10 ? 10 : 100};
    };
    r.add(name, cifar);
  }
  DatasetSpec imagenet;
  imagenet.open = [](Cfg c) {
    return std::make_pair(data::open_image_folder(c.data.root + "/train"),
                          data::open_image_folder(c.data.root + "/val"));
  };
  imagenet.normalisation = [](const DataConfig&) {
    return Norm{data::kImageNetMean, data::kImageNetStd};
  };
  imagenet.geometry = [](const DataConfig& d) {
    return DatasetGeometry{d.image_size > 0 ? d.image_size : 224, 3, 1000};
  };
  imagenet.crops = true;
  r.add("imagenet", imagenet);
  DatasetSpec synthetic;
  synthetic.open = [](Cfg c) {
    const DataConfig& d = c.data;
    return std::make_pair(
        data::synthetic(d.synthetic_size, d.synthetic_hw, d.synthetic_hw, d.synthetic_channels,
                        d.synthetic_classes, c.seed),
        data::synthetic(std::max<int64_t>(d.synthetic_size / 4, 1), d.synthetic_hw, d.synthetic_hw,
                        d.synthetic_channels, d.synthetic_classes, c.seed + 1));
  };
  synthetic.normalisation = [](const DataConfig& d) {
    return Norm{std::vector<float>(size_t(d.synthetic_channels), 0.5f),
                std::vector<float>(size_t(d.synthetic_channels), 0.25f)};
  };
  synthetic.geometry = [](const DataConfig& d) {
    return DatasetGeometry{d.synthetic_hw, d.synthetic_channels, d.synthetic_classes};
  };
  r.add("synthetic", synthetic);
  return true;
}();

}  // namespace

DataSource make_data(const ExperimentConfig& cfg, Device device) {
  const DataConfig& d = cfg.data;
  const DatasetSpec& spec = dataset_registry().get(d.dataset);
  auto [train, test] = spec.open(cfg);
  auto [mean, stddev] = spec.normalisation(d);
  train = limit(train, d.max_train_samples);
  test = limit(test, d.max_test_samples);
  if (!d.mean.empty()) {
    mean = as_floats(d.mean);
    stddev = as_floats(d.std);
  }
  const Shape shape = train->image_shape();
  const int64_t channels = shape[2];
  if (!d.mean.empty() && int64_t(d.mean.size()) != channels) {
    throw InputError(str_cat(cfg.file, ": data.mean has ", d.mean.size(),
                             " values but the images have ", channels, " channels"));
  }

  std::vector<data::TransformPtr> train_steps, test_steps;
  int64_t size = shape[0];
  if (spec.crops) {
    const int64_t s = d.image_size > 0 ? d.image_size : 224;
    train_steps.push_back(
        d.random_resized_crop
            ? data::random_resized_crop(s, s, {0.08, 1.0}, {3.0 / 4.0, 4.0 / 3.0}, d.scaled_decode)
            : data::center_crop(s, s));
    if (d.resize > 0) test_steps.push_back(data::resize_shorter(d.resize));
    test_steps.push_back(data::center_crop(s, s));
    size = s;
  } else if (d.random_crop_padding > 0) {
    train_steps.push_back(data::random_crop(shape[0], shape[1], d.random_crop_padding));
  }
  if (d.hflip) train_steps.push_back(data::random_horizontal_flip());

  DataSource out;
  data::LoaderOptions lo;
  lo.batch_size = d.batch_size;
  lo.shuffle = true;
  lo.drop_last = false;
  lo.num_workers = d.num_workers;
  lo.seed = cfg.seed;
  lo.device = device;
  // Each rank of a data-parallel run reads its shard (data/loader.h): training shards are padded
  // to equal length, evaluation shards are not, so every test image is counted exactly once.
  const dist::WorldInfo& w = dist::world();
  lo.rank = w.rank;
  lo.world_size = w.size;
  LOWBIT_CHECK_INPUT(w.size == 1 || train->size() >= w.size, cfg.file, ": the training set has ",
                     train->size(), " samples, fewer than the ", w.size,
                     " ranks of this run; use fewer ranks or more data");
  out.train_dataset = train;
  out.train = std::make_unique<DataLoader>(
      train, lo, data::Pipeline(train_steps, data::to_tensor_normalize(mean, stddev)));
  data::LoaderOptions eo = lo;
  eo.batch_size = d.eval_batch_size;
  eo.shuffle = false;
  eo.pad_shards = false;
  out.test = std::make_unique<DataLoader>(
      test, eo, data::Pipeline(test_steps, data::to_tensor_normalize(mean, stddev)));
  out.num_classes = std::max(train->num_classes(), test->num_classes());
  out.channels = channels;
  out.image_size = size;
  return out;
}

}  // namespace lowbit::train
