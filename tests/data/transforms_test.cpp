// Transforms against hand-computed results: flip, padding + crop, centre crop, bilinear resize
// of small gradients, random resized crop's fallback, normalisation values; and the per-sample
// RNG's determinism.
#include "data/transforms.h"

#include <cmath>
#include <set>

#include "tests/common/test_util.h"
#include "tests/data/data_test_util.h"

namespace lowbit {
namespace {

using data::Sample;
using data::SampleRng;

Sample make(int64_t h, int64_t w, int64_t c, std::vector<uint8_t> px) {
  Sample s;
  s.height = h;
  s.width = w;
  s.channels = c;
  s.image = std::move(px);
  return s;
}

// (h, w, 1) with value y * w + x.
Sample ramp(int64_t h, int64_t w) {
  std::vector<uint8_t> px;
  for (int64_t i = 0; i < h * w; ++i) px.push_back(uint8_t(i));
  return make(h, w, 1, px);
}

TEST(SampleRng, DeterministicPerSeedEpochIndex) {
  SampleRng a(7, 2, 100), b(7, 2, 100), c(7, 3, 100), d(7, 2, 101), e(8, 2, 100);
  std::vector<uint32_t> va, vb, vc, vd, ve;
  for (int i = 0; i < 10; ++i) {
    va.push_back(a.next_u32());
    vb.push_back(b.next_u32());
    vc.push_back(c.next_u32());
    vd.push_back(d.next_u32());
    ve.push_back(e.next_u32());
  }
  EXPECT_EQ(va, vb);
  EXPECT_NE(va, vc);
  EXPECT_NE(va, vd);
  EXPECT_NE(va, ve);
}

TEST(SampleRng, RandintCoversRangeUniformly) {
  SampleRng r(1, 0, 0);
  std::vector<int> hist(5, 0);
  for (int i = 0; i < 50000; ++i) {
    const int64_t v = r.randint(-2, 3);
    ASSERT_GE(v, -2);
    ASSERT_LT(v, 3);
    hist[size_t(v + 2)]++;
  }
  for (int h : hist) EXPECT_NEAR(h / 50000.0, 0.2, 0.01);
  double sum = 0;
  for (int i = 0; i < 50000; ++i) sum += r.uniform();
  EXPECT_NEAR(sum / 50000, 0.5, 0.01);
}

TEST(Transforms, HorizontalFlip) {
  // 2x3 image, 2 channels: pixel (y, x) = (10y + x, 100 + 10y + x).
  std::vector<uint8_t> px, flipped;
  for (int y = 0; y < 2; ++y)
    for (int x = 0; x < 3; ++x) {
      px.push_back(uint8_t(10 * y + x));
      px.push_back(uint8_t(100 + 10 * y + x));
    }
  flipped = {2, 102, 1, 101, 0, 100, 12, 112, 11, 111, 10, 110};
  SampleRng rng(0, 0, 0);
  Sample s = make(2, 3, 2, px);
  data::random_horizontal_flip(1.0)->apply(s, rng);
  EXPECT_EQ(s.image, flipped);
  EXPECT_EQ(s.shape(), (Shape{2, 3, 2}));
  Sample t = make(2, 3, 2, px);
  data::random_horizontal_flip(0.0)->apply(t, rng);
  EXPECT_EQ(t.image, px);
  // p = 0.5: about half of many samples flip.
  int flips = 0;
  for (uint64_t i = 0; i < 2000; ++i) {
    Sample u = make(2, 3, 2, px);
    SampleRng r(3, 0, i);
    data::random_horizontal_flip(0.5)->apply(u, r);
    flips += u.image == flipped;
  }
  EXPECT_NEAR(flips / 2000.0, 0.5, 0.05);
}

TEST(Transforms, RandomCropWithPaddingIsAWindowOfThePaddedImage) {
  // 2x2 image [[1, 2], [3, 4]], crop 2x2 with padding 1: the padded 4x4 image is
  //   0 0 0 0
  //   0 1 2 0
  //   0 3 4 0
  //   0 0 0 0
  // and every output is one of its 9 windows, the offsets drawn from the sample's RNG.
  const uint8_t padded[4][4] = {{0, 0, 0, 0}, {0, 1, 2, 0}, {0, 3, 4, 0}, {0, 0, 0, 0}};
  const auto crop = data::random_crop(2, 2, 1);
  std::set<std::pair<int64_t, int64_t>> seen;
  for (uint64_t i = 0; i < 200; ++i) {
    Sample s = make(2, 2, 1, {1, 2, 3, 4});
    SampleRng rng(5, 1, i);
    crop->apply(s, rng);
    SampleRng replay(5, 1, i);
    const int64_t top = replay.randint(0, 3);
    const int64_t left = replay.randint(0, 3);
    seen.insert({top, left});
    const std::vector<uint8_t> want = {padded[top][left], padded[top][left + 1],
                                       padded[top + 1][left], padded[top + 1][left + 1]};
    ASSERT_EQ(s.image, want) << "top " << top << " left " << left;
    ASSERT_EQ(s.shape(), (Shape{2, 2, 1}));
  }
  EXPECT_EQ(seen.size(), 9u);
  // Hand-picked: the window at (0, 0) is [[0, 0], [0, 1]], at (2, 2) [[4, 0], [0, 0]].
  Sample s = make(2, 2, 1, {1, 2, 3, 4});
  for (uint64_t i = 0;; ++i) {
    SampleRng replay(5, 1, i);
    if (replay.randint(0, 3) == 2 && replay.randint(0, 3) == 2) {
      SampleRng rng(5, 1, i);
      crop->apply(s, rng);
      break;
    }
  }
  EXPECT_EQ(s.image, (std::vector<uint8_t>{4, 0, 0, 0}));
}

TEST(Transforms, RandomCropWithoutPaddingSameSizeIsIdentity) {
  Sample s = ramp(3, 4);
  SampleRng rng(0, 0, 0);
  data::random_crop(3, 4, 0)->apply(s, rng);
  EXPECT_EQ(s.image, ramp(3, 4).image);
  Sample too_small = ramp(3, 4);
  EXPECT_INPUT_ERROR(data::random_crop(5, 4, 0)->apply(too_small, rng), "random_crop",
                     "larger than the padded image");
}

TEST(Transforms, CenterCrop) {
  SampleRng rng(0, 0, 0);
  // 5x5 -> 2x2: offset round(1.5) = 2 (half to even, as Python's round).
  Sample a = ramp(5, 5);
  data::center_crop(2, 2)->apply(a, rng);
  EXPECT_EQ(a.image, (std::vector<uint8_t>{12, 13, 17, 18}));
  // 4x6 -> 2x2: offsets 1 and 2.
  Sample b = ramp(4, 6);
  data::center_crop(2, 2)->apply(b, rng);
  EXPECT_EQ(b.image, (std::vector<uint8_t>{8, 9, 14, 15}));
  // 2x2 -> 4x3: zero padding, the image at row 1, column 0 ((4-2)//2, (3-2)//2).
  Sample c = make(2, 2, 1, {1, 2, 3, 4});
  data::center_crop(4, 3)->apply(c, rng);
  EXPECT_EQ(c.shape(), (Shape{4, 3, 1}));
  EXPECT_EQ(c.image, (std::vector<uint8_t>{0, 0, 0, 1, 2, 0, 3, 4, 0, 0, 0, 0}));
}

TEST(Transforms, ResizeGradients) {
  SampleRng rng(0, 0, 0);
  // Upsample 1x2 [0, 100] to 1x4: source x = (o + 0.5) / 2 - 0.5 = -0.25 (clamped 0), 0.25,
  // 0.75, 1.25 (clamped to the edge pixel) -> 0, 25, 75, 100.
  Sample a = make(1, 2, 1, {0, 100});
  data::resize(1, 4)->apply(a, rng);
  EXPECT_EQ(a.image, (std::vector<uint8_t>{0, 25, 75, 100}));
  // Downsample 1x4 [0, 10, 20, 30] to 1x2: source x = 0.5, 2.5 -> 5, 25.
  Sample b = make(1, 4, 1, {0, 10, 20, 30});
  data::resize(1, 2)->apply(b, rng);
  EXPECT_EQ(b.image, (std::vector<uint8_t>{5, 25}));
  // 2D: 2x2 [[0, 100], [100, 200]] to 4x4 is separable: rows at source y 0, 0.25, 0.75, 1.
  Sample c = make(2, 2, 1, {0, 100, 100, 200});
  data::resize(4, 4)->apply(c, rng);
  EXPECT_EQ(c.image, (std::vector<uint8_t>{0, 25, 75, 100,     //
                                           25, 50, 100, 125,   //
                                           75, 100, 150, 175,  //
                                           100, 125, 175, 200}));
  // Rounding: 1x2 [0, 1] to 1x4 is 0, 0.25, 0.75, 1 -> 0, 0, 1, 1 (half up).
  Sample d = make(1, 2, 1, {0, 1});
  data::resize(1, 4)->apply(d, rng);
  EXPECT_EQ(d.image, (std::vector<uint8_t>{0, 0, 1, 1}));
  // Channels stay separate.
  Sample e = make(1, 2, 2, {0, 200, 100, 0});
  data::resize(1, 4)->apply(e, rng);
  EXPECT_EQ(e.image, (std::vector<uint8_t>{0, 200, 25, 150, 75, 50, 100, 0}));
}

TEST(Transforms, ResizeShorterSide) {
  SampleRng rng(0, 0, 0);
  Sample s = ramp(8, 13);
  const auto t = data::resize_shorter(4);
  EXPECT_EQ(t->output_shape({8, 13, 1}), (Shape{4, 6, 1}));  // int(4 * 13 / 8) = 6
  EXPECT_EQ(t->output_shape({-1, -1, 3}), (Shape{-1, -1, 3}));
  t->apply(s, rng);
  EXPECT_EQ(s.shape(), (Shape{4, 6, 1}));
  Sample tall = ramp(10, 4);
  t->apply(tall, rng);
  EXPECT_EQ(tall.shape(), (Shape{10, 4, 1}));  // already 4 on the shorter side
}

TEST(Transforms, RandomResizedCropFallbackIsCentreCrop) {
  // 4x8 with scale (1, 1) and ratio (1, 1): every attempt wants a 6x6 (round(sqrt(32))) crop,
  // which does not fit, so the fallback takes the central 4x4 (ratio clamped to 1) and resizes it
  // to 4x4: columns 2..5 unchanged.
  Sample s = ramp(4, 8);
  SampleRng rng(9, 0, 0);
  data::random_resized_crop(4, 4, {1.0, 1.0}, {1.0, 1.0})->apply(s, rng);
  EXPECT_EQ(s.image,
            (std::vector<uint8_t>{2, 3, 4, 5, 10, 11, 12, 13, 18, 19, 20, 21, 26, 27, 28, 29}));
}

TEST(Transforms, RandomResizedCropFullAreaEqualsResize) {
  // Square image, scale (1, 1), ratio (1, 1): the crop is the whole image.
  Sample a = ramp(6, 6), b = ramp(6, 6);
  SampleRng rng(1, 0, 0);
  data::random_resized_crop(3, 3, {1.0, 1.0}, {1.0, 1.0})->apply(a, rng);
  data::resize(3, 3)->apply(b, rng);
  EXPECT_EQ(a.image, b.image);
}

TEST(Transforms, RandomResizedCropShapeAndDeterminism) {
  const auto t = data::random_resized_crop(8, 8);
  std::set<std::vector<uint8_t>> distinct;
  for (uint64_t i = 0; i < 20; ++i) {
    Sample a = ramp(12, 16), b = ramp(12, 16);
    SampleRng r1(4, 0, i), r2(4, 0, i);
    t->apply(a, r1);
    t->apply(b, r2);
    ASSERT_EQ(a.shape(), (Shape{8, 8, 1}));
    ASSERT_EQ(a.image, b.image);
    distinct.insert(a.image);
  }
  EXPECT_GT(distinct.size(), 10u);
  EXPECT_INPUT_ERROR(data::random_resized_crop(8, 8, {0.5, 0.2}), "scale");
  EXPECT_INPUT_ERROR(data::random_resized_crop(8, 8, {0.1, 1.0}, {2.0, 1.0}), "ratio");
}

TEST(Transforms, NormalizeValues) {
  // mean 0.5, std 0.25: 0 -> -2, 255 -> 2, 51 -> (0.2 - 0.5) / 0.25 = -1.2.
  const data::ToTensorNormalize n = data::to_tensor_normalize({0.5f}, {0.25f});
  const std::vector<uint8_t> px = {0, 255, 51};
  std::vector<float> out(3);
  n.apply(px.data(), 3, 1, out.data());
  EXPECT_FLOAT_EQ(out[0], -2.0f);
  EXPECT_FLOAT_EQ(out[1], 2.0f);
  EXPECT_NEAR(out[2], -1.2f, 1e-6);
  // Per channel, and the same float operations as torchvision: (x / 255 - mean) / std.
  const data::ToTensorNormalize rgb =
      data::to_tensor_normalize(data::kImageNetMean, data::kImageNetStd);
  const std::vector<uint8_t> two = {10, 128, 250, 0, 1, 255};
  std::vector<float> o(6);
  rgb.apply(two.data(), 2, 3, o.data());
  for (int k = 0; k < 6; ++k) {
    const float want = (float(two[size_t(k)]) / 255.0f - data::kImageNetMean[size_t(k % 3)]) /
                       data::kImageNetStd[size_t(k % 3)];
    EXPECT_EQ(o[size_t(k)], want) << k;
  }
  // The default is x / 255; one value broadcasts over channels.
  data::ToTensorNormalize plain;
  plain.apply(two.data(), 2, 3, o.data());
  EXPECT_FLOAT_EQ(o[2], 250.0f / 255.0f);
  EXPECT_INPUT_ERROR(rgb.apply(px.data(), 3, 1, out.data()), "3 mean/std values", "1 channels");
  EXPECT_INPUT_ERROR(data::to_tensor_normalize({0.5f, 0.5f}, {0.5f}), "same number");
  EXPECT_INPUT_ERROR(data::to_tensor_normalize({0.5f}, {0.0f}), "std must be positive");
}

TEST(Transforms, PipelineShapesAndNames) {
  data::Pipeline p({data::random_crop(32, 32, 4), data::random_horizontal_flip()},
                   data::to_tensor_normalize(data::kCifar10Mean, data::kCifar10Std));
  EXPECT_EQ(p.output_shape({32, 32, 3}), (Shape{32, 32, 3}));
  EXPECT_NE(p.str().find("random_crop(32, 32, padding=4) -> random_horizontal_flip(p=0.5)"),
            std::string::npos)
      << p.str();
  data::Pipeline imagenet({data::resize_shorter(256), data::center_crop(224, 224)});
  EXPECT_EQ(imagenet.output_shape({-1, -1, 3}), (Shape{224, 224, 3}));
  const auto both = data::compose({data::resize(8, 8), data::center_crop(4, 4)});
  EXPECT_EQ(both->output_shape({20, 30, 1}), (Shape{4, 4, 1}));
  Sample s = ramp(16, 16);
  SampleRng rng(0, 0, 0);
  both->apply(s, rng);
  EXPECT_EQ(s.shape(), (Shape{4, 4, 1}));
}

TEST(Transforms, BadParameters) {
  EXPECT_INPUT_ERROR(data::random_crop(0, 2), "random_crop", "positive");
  EXPECT_INPUT_ERROR(data::random_crop(2, 2, -1), "padding");
  EXPECT_INPUT_ERROR(data::random_horizontal_flip(1.5), "p must be in [0, 1]");
  EXPECT_INPUT_ERROR(data::resize(3, 0), "resize");
  EXPECT_INPUT_ERROR(data::resize_shorter(0), "resize_shorter");
  EXPECT_INPUT_ERROR(data::center_crop(-1, 2), "center_crop");
}

}  // namespace
}  // namespace lowbit
