// Synthetic dataset: shapes, determinism by seed, label range, and bad arguments.
#include "data/dataset.h"
#include "data/in_memory_dataset.h"
#include "tests/common/test_util.h"
#include "tests/data/data_test_util.h"

namespace lowbit {
namespace {

TEST(Synthetic, ShapeLabelsAndDeterminism) {
  auto a = data::synthetic(500, 6, 5, 3, 7, 11);
  auto b = data::synthetic(500, 6, 5, 3, 7, 11);
  auto c = data::synthetic(500, 6, 5, 3, 7, 12);
  EXPECT_EQ(a->size(), 500);
  EXPECT_EQ(a->image_shape(), (Shape{6, 5, 3}));
  EXPECT_EQ(a->num_classes(), 7);
  std::vector<int> histogram(7, 0);
  int same_as_other_seed = 0;
  for (int64_t i = 0; i < a->size(); ++i) {
    const data::Sample s = a->get(i);
    ASSERT_EQ(s.shape(), (Shape{6, 5, 3}));
    ASSERT_EQ(s.image.size(), 90u);
    ASSERT_GE(s.label, 0);
    ASSERT_LT(s.label, 7);
    EXPECT_EQ(s.label, a->label(i));
    histogram[size_t(s.label)]++;
    const data::Sample t = b->get(i);
    EXPECT_EQ(s.image, t.image);
    EXPECT_EQ(s.label, t.label);
    same_as_other_seed += c->get(i).image == s.image;
  }
  for (int k = 0; k < 7; ++k) EXPECT_GT(histogram[size_t(k)], 40) << "class " << k;
  EXPECT_EQ(same_as_other_seed, 0);
  EXPECT_NE(a->get(0).image, a->get(1).image);
  EXPECT_THROW(a->get(500), Error);
}

TEST(Synthetic, ClassLevelsMakeItLearnable) {
  // Mean pixel of channel 0 per class follows the class level (label * 37 % 128) + noise mean.
  auto ds = data::synthetic(2000, 4, 4, 1, 3, 5);
  std::vector<double> sum(3, 0.0), count(3, 0.0);
  for (int64_t i = 0; i < ds->size(); ++i) {
    const data::Sample s = ds->get(i);
    for (uint8_t v : s.image) sum[size_t(s.label)] += v;
    count[size_t(s.label)] += double(s.image.size());
  }
  for (int k = 0; k < 3; ++k)
    EXPECT_NEAR(sum[size_t(k)] / count[size_t(k)], (k * 37 % 128) + 63.5, 2.0);
}

TEST(Synthetic, BadArguments) {
  EXPECT_INPUT_ERROR(data::synthetic(-1, 2, 2, 1, 2), "size");
  EXPECT_INPUT_ERROR(data::synthetic(4, 0, 2, 1, 2), "image size");
  EXPECT_INPUT_ERROR(data::synthetic(4, 2, 2, 1, 0), "classes");
}

TEST(InMemoryDataset, ValidatesItsInput) {
  EXPECT_THROW(data::InMemoryDataset({1, 2, 3}, {0}, {2, 2, 1}, 2, "t"), Error);
  EXPECT_THROW(data::InMemoryDataset({1, 2, 3, 4}, {2}, {2, 2, 1}, 2, "t"), Error);
  data::InMemoryDataset ok({1, 2, 3, 4}, {1}, {2, 2, 1}, 2, "t");
  EXPECT_EQ(ok.get(0).image, (std::vector<uint8_t>{1, 2, 3, 4}));
  EXPECT_EQ(ok.class_names(), (std::vector<std::string>{"0", "1"}));
}

}  // namespace
}  // namespace lowbit
