// Image-folder reader on JPEGs the test encodes with libjpeg: class and file order, RGB and
// grayscale decoding, and errors (corrupt and truncated files, empty classes) naming the path.
#include <filesystem>

#include "data/dataset.h"
#include "data/file_io.h"
#include "data/jpeg.h"
#include "tests/common/test_util.h"
#include "tests/data/data_test_util.h"

namespace lowbit {
namespace {

using testing::TempDir;

// A smooth (h, w, channels) image: JPEG keeps it to within a few levels.
std::vector<uint8_t> smooth(int h, int w, int channels, int base) {
  std::vector<uint8_t> p;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < channels; ++c) p.push_back(uint8_t(base + 2 * y + x + 30 * c));
  return p;
}

void expect_close(const std::vector<uint8_t>& got, const std::vector<uint8_t>& want, int tol) {
  ASSERT_EQ(got.size(), want.size());
  int worst = 0;
  for (size_t i = 0; i < got.size(); ++i)
    worst = std::max(worst, std::abs(int(got[i]) - int(want[i])));
  EXPECT_LE(worst, tol);
}

void put_jpeg(const std::string& path, int h, int w, int channels, int base) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  testing::write_bytes(path, testing::encode_jpeg(smooth(h, w, channels, base), h, w, channels));
}

class ImageFolder : public ::testing::Test {
 protected:
  void SetUp() override {
    put_jpeg(dir.file("cat/b.JPEG"), 8, 16, 3, 40);
    put_jpeg(dir.file("cat/a.jpg"), 16, 8, 3, 20);
    put_jpeg(dir.file("dog/c.jpeg"), 10, 12, 3, 60);
    testing::write_bytes(dir.file("dog/notes.txt"), {'h', 'i'});
    put_jpeg(dir.file("ant/gray.jpg"), 9, 7, 1, 100);
  }
  TempDir dir;
};

TEST_F(ImageFolder, ClassesSortedFilesSorted) {
  auto ds = data::open_image_folder(dir.path());
  ASSERT_EQ(ds->size(), 4);  // notes.txt ignored
  EXPECT_EQ(ds->num_classes(), 3);
  EXPECT_EQ(ds->class_names(), (std::vector<std::string>{"ant", "cat", "dog"}));
  EXPECT_EQ(ds->image_shape(), (Shape{-1, -1, 3}));
  EXPECT_EQ(ds->label(0), 0);
  EXPECT_EQ(ds->label(1), 1);
  EXPECT_EQ(ds->label(2), 1);
  EXPECT_EQ(ds->label(3), 2);
  const data::Sample a = ds->get(1);  // cat/a.jpg sorts before cat/b.JPEG
  EXPECT_EQ(a.shape(), (Shape{16, 8, 3}));
  expect_close(a.image, smooth(16, 8, 3, 20), 4);
  const data::Sample b = ds->get(2);
  EXPECT_EQ(b.shape(), (Shape{8, 16, 3}));
  expect_close(b.image, smooth(8, 16, 3, 40), 4);
  const data::Sample c = ds->get(3);
  EXPECT_EQ(c.label, 2);
  expect_close(c.image, smooth(10, 12, 3, 60), 4);
}

TEST_F(ImageFolder, GrayscaleBecomesThreeEqualChannels) {
  const data::Sample g = data::open_image_folder(dir.path())->get(0);
  ASSERT_EQ(g.shape(), (Shape{9, 7, 3}));
  const std::vector<uint8_t> want = smooth(9, 7, 1, 100);
  for (size_t p = 0; p < want.size(); ++p) {
    EXPECT_EQ(g.image[p * 3], g.image[p * 3 + 1]);
    EXPECT_EQ(g.image[p * 3], g.image[p * 3 + 2]);
    EXPECT_NEAR(int(g.image[p * 3]), int(want[p]), 3);
  }
}

