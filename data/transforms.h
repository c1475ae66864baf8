// Transforms on uint8 HWC samples, and the final conversion to normalised f32.
//
// Determinism: every random choice draws from a SampleRng, a Philox stream keyed by the loader's
// seed and counted by (epoch, sample index, draw number). The augmentation of sample i in epoch e
// is therefore a pure function of (seed, e, i): the same whichever worker thread runs it, in
// whichever order, with 0 or 16 workers.
//
// The geometric transforms follow torchvision's definitions (docs/data.md lists the details):
//   random_crop(h, w, padding)          RandomCrop(size, padding): zero padding on all sides,
//                                       top-left uniform over the padded image
//   random_horizontal_flip(p)           RandomHorizontalFlip(p)
//   random_resized_crop(h, w, ...)      RandomResizedCrop: area in `scale`, log-uniform aspect
//                                       in `ratio`, 10 attempts, then the centre-crop fallback
//   resize(h, w), resize_shorter(s)     Resize((h, w)) and Resize(s), bilinear with half-pixel
//                                       centres (align_corners=False), no antialias
//   center_crop(h, w)                   CenterCrop: offsets round((H - h) / 2) half-to-even,
//                                       zero padding where the crop is larger than the image
// All of them work on uint8 directly (no float image is ever materialised), which is the cheap
// path for small images: a CIFAR crop + flip is two byte copies per pixel. Normalisation is not a
// separate pass either: ToTensorNormalize maps each byte through a per-channel 256-entry table
// while writing the f32 batch.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/dataset.h"

namespace lowbit::data {

// A Philox4x32-10 stream for one sample: key = seed, counter = (draw block, epoch, index).
class SampleRng {
 public:
  SampleRng(uint64_t seed, uint64_t epoch, uint64_t index);
  uint32_t next_u32();
  double uniform();  // [0, 1), 53 random bits
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  int64_t randint(int64_t lo, int64_t hi);            // [lo, hi), hi > lo
  bool bernoulli(double p) { return uniform() < p; }  // true with probability p

 private:
  void refill();
  uint32_t key_[2];
  uint64_t epoch_;
  uint64_t index_;
  uint32_t block_ = 0;
  uint32_t words_[4] = {0, 0, 0, 0};
  int used_ = 4;
};

class Transform {
 public:
  virtual ~Transform() = default;
  // Rewrites s.image (and its height/width/channels) in place.
  virtual void apply(Sample& s, SampleRng& rng) const = 0;
  // (H, W, C) after this transform for input `in`; -1 where unknown (images of varying size).
  virtual Shape output_shape(const Shape& in) const = 0;
  virtual std::string name() const = 0;  // "random_crop(32, 32, padding=4)"
};
using TransformPtr = std::shared_ptr<const Transform>;

// Parameters come from configs: bad values throw lowbit::InputError naming the transform.
TransformPtr random_crop(int64_t height, int64_t width, int64_t padding = 0);
TransformPtr random_horizontal_flip(double p = 0.5);
// scaled_decode: on a sample still encoded (an image folder's), decode only the window at the
// smallest JPEG scale that keeps height x width (decode_jpeg_window); false: decode the whole
// image and resize its window, pixel for pixel torchvision's RandomResizedCrop.
TransformPtr random_resized_crop(int64_t height, int64_t width,
                                 std::array<double, 2> scale = {0.08, 1.0},
                                 std::array<double, 2> ratio = {3.0 / 4.0, 4.0 / 3.0},
                                 bool scaled_decode = true);
TransformPtr resize(int64_t height, int64_t width);
// The shorter side becomes `size`, the longer one int(size * long / short) (torchvision).
TransformPtr resize_shorter(int64_t size);
TransformPtr center_crop(int64_t height, int64_t width);
// Applies `steps` in order.
TransformPtr compose(std::vector<TransformPtr> steps);

// Bilinear resize (half-pixel centres, edge clamp, rounding half up) of the window
// (top, left, h, w) of src (H, W, C) to (out_h, out_w, C). The window lies inside src.
void resize_window_u8(const uint8_t* src, int64_t H, int64_t W, int64_t C, int64_t top,
                      int64_t left, int64_t h, int64_t w, uint8_t* dst, int64_t out_h,
                      int64_t out_w);

// Bilinear resize of a fractional window (top, left, h, w) of src (H, W, C) to (out_h, out_w, C):
// output pixel o reads source coordinate top + (o + 0.5) h / out_h - 0.5, clamped to the image
// (the window of a scaled JPEG decode, decode_jpeg_window).
void resize_region_u8(const uint8_t* src, int64_t H, int64_t W, int64_t C, double top, double left,
                      double h, double w, uint8_t* dst, int64_t out_h, int64_t out_w);

// uint8 HWC -> f32, out = (x / 255 - mean[c]) / stddev[c], as torchvision's ToTensor + Normalize
// (same float operations, same results). mean/stddev hold one value per channel, or one value for
// all channels. The default is plain x / 255.
class ToTensorNormalize {
 public:
  ToTensorNormalize() : ToTensorNormalize({0.0f}, {1.0f}) {}
  ToTensorNormalize(std::vector<float> mean, std::vector<float> stddev);
  // Converts `pixels` pixels of `channels` channels from src into dst. Throws InputError when
  // mean/stddev have neither 1 nor `channels` values.
  void apply(const uint8_t* src, int64_t pixels, int64_t channels, float* dst) const;
  const std::vector<float>& mean() const { return mean_; }
  const std::vector<float>& stddev() const { return stddev_; }

 private:
  std::vector<float> mean_;
  std::vector<float> stddev_;
  std::vector<float> table_;  // 256 entries per mean/std value
};

ToTensorNormalize to_tensor_normalize(std::vector<float> mean, std::vector<float> stddev);

// Per-channel statistics of the usual datasets (torchvision's / the datasets' papers' values).
inline const std::vector<float> kImageNetMean = {0.485f, 0.456f, 0.406f};
inline const std::vector<float> kImageNetStd = {0.229f, 0.224f, 0.225f};
inline const std::vector<float> kCifar10Mean = {0.4914f, 0.4822f, 0.4465f};
inline const std::vector<float> kCifar10Std = {0.2470f, 0.2435f, 0.2616f};
inline const std::vector<float> kFashionMnistMean = {0.2860f};
inline const std::vector<float> kFashionMnistStd = {0.3530f};

// What a DataLoader runs on every sample: the uint8 steps, then the conversion into the batch.
struct Pipeline {
  std::vector<TransformPtr> steps;
  ToTensorNormalize normalize;

  Pipeline() = default;
  explicit Pipeline(std::vector<TransformPtr> s, ToTensorNormalize n = {})
      : steps(std::move(s)), normalize(std::move(n)) {}
  void augment(Sample& s, SampleRng& rng) const;
  Shape output_shape(const Shape& in) const;
  std::string str() const;  // "random_crop(32, 32, padding=4) -> ... -> normalize(...)"
};

}  // namespace lowbit::data
