// CIFAR-10/100 binary reader on generated batches: CHW planes to HWC, labels (fine for
// CIFAR-100), the archive-folder lookup, and the errors naming the file.
#include <filesystem>

#include "data/dataset.h"
#include "tests/common/test_util.h"
#include "tests/data/data_test_util.h"

namespace lowbit {
namespace {

using data::CifarKind;
using data::open_cifar;
using testing::TempDir;

// Pixel (c, y, x) of record `r` in file `f`: a pattern that differs per plane, row and column.
uint8_t pixel(int f, int r, int c, int y, int x) {
  return uint8_t(f * 50 + r * 7 + c * 80 + y + 3 * x);
}

std::vector<uint8_t> records(int f, const std::vector<std::vector<uint8_t>>& labels) {
  std::vector<uint8_t> out;
  for (size_t r = 0; r < labels.size(); ++r) {
    out.insert(out.end(), labels[r].begin(), labels[r].end());
    for (int c = 0; c < 3; ++c)
      for (int y = 0; y < 32; ++y)
        for (int x = 0; x < 32; ++x) out.push_back(pixel(f, int(r), c, y, x));
  }
  return out;
}

void write_cifar10(const std::string& dir) {
  std::filesystem::create_directories(dir);
  for (int f = 1; f <= 5; ++f) {
    testing::write_bytes(dir + "/data_batch_" + std::to_string(f) + ".bin",
                         records(f, {{uint8_t(f)}, {uint8_t(9 - f)}}));
  }
  testing::write_bytes(dir + "/test_batch.bin", records(0, {{3}, {1}, {4}}));
}

void check_hwc(const data::Sample& s, int f, int r) {
  ASSERT_EQ(s.shape(), (Shape{32, 32, 3}));
  for (int y : {0, 5, 31})
    for (int x : {0, 17, 31})
      for (int c = 0; c < 3; ++c) {
        ASSERT_EQ(s.image[size_t((y * 32 + x) * 3 + c)], pixel(f, r, c, y, x))
            << "y " << y << " x " << x << " c " << c;
      }
}

TEST(CifarReader, Cifar10TrainAndTest) {
  TempDir dir;
  write_cifar10(dir.path());
  auto train = open_cifar(dir.path(), CifarKind::cifar10, true);
  ASSERT_EQ(train->size(), 10);
  EXPECT_EQ(train->num_classes(), 10);
  EXPECT_EQ(train->image_shape(), (Shape{32, 32, 3}));
  EXPECT_EQ(train->class_names().at(0), "airplane");
  for (int f = 1; f <= 5; ++f) {
    const int i0 = (f - 1) * 2;
    EXPECT_EQ(train->label(i0), f);
    EXPECT_EQ(train->label(i0 + 1), 9 - f);
    check_hwc(train->get(i0), f, 0);
    check_hwc(train->get(i0 + 1), f, 1);
  }
  auto test = open_cifar(dir.path(), CifarKind::cifar10, false);
  ASSERT_EQ(test->size(), 3);
  EXPECT_EQ(test->label(2), 4);
  check_hwc(test->get(2), 0, 2);
}

TEST(CifarReader, AcceptsParentOfArchiveFolder) {
  TempDir dir;
  write_cifar10(dir.file("cifar-10-batches-bin"));
  EXPECT_EQ(open_cifar(dir.path(), CifarKind::cifar10, false)->size(), 3);
}

TEST(CifarReader, Cifar100UsesFineLabel) {
  TempDir dir;
  testing::write_bytes(dir.file("train.bin"), records(1, {{3, 77}, {19, 99}, {0, 0}}));
  testing::write_bytes(dir.file("test.bin"), records(2, {{5, 42}}));
  auto train = open_cifar(dir.path(), CifarKind::cifar100, true);
  ASSERT_EQ(train->size(), 3);
  EXPECT_EQ(train->num_classes(), 100);
  EXPECT_EQ(train->label(0), 77);
  EXPECT_EQ(train->label(1), 99);
  check_hwc(train->get(1), 1, 1);
  EXPECT_EQ(train->class_names().at(42), "42");  // no fine_label_names.txt here
  EXPECT_EQ(open_cifar(dir.path(), CifarKind::cifar100, false)->label(0), 42);
}

TEST(CifarReader, Cifar100NamesFromArchiveFile) {
  TempDir dir;
  testing::write_bytes(dir.file("test.bin"), records(2, {{5, 42}}));
  std::string names;
  for (int k = 0; k < 100; ++k) names += "class" + std::to_string(k) + "\n";
  testing::write_bytes(dir.file("fine_label_names.txt"),
                       std::vector<uint8_t>(names.begin(), names.end()));
  EXPECT_EQ(open_cifar(dir.path(), CifarKind::cifar100, false)->class_names().at(42), "class42");
}

TEST(CifarReader, Errors) {
  TempDir dir;
  write_cifar10(dir.path());
  const std::string batch3 = dir.file("data_batch_3.bin");

  std::vector<uint8_t> bytes = records(3, {{1}, {2}});
  bytes.resize(bytes.size() - 100);
  testing::write_bytes(batch3, bytes);
  EXPECT_INPUT_ERROR(open_cifar(dir.path(), CifarKind::cifar10, true), batch3, "not a whole number",
                     "3073 bytes", "1 records and 2973 bytes left over");

  testing::write_bytes(batch3, records(3, {{1}, {10}}));
  EXPECT_INPUT_ERROR(open_cifar(dir.path(), CifarKind::cifar10, true), batch3,
                     "record 1 has label 10", "[0, 10)");

  testing::write_bytes(batch3, {});
  EXPECT_INPUT_ERROR(open_cifar(dir.path(), CifarKind::cifar10, true), batch3, "empty file");

  std::filesystem::remove(batch3);
  EXPECT_INPUT_ERROR(open_cifar(dir.path(), CifarKind::cifar10, true), batch3, "missing");

  // A CIFAR-10 batch is not a CIFAR-100 file: 3073-byte records do not divide into 3074.
  testing::write_bytes(dir.file("test.bin"), records(0, {{1}, {2}, {3}}));
  EXPECT_INPUT_ERROR(open_cifar(dir.path(), CifarKind::cifar100, false), dir.file("test.bin"),
                     "3074 bytes");

  testing::write_bytes(dir.file("test.bin"), records(0, {{20, 1}}));
  EXPECT_INPUT_ERROR(open_cifar(dir.path(), CifarKind::cifar100, false), dir.file("test.bin"),
                     "coarse label 20");
  testing::write_bytes(dir.file("test.bin"), records(0, {{2, 100}}));
  EXPECT_INPUT_ERROR(open_cifar(dir.path(), CifarKind::cifar100, false), dir.file("test.bin"),
                     "record 0 has label 100");

  EXPECT_INPUT_ERROR(open_cifar(dir.file("absent"), CifarKind::cifar10, true), dir.file("absent"),
                     "not a directory");
}

}  // namespace
}  // namespace lowbit
