// decode_jpeg_window (the scaled, cropped decode behind random_resized_crop on image folders)
// against decoding the whole file: the same pixels at full scale, a close downscale at n/8, the
// scale rule, the crop parameters of the exact path, and corrupt files named.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <vector>

#include "data/dataset.h"
#include "data/jpeg.h"
#include "data/transforms.h"
#include "tests/common/test_util.h"
#include "tests/data/data_test_util.h"

namespace lowbit {
namespace {

using data::decode_jpeg;
using data::decode_jpeg_window;

// A photo-like (h, w, 3) image: smooth shading, edges and some texture.
std::vector<uint8_t> photo(int h, int w, uint32_t seed) {
  std::vector<uint8_t> p;
  uint32_t r = seed;
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      r = r * 1664525u + 1013904223u;
      const int noise = int(r >> 28) - 8;
      for (int c = 0; c < 3; ++c) {
        const double v = 128 + 80 * std::sin(0.07 * x + 0.05 * y + c) +
                         ((x / 17 + y / 13) % 2 ? 30 : -30) + noise;
        p.push_back(uint8_t(std::min(255.0, std::max(0.0, v))));
      }
    }
  }
  return p;
}

struct Jpeg {
  int h, w;
  std::vector<uint8_t> bytes;
};
Jpeg make_jpeg(int h, int w, uint32_t seed) {
  return {h, w, testing::encode_jpeg(photo(h, w, seed), h, w, 3, 90)};
}

// Pixel (y, x) of the window (in the window's own pixels at scale 1) from a full-scale window
// decode.
uint8_t at(const data::DecodedWindow& d, int64_t y, int64_t x, int64_t c) {
  const int64_t yy = int64_t(d.top) + y, xx = int64_t(d.left) + x;
  return d.image.pixels[size_t((yy * d.image.width + xx) * 3 + c)];
}

TEST(JpegWindow, FullScaleWindowIsTheWholeDecodesWindow) {
  const Jpeg j = make_jpeg(100, 131, 1);  // not a multiple of the 8- or 16-pixel iMCU
  const data::DecodedImage full = decode_jpeg(j.bytes.data(), j.bytes.size(), "full.jpg");
  uint32_t r = 7;
  for (int trial = 0; trial < 40; ++trial) {
    r = r * 1664525u + 1013904223u;
    const int64_t h = 1 + (r >> 8) % 100, w = 1 + (r >> 16) % 131;
    const int64_t top = (r >> 4) % (100 - h + 1), left = (r >> 12) % (131 - w + 1);
    // A minimum as large as the window: no downscaling.
    const data::DecodedWindow d =
        decode_jpeg_window(j.bytes.data(), j.bytes.size(), "w.jpg", top, left, h, w, h, w);
    ASSERT_EQ(d.scale_eighths, 8);
    ASSERT_EQ(d.height, double(h));
    ASSERT_EQ(d.width, double(w));
    ASSERT_LE(d.top + d.height, double(d.image.height));
    ASSERT_LE(d.left + d.width, double(d.image.width));
    int64_t differ = 0;
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x)
        for (int64_t c = 0; c < 3; ++c)
          differ += at(d, y, x, c) != full.pixels[size_t(((top + y) * 131 + left + x) * 3 + c)];
    EXPECT_EQ(differ, 0) << "window " << top << "," << left << " " << h << "x" << w;
  }
}

TEST(JpegWindow, ScaleIsTheSmallestThatKeepsTheOutputSize) {
  const Jpeg j = make_jpeg(375, 500, 2);
  struct Case {
    int64_t h, w, min_h, min_w;
    int n;
  };
  for (const Case& c : {Case{375, 500, 224, 224, 5},  // 375 * 5/8 = 234 >= 224, 4/8: 187
                        Case{300, 400, 224, 224, 6}, Case{200, 200, 224, 224, 8},
                        Case{64, 64, 8, 8, 1}, Case{64, 64, 9, 8, 2}}) {
    const data::DecodedWindow d = decode_jpeg_window(j.bytes.data(), j.bytes.size(), "s.jpg", 0, 0,
                                                     c.h, c.w, c.min_h, c.min_w);
    EXPECT_EQ(d.scale_eighths, c.n) << c.h << "x" << c.w << " for " << c.min_h << "x" << c.min_w;
    EXPECT_GE(d.height, double(std::min(c.min_h, c.h)) - 1e-9);
  }
}