TEST_F(ImageFolder, CorruptJpegNamesTheFile) {
  const std::string bad = dir.file("cat/c_bad.jpg");
  testing::write_bytes(bad, {'n', 'o', 't', ' ', 'a', ' ', 'j', 'p', 'e', 'g'});
  auto ds = data::open_image_folder(dir.path());  // listing does not decode
  ASSERT_EQ(ds->size(), 5);
  EXPECT_INPUT_ERROR(ds->get(3), bad, "corrupt or truncated JPEG", "Not a JPEG file");
  EXPECT_NO_THROW(ds->get(2));  // the reader is still usable
}

TEST_F(ImageFolder, TruncatedJpegNamesTheFile) {
  const std::string cut = dir.file("cat/a.jpg");
  std::vector<uint8_t> bytes = data::read_file_bytes(cut);
  bytes.resize(bytes.size() / 2);
  testing::write_bytes(cut, bytes);
  EXPECT_INPUT_ERROR(data::open_image_folder(dir.path())->get(1), cut, "corrupt or truncated JPEG",
                     "Premature end");
}

TEST_F(ImageFolder, EmptyFileNamed) {
  const std::string empty = dir.file("dog/empty.jpg");
  testing::write_bytes(empty, {});
  EXPECT_INPUT_ERROR(data::open_image_folder(dir.path())->get(4), empty, "empty file");  // after c
}

TEST(ImageFolderErrors, LayoutProblems) {
  TempDir dir;
  EXPECT_INPUT_ERROR(data::open_image_folder(dir.file("absent")), dir.file("absent"),
                     "not a directory");
  EXPECT_INPUT_ERROR(data::open_image_folder(dir.path()), dir.path(), "no class subdirectories");
  std::filesystem::create_directories(dir.file("a"));
  std::filesystem::create_directories(dir.file("b"));
  put_jpeg(dir.file("a/x.jpg"), 4, 4, 3, 0);
  testing::write_bytes(dir.file("b/readme.txt"), {'x'});
  EXPECT_INPUT_ERROR(data::open_image_folder(dir.path()), dir.file("b"), "no .jpg/.jpeg files");
}

TEST(Jpeg, CutFileEndingWithAMarkerIsRefused) {
  // The first half of a JPEG followed by an EOI marker: libjpeg only warns ("premature end of
  // data segment") and fills the rest with gray for as many rows as the header claims, so a
  // short file claiming a huge size took seconds and gigabytes (found by tests/fuzz/fuzz_jpeg,
  // corpus regress-huge-dims-hit-marker). It is a truncated file: refused.
  std::vector<uint8_t> px(64 * 64 * 3);
  for (size_t i = 0; i < px.size(); ++i) px[i] = uint8_t((i * 7919) % 251);
  std::vector<uint8_t> jpg = testing::encode_jpeg(px, 64, 64, 3, 90);
  jpg.resize(jpg.size() / 2);
  jpg.push_back(0xff);
  jpg.push_back(0xd9);
  EXPECT_INPUT_ERROR(data::decode_jpeg(jpg.data(), jpg.size(), "cut.jpg"), "cut.jpg",
                     "corrupt or truncated JPEG", "premature end of data segment");
}

TEST(Jpeg, DecodeMatchesEncodedColours) {
  // A 2-colour block image, quality 100 without subsampling: near-exact.
  std::vector<uint8_t> px;
  for (int y = 0; y < 16; ++y)
    for (int x = 0; x < 16; ++x) {
      const bool left = x < 8;
      px.push_back(left ? 200 : 10);
      px.push_back(left ? 30 : 120);
      px.push_back(left ? 90 : 250);
    }
  const std::vector<uint8_t> jpg = testing::encode_jpeg(px, 16, 16, 3, 100);
  const data::DecodedImage img = data::decode_jpeg(jpg.data(), jpg.size(), "mem.jpg");
  EXPECT_EQ(img.height, 16);
  EXPECT_EQ(img.width, 16);
  expect_close(img.pixels, px, 3);
}

}  // namespace
}  // namespace lowbit
