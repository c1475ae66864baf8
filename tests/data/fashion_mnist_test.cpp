// Real data: Fashion-MNIST from Debian's dataset-fashion-mnist package (scripts/setup.sh installs
// it; LOWBIT_FASHION_MNIST_DIR overrides the location). Skips, saying why, when it is absent.
#include <filesystem>

#include "data/dataset.h"
#include "data/file_io.h"
#include "data/loader.h"
#include "tests/common/test_util.h"

namespace lowbit {
namespace {

bool have_fashion_mnist(std::string* dir) {
  *dir = data::fashion_mnist_dir("");
  return !data::first_existing(
              {*dir + "/train-images-idx3-ubyte.gz", *dir + "/train-images-idx3-ubyte"})
              .empty();
}

#define SKIP_WITHOUT_FASHION_MNIST(dir)                                                   \
  if (!have_fashion_mnist(&dir)) {                                                        \
    GTEST_SKIP() << "Fashion-MNIST not found in " << dir                                  \
                 << ": install Debian's dataset-fashion-mnist (scripts/setup.sh) or set " \
                    "LOWBIT_FASHION_MNIST_DIR";                                           \
  }

void check_split(const data::Dataset& ds, int64_t n) {
  ASSERT_EQ(ds.size(), n);
  EXPECT_EQ(ds.image_shape(), (Shape{28, 28, 1}));
  EXPECT_EQ(ds.num_classes(), 10);
  std::vector<int64_t> histogram(10, 0);
  for (int64_t i = 0; i < ds.size(); ++i) histogram[size_t(ds.label(i))]++;
  for (int64_t k = 0; k < 10; ++k) EXPECT_EQ(histogram[size_t(k)], n / 10) << "class " << k;
  const data::Sample s = ds.get(0);
  EXPECT_EQ(s.shape(), (Shape{28, 28, 1}));
}

TEST(FashionMnist, DebianFilesTrainAndTest) {
  std::string dir;
  SKIP_WITHOUT_FASHION_MNIST(dir);
  auto train = data::open_fashion_mnist(dir, true);
  check_split(*train, 60000);
  // The first training image is an ankle boot (label 9) in every copy of the dataset.
  EXPECT_EQ(train->label(0), 9);
  EXPECT_EQ(train->class_names().at(9), "Ankle boot");
  auto test = data::open_fashion_mnist(dir, false);
  check_split(*test, 10000);
}

TEST(FashionMnist, NormalisedTestSetThroughTheLoader) {
  std::string dir;
  SKIP_WITHOUT_FASHION_MNIST(dir);
  // The published statistics (mean 0.2860, std 0.3530 over the training pixels) should make
  // the normalised test set roughly zero-mean, unit-variance.
  data::LoaderOptions o;
  o.batch_size = 1000;
  o.num_workers = 2;
  data::DataLoader loader(data::open_fashion_mnist(dir, false), o,
                          data::Pipeline({}, data::to_tensor_normalize(data::kFashionMnistMean,
                                                                       data::kFashionMnistStd)));
  double sum = 0, sum_sq = 0, count = 0;
  data::Batch b;
  int64_t batches = 0;
  while (loader.next(b)) {
    ++batches;
    EXPECT_EQ(b.images.shape(), (Shape{1000, 28, 28, 1}));
    for (float v : b.images.to_vector<float>()) {
      sum += v;
      sum_sq += double(v) * v;
      count += 1;
    }
  }
  EXPECT_EQ(batches, 10);
  const double mean = sum / count;
  const double var = sum_sq / count - mean * mean;
  EXPECT_NEAR(mean, 0.0, 0.03);
  EXPECT_NEAR(std::sqrt(var), 1.0, 0.03);
}

}  // namespace
}  // namespace lowbit
