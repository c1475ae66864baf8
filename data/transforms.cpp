// Transforms on uint8 HWC samples (torchvision semantics, see transforms.h) and the fused
// uint8 -> normalised f32 conversion.
#include "data/transforms.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/error.h"
#include "core/philox.h"
#include "data/jpeg.h"

namespace lowbit::data {

// ---------------------------------------------------------------------------- SampleRng

SampleRng::SampleRng(uint64_t seed, uint64_t epoch, uint64_t index)
    : key_{uint32_t(seed), uint32_t(seed >> 32)}, epoch_(epoch), index_(index) {}

void SampleRng::refill() {
  // Counter words: (draw block, epoch, index low, index high). The epoch keeps 32 bits.
  const core::Philox4x32 r = core::Philox4x32::generate(
      block_++, uint32_t(epoch_), uint32_t(index_), uint32_t(index_ >> 32), key_[0], key_[1]);
  for (int k = 0; k < 4; ++k) words_[k] = r.c[k];
  used_ = 0;
}

uint32_t SampleRng::next_u32() {
  if (used_ == 4) refill();
  return words_[used_++];
}

double SampleRng::uniform() {
  const uint32_t a = next_u32();
  const uint32_t b = next_u32();
  return core::uints_to_unit_double(a, b);
}

int64_t SampleRng::randint(int64_t lo, int64_t hi) {
  LOWBIT_DCHECK(hi > lo, "randint: empty range [", lo, ", ", hi, ")");
  const uint64_t span = uint64_t(hi - lo);
  const uint64_t bits = (uint64_t(next_u32()) << 32) | next_u32();
  return lo + int64_t(bits % span);  // bias below 2^-32 for any span we use
}

// ---------------------------------------------------------------------------- helpers

namespace {

void set_image(Sample& s, std::vector<uint8_t> image, int64_t h, int64_t w) {
  s.image = std::move(image);
  s.height = h;
  s.width = w;
}

// Copies the window of src starting at (top, left) (may reach outside: zeros there) of size
// (h, w) into a new image.
std::vector<uint8_t> crop_u8(const Sample& s, int64_t top, int64_t left, int64_t h, int64_t w) {
  const int64_t C = s.channels;
  std::vector<uint8_t> out(size_t(h * w * C), 0);
  const int64_t x_begin = std::max<int64_t>(0, -left);
  const int64_t x_end = std::min<int64_t>(w, s.width - left);
  if (x_end <= x_begin) return out;
  for (int64_t y = 0; y < h; ++y) {
    const int64_t sy = top + y;
    if (sy < 0 || sy >= s.height) continue;
    const uint8_t* src = s.image.data() + (sy * s.width + left + x_begin) * C;
    std::copy(src, src + (x_end - x_begin) * C, out.data() + (y * w + x_begin) * C);
  }
  return out;
}

// Python's round(): half to even, like std::nearbyint in the default rounding mode.
int64_t round_half_even(double v) { return int64_t(std::nearbyint(v)); }

std::string fmt(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

void check_size(const char* what, int64_t h, int64_t w) {
  LOWBIT_CHECK_INPUT(h > 0 && w > 0, what, ": output size must be positive, got ", h, "x", w);
}

// Decodes an encoded sample (every transform but random_resized_crop needs all its pixels).
void check_sample(const char* what, Sample& s) {
  decode_sample(s);
  LOWBIT_CHECK(
      s.height > 0 && s.width > 0 && s.channels > 0 && int64_t(s.image.size()) == s.numel(), what,
      ": bad sample: ", s.image.size(), " bytes for an image of ", s.shape());
}

// ---------------------------------------------------------------------------- RandomCrop

class RandomCrop final : public Transform {
 public:
  RandomCrop(int64_t h, int64_t w, int64_t padding) : h_(h), w_(w), pad_(padding) {
    check_size("random_crop", h, w);
    LOWBIT_CHECK_INPUT(padding >= 0, "random_crop: padding must be >= 0, got ", padding);
  }
  void apply(Sample& s, SampleRng& rng) const override {
    check_sample("random_crop", s);
    const int64_t ph = s.height + 2 * pad_;
    const int64_t pw = s.width + 2 * pad_;
    LOWBIT_CHECK_INPUT(ph >= h_ && pw >= w_, "random_crop: crop ", h_, "x", w_,
                       " is larger than the padded image ", ph, "x", pw, " (image ", s.height, "x",
                       s.width, ", padding ", pad_, ")");
    const int64_t top = rng.randint(0, ph - h_ + 1) - pad_;
    const int64_t left = rng.randint(0, pw - w_ + 1) - pad_;
    set_image(s, crop_u8(s, top, left, h_, w_), h_, w_);
  }
  Shape output_shape(const Shape& in) const override { return {h_, w_, in[2]}; }
  std::string name() const override {
    return str_cat("random_crop(", h_, ", ", w_, ", padding=", pad_, ")");
  }

 private:
  int64_t h_, w_, pad_;
};

// ---------------------------------------------------------------------------- RandomHorizontalFlip

class RandomHorizontalFlip final : public Transform {
 public:
  explicit RandomHorizontalFlip(double p) : p_(p) {
    LOWBIT_CHECK_INPUT(p >= 0.0 && p <= 1.0, "random_horizontal_flip: p must be in [0, 1], got ",
                       p);
  }
  void apply(Sample& s, SampleRng& rng) const override {
    check_sample("random_horizontal_flip", s);
    if (!rng.bernoulli(p_)) return;
    const int64_t C = s.channels;
    for (int64_t y = 0; y < s.height; ++y) {
      uint8_t* row = s.image.data() + y * s.width * C;
      for (int64_t a = 0, b = s.width - 1; a < b; ++a, --b) {
        for (int64_t c = 0; c < C; ++c) std::swap(row[a * C + c], row[b * C + c]);
      }
    }
  }
  Shape output_shape(const Shape& in) const override { return in; }
  std::string name() const override { return str_cat("random_horizontal_flip(p=", fmt(p_), ")"); }

 private:
  double p_;
};

// ---------------------------------------------------------------------------- Resize

class Resize final : public Transform {
 public:
  // shorter > 0: resize the shorter side to it; else to (h, w).
  Resize(int64_t h, int64_t w, int64_t shorter) : h_(h), w_(w), shorter_(shorter) {
    if (shorter_ <= 0) check_size("resize", h, w);
  }
  void apply(Sample& s, SampleRng&) const override {
    check_sample("resize", s);
    int64_t oh = h_, ow = w_;
    if (shorter_ > 0) target(s.height, s.width, &oh, &ow);
    if (oh == s.height && ow == s.width) return;
    std::vector<uint8_t> out(size_t(oh * ow * s.channels));
    resize_window_u8(s.image.data(), s.height, s.width, s.channels, 0, 0, s.height, s.width,
                     out.data(), oh, ow);
    set_image(s, std::move(out), oh, ow);
  }
  Shape output_shape(const Shape& in) const override {
    if (shorter_ <= 0) return {h_, w_, in[2]};
    if (in[0] <= 0 || in[1] <= 0) return {-1, -1, in[2]};
    int64_t oh = 0, ow = 0;
    target(in[0], in[1], &oh, &ow);
    return {oh, ow, in[2]};
  }
  std::string name() const override {
    return shorter_ > 0 ? str_cat("resize_shorter(", shorter_, ")")
                        : str_cat("resize(", h_, ", ", w_, ")");
  }

 private:
  // torchvision's _compute_resized_output_size for an int size: the longer side truncates.
  void target(int64_t H, int64_t W, int64_t* oh, int64_t* ow) const {
    if (H <= W) {
      *oh = shorter_;
      *ow = std::max<int64_t>(1, int64_t(double(shorter_) * double(W) / double(H)));
    } else {
      *ow = shorter_;
      *oh = std::max<int64_t>(1, int64_t(double(shorter_) * double(H) / double(W)));
    }
  }
  int64_t h_, w_, shorter_;
};

// ---------------------------------------------------------------------------- CenterCrop

class CenterCrop final : public Transform {
 public:
  CenterCrop(int64_t h, int64_t w) : h_(h), w_(w) { check_size("center_crop", h, w); }
  void apply(Sample& s, SampleRng&) const override {
    check_sample("center_crop", s);
    if (s.height == h_ && s.width == w_) return;
    set_image(s, crop_u8(s, offset(s.height, h_), offset(s.width, w_), h_, w_), h_, w_);
  }
  Shape output_shape(const Shape& in) const override { return {h_, w_, in[2]}; }
  std::string name() const override { return str_cat("center_crop(", h_, ", ", w_, ")"); }

 private:
  // torchvision: crop_top = int(round((H - h) / 2.0)); a crop larger than the image pads it with
  // (h - H) // 2 zeros before, which is the negative offset.
  static int64_t offset(int64_t have, int64_t want) {
    if (have >= want) return round_half_even(double(have - want) / 2.0);
    return -((want - have) / 2);
  }
  int64_t h_, w_;
};

// ---------------------------------------------------------------------------- RandomResizedCrop

class RandomResizedCrop final : public Transform {
 public:
  RandomResizedCrop(int64_t h, int64_t w, std::array<double, 2> scale, std::array<double, 2> ratio,
                    bool scaled_decode)
      : h_(h), w_(w), scale_(scale), ratio_(ratio), scaled_decode_(scaled_decode) {
    check_size("random_resized_crop", h, w);
    LOWBIT_CHECK_INPUT(scale[0] > 0.0 && scale[0] <= scale[1] && scale[1] <= 1.0,
                       "random_resized_crop: scale must satisfy 0 < min <= max <= 1, got (",
                       scale[0], ", ", scale[1], ")");
    LOWBIT_CHECK_INPUT(ratio[0] > 0.0 && ratio[0] <= ratio[1],
                       "random_resized_crop: ratio must satisfy 0 < min <= max, got (", ratio[0],
                       ", ", ratio[1], ")");
  }

  void apply(Sample& s, SampleRng& rng) const override {
    int64_t top = 0, left = 0, ch = 0, cw = 0;
    if (s.encoded &&
        scaled_decode_) {  // decode the window alone, at the smallest scale that keeps h_ x w_
      params(s.height, s.width, rng, &top, &left, &ch, &cw);
      const DecodedWindow d = decode_jpeg_window(s.encoded->data(), s.encoded->size(), s.source,
                                                 top, left, ch, cw, h_, w_);
      std::vector<uint8_t> out(size_t(h_ * w_ * 3));
      resize_region_u8(d.image.pixels.data(), d.image.height, d.image.width, 3, d.top, d.left,
                       d.height, d.width, out.data(), h_, w_);
      s.encoded.reset();
      s.channels = 3;
      set_image(s, std::move(out), h_, w_);
      return;
    }
    check_sample("random_resized_crop", s);
    params(s.height, s.width, rng, &top, &left, &ch, &cw);
    std::vector<uint8_t> out(size_t(h_ * w_ * s.channels));
    resize_window_u8(s.image.data(), s.height, s.width, s.channels, top, left, ch, cw, out.data(),
                     h_, w_);
    set_image(s, std::move(out), h_, w_);
  }
  Shape output_shape(const Shape& in) const override { return {h_, w_, in[2]}; }
  std::string name() const override {
    return str_cat("random_resized_crop(", h_, ", ", w_, ", scale=(", fmt(scale_[0]), ", ",
                   fmt(scale_[1]), "), ratio=(", fmt(ratio_[0]), ", ", fmt(ratio_[1]), "))");
  }

  // torchvision.transforms.RandomResizedCrop.get_params.
  void params(int64_t H, int64_t W, SampleRng& rng, int64_t* top, int64_t* left, int64_t* h,
              int64_t* w) const {
    const double area = double(H) * double(W);
    const double log_r0 = std::log(ratio_[0]), log_r1 = std::log(ratio_[1]);
    for (int attempt = 0; attempt < 10; ++attempt) {
      const double target_area = area * rng.uniform(scale_[0], scale_[1]);
      const double aspect = std::exp(rng.uniform(log_r0, log_r1));
      const int64_t cw = round_half_even(std::sqrt(target_area * aspect));
      const int64_t ch = round_half_even(std::sqrt(target_area / aspect));
      if (cw > 0 && cw <= W && ch > 0 && ch <= H) {
        *top = rng.randint(0, H - ch + 1);
        *left = rng.randint(0, W - cw + 1);
        *h = ch;
        *w = cw;
        return;
      }
    }
    // Fallback: the central crop with the aspect ratio clamped into `ratio`.
    const double in_ratio = double(W) / double(H);
    if (in_ratio < ratio_[0]) {
      *w = W;
      *h = round_half_even(double(W) / ratio_[0]);
    } else if (in_ratio > ratio_[1]) {
      *h = H;
      *w = round_half_even(double(H) * ratio_[1]);
    } else {
      *w = W;
      *h = H;
    }
    *h = std::clamp<int64_t>(*h, 1, H);
    *w = std::clamp<int64_t>(*w, 1, W);
    *top = (H - *h) / 2;
    *left = (W - *w) / 2;
  }

 private:
  int64_t h_, w_;
  std::array<double, 2> scale_, ratio_;
  bool scaled_decode_;
};

// ---------------------------------------------------------------------------- Compose

class Compose final : public Transform {
 public:
  explicit Compose(std::vector<TransformPtr> steps) : steps_(std::move(steps)) {
    for (const TransformPtr& t : steps_) LOWBIT_CHECK(t != nullptr, "compose: null transform");
  }
  void apply(Sample& s, SampleRng& rng) const override {
    for (const TransformPtr& t : steps_) t->apply(s, rng);
  }
  Shape output_shape(const Shape& in) const override {
    Shape out = in;
    for (const TransformPtr& t : steps_) out = t->output_shape(out);
    return out;
  }
  std::string name() const override {
    std::string out = "compose(";
    for (size_t i = 0; i < steps_.size(); ++i) out += (i ? ", " : "") + steps_[i]->name();
    return out + ")";
  }

 private:
  std::vector<TransformPtr> steps_;
};

}  // namespace

// ---------------------------------------------------------------------------- factories

TransformPtr random_crop(int64_t height, int64_t width, int64_t padding) {
  return std::make_shared<RandomCrop>(height, width, padding);
}
TransformPtr random_horizontal_flip(double p) { return std::make_shared<RandomHorizontalFlip>(p); }
TransformPtr random_resized_crop(int64_t height, int64_t width, std::array<double, 2> scale,
                                 std::array<double, 2> ratio, bool scaled_decode) {
  return std::make_shared<RandomResizedCrop>(height, width, scale, ratio, scaled_decode);
}
TransformPtr resize(int64_t height, int64_t width) {
  return std::make_shared<Resize>(height, width, 0);
}
TransformPtr resize_shorter(int64_t size) {
  LOWBIT_CHECK_INPUT(size > 0, "resize_shorter: size must be positive, got ", size);
  return std::make_shared<Resize>(0, 0, size);
}
TransformPtr center_crop(int64_t height, int64_t width) {
  return std::make_shared<CenterCrop>(height, width);
}
TransformPtr compose(std::vector<TransformPtr> steps) {
  return std::make_shared<Compose>(std::move(steps));
}

// ---------------------------------------------------------------------------- resize kernel

namespace {

// One bilinear tap: output pixel o reads source pixels i0 and i1 (absolute), weight f on i1.
struct Tap {
  int64_t i0, i1;
  float f;
};

// Bilinear resize through precomputed row and column taps, rounding half up.
void resize_with_taps(const uint8_t* src, int64_t W, int64_t C, const std::vector<Tap>& ty,
                      const std::vector<Tap>& tx, uint8_t* dst) {
  const int64_t out_w = int64_t(tx.size());
  for (size_t oy = 0; oy < ty.size(); ++oy) {
    const Tap& y = ty[oy];
    const uint8_t* r0 = src + y.i0 * W * C;
    const uint8_t* r1 = src + y.i1 * W * C;
    uint8_t* out = dst + int64_t(oy) * out_w * C;
    for (int64_t ox = 0; ox < out_w; ++ox) {
      const Tap& x = tx[size_t(ox)];
      for (int64_t c = 0; c < C; ++c) {
        const float a = float(r0[x.i0 * C + c]) + x.f * float(r0[x.i1 * C + c] - r0[x.i0 * C + c]);
        const float b = float(r1[x.i0 * C + c]) + x.f * float(r1[x.i1 * C + c] - r1[x.i0 * C + c]);
        const float v = a + y.f * (b - a);
        out[ox * C + c] = uint8_t(std::min(255.0f, std::max(0.0f, v + 0.5f)));
      }
    }
  }
}

// Taps of `out` pixels over the span [start, start + len) of an axis of `in` pixels: source
// coordinate start + (o + 0.5) * len / out - 0.5, clamped to [lo, hi - 1].
std::vector<Tap> taps(double start, double len, int64_t out, int64_t lo, int64_t hi) {
  std::vector<Tap> t(static_cast<size_t>(out));
  const double scale = len / double(out);
  for (int64_t o = 0; o < out; ++o) {
    double pos = start + (double(o) + 0.5) * scale - 0.5;
    pos = std::max(pos, double(lo));
    const int64_t i0 = std::min<int64_t>(int64_t(pos), hi - 1);
    const int64_t i1 = std::min<int64_t>(i0 + 1, hi - 1);
    t[size_t(o)] = {i0, i1, float(pos - double(i0))};
  }
  return t;
}

}  // namespace

void resize_window_u8(const uint8_t* src, int64_t H, int64_t W, int64_t C, int64_t top,
                      int64_t left, int64_t h, int64_t w, uint8_t* dst, int64_t out_h,
                      int64_t out_w) {
  LOWBIT_DCHECK(top >= 0 && left >= 0 && top + h <= H && left + w <= W, "window outside image");
  (void)H;
  // Window-relative coordinates, clamped to the window (torchvision crops, then resizes).
  std::vector<Tap> ty = taps(0.0, double(h), out_h, 0, h);
  std::vector<Tap> tx = taps(0.0, double(w), out_w, 0, w);
  for (Tap& t : ty) t.i0 += top, t.i1 += top;
  for (Tap& t : tx) t.i0 += left, t.i1 += left;
  resize_with_taps(src, W, C, ty, tx, dst);
}

void resize_region_u8(const uint8_t* src, int64_t H, int64_t W, int64_t C, double top, double left,
                      double h, double w, uint8_t* dst, int64_t out_h, int64_t out_w) {
  resize_with_taps(src, W, C, taps(top, h, out_h, 0, H), taps(left, w, out_w, 0, W), dst);
}

// ---------------------------------------------------------------------------- ToTensorNormalize

ToTensorNormalize::ToTensorNormalize(std::vector<float> mean, std::vector<float> stddev)
    : mean_(std::move(mean)), stddev_(std::move(stddev)) {
  LOWBIT_CHECK_INPUT(!mean_.empty() && mean_.size() == stddev_.size(),
                     "normalize: mean and std need the same number (>= 1) of values, got ",
                     mean_.size(), " and ", stddev_.size());
  table_.resize(mean_.size() * 256);
  for (size_t c = 0; c < mean_.size(); ++c) {
    LOWBIT_CHECK_INPUT(std::isfinite(stddev_[c]) && stddev_[c] > 0.0f && std::isfinite(mean_[c]),
                       "normalize: std must be positive and finite and mean finite, got mean ",
                       mean_[c], " std ", stddev_[c], " for channel ", c);
    for (int v = 0; v < 256; ++v) {
      // The float operations of torchvision: to_tensor divides by 255, Normalize subtracts the
      // mean and divides by the std.
      const float x = float(v) / 255.0f;
      table_[c * 256 + size_t(v)] = (x - mean_[c]) / stddev_[c];
    }
  }
}

void ToTensorNormalize::apply(const uint8_t* src, int64_t pixels, int64_t channels,
                              float* dst) const {
  const int64_t k = int64_t(mean_.size());
  LOWBIT_CHECK_INPUT(k == 1 || k == channels, "normalize: ", k, " mean/std values for images with ",
                     channels, " channels (give 1 value or one per channel)");
  if (k == 1) {
    const float* t = table_.data();
    for (int64_t i = 0; i < pixels * channels; ++i) dst[i] = t[src[i]];
    return;
  }
  for (int64_t p = 0; p < pixels; ++p) {
    for (int64_t c = 0; c < channels; ++c) {
      dst[p * channels + c] = table_[size_t(c * 256 + src[p * channels + c])];
    }
  }
}

ToTensorNormalize to_tensor_normalize(std::vector<float> mean, std::vector<float> stddev) {
  return ToTensorNormalize(std::move(mean), std::move(stddev));
}

// ---------------------------------------------------------------------------- Pipeline

void Pipeline::augment(Sample& s, SampleRng& rng) const {
  for (const TransformPtr& t : steps) t->apply(s, rng);
  decode_sample(s);  // no step decoded it
}

Shape Pipeline::output_shape(const Shape& in) const {
  Shape out = in;
  for (const TransformPtr& t : steps) out = t->output_shape(out);
  return out;
}

std::string Pipeline::str() const {
  std::string out;
  for (const TransformPtr& t : steps) out += t->name() + " -> ";
  out +=
      "normalize(mean=" + str_cat(normalize.mean()) + ", std=" + str_cat(normalize.stddev()) + ")";
  return out;
}

}  // namespace lowbit::data