// At n/8 the window resized to the output is close to the whole decode's window resized: both
// are the same picture, the DCT scaling averages where bilinear resizing skips pixels.
TEST(JpegWindow, ScaledWindowResizesCloseToTheFullDecode) {
  const Jpeg j = make_jpeg(375, 500, 3);
  const data::DecodedImage full = decode_jpeg(j.bytes.data(), j.bytes.size(), "full.jpg");
  struct Win {
    int64_t top, left, h, w;
  };
  for (const Win& win : {Win{0, 0, 375, 500}, Win{37, 91, 301, 257}, Win{100, 201, 120, 190}}) {
    const int64_t out = 64;
    const data::DecodedWindow d = decode_jpeg_window(j.bytes.data(), j.bytes.size(), "s.jpg",
                                                     win.top, win.left, win.h, win.w, out, out);
    EXPECT_LT(d.scale_eighths, 8);
    std::vector<uint8_t> a(size_t(out * out * 3)), b(a.size());
    data::resize_region_u8(d.image.pixels.data(), d.image.height, d.image.width, 3, d.top, d.left,
                           d.height, d.width, a.data(), out, out);
    data::resize_window_u8(full.pixels.data(), 375, 500, 3, win.top, win.left, win.h, win.w,
                           b.data(), out, out);
    double se = 0;
    for (size_t i = 0; i < a.size(); ++i) se += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    const double psnr = 10 * std::log10(255.0 * 255.0 / (se / double(a.size())));
    EXPECT_GT(psnr, 25.0) << "window " << win.top << "," << win.left << " at n=" << d.scale_eighths;
  }
}

// resize_region_u8 on an integer window inside the image is resize_window_u8 away from its edges.
TEST(JpegWindow, RegionResizeMatchesWindowResize) {
  const std::vector<uint8_t> img = photo(40, 50, 4);
  std::vector<uint8_t> a(20 * 30 * 3), b(a.size());
  data::resize_region_u8(img.data(), 40, 50, 3, 0.0, 0.0, 40.0, 50.0, a.data(), 20, 30);
  data::resize_window_u8(img.data(), 40, 50, 3, 0, 0, 40, 50, b.data(), 20, 30);
  EXPECT_EQ(a, b);
}

// random_resized_crop draws the same crop from the header alone: encoded and decoded samples
// consume the same random numbers, and the scaled output stays close to the exact one;
// scaled_decode: false on an encoded sample is exactly the decoded path.
TEST(JpegWindow, RandomResizedCropOnEncodedSamples) {
  const Jpeg j = make_jpeg(375, 500, 5);
  auto encoded = [&] {
    data::Sample s;
    s.encoded = std::make_shared<const std::vector<uint8_t>>(j.bytes);
    s.source = "e.jpg";
    s.height = j.h;
    s.width = j.w;
    s.channels = 3;
    return s;
  };
  const auto scaled = data::random_resized_crop(112, 112);
  const auto exact = data::random_resized_crop(112, 112, {0.08, 1.0}, {0.75, 4.0 / 3.0}, false);
  for (uint64_t i = 0; i < 10; ++i) {
    data::Sample a = encoded(), b = encoded(), c = encoded();
    data::decode_sample(c);
    ASSERT_FALSE(c.encoded);
    data::SampleRng ra(1, 0, i), rb(1, 0, i), rc(1, 0, i);
    scaled->apply(a, ra);
    exact->apply(b, rb);
    exact->apply(c, rc);
    const uint32_t next = rc.next_u32();  // the same draws on every path
    EXPECT_EQ(ra.next_u32(), next);
    EXPECT_EQ(rb.next_u32(), next);
    EXPECT_EQ(b.image, c.image);
    ASSERT_EQ(a.shape(), c.shape());
    ASSERT_FALSE(a.encoded);
    double se = 0;
    for (size_t k = 0; k < a.image.size(); ++k)
      se += (double(a.image[k]) - c.image[k]) * (double(a.image[k]) - c.image[k]);
    EXPECT_GT(10 * std::log10(255.0 * 255.0 / (se / double(a.image.size()))), 25.0) << i;
  }
  // A step that needs every pixel decodes the whole image.
  data::Sample f = encoded();
  data::SampleRng r(1, 0, 0);
  data::random_horizontal_flip(1.0)->apply(f, r);
  EXPECT_FALSE(f.encoded);
  EXPECT_EQ(f.image.size(), size_t(375 * 500 * 3));
}

TEST(JpegWindow, CorruptAndTruncatedFilesNameTheFile) {
  const Jpeg j = make_jpeg(64, 64, 6);
  std::vector<uint8_t> cut(j.bytes.begin(), j.bytes.begin() + j.bytes.size() / 2);
  EXPECT_INPUT_ERROR(decode_jpeg_window(cut.data(), cut.size(), "cut.jpg", 40, 0, 20, 64, 20, 64),
                     "cut.jpg");
  std::vector<uint8_t> junk(100, 7);
  EXPECT_INPUT_ERROR(data::read_jpeg_size(junk.data(), junk.size(), "junk.jpg"), "junk.jpg");
  const data::JpegSize s = data::read_jpeg_size(j.bytes.data(), j.bytes.size(), "ok.jpg");
  EXPECT_EQ(s.height, 64);
  EXPECT_EQ(s.width, 64);
}

}  // namespace
}  // namespace lowbit
