// JPEG decoding with libjpeg-turbo into uint8 RGB HWC. Grayscale decodes to 3 equal channels and
// CMYK/YCCK (Adobe) to RGB, so every image of a folder has 3 channels. Any libjpeg error, and a
// truncated file ("Premature end of JPEG file", or "premature end of data segment" when the
// cut file still ends with a marker; only warnings to libjpeg), throws
// lowbit::InputError naming `name` and libjpeg's message. Other libjpeg warnings (extraneous
// bytes before a marker, common in ImageNet) are ignored, as PIL does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace lowbit::data {

struct DecodedImage {
  std::vector<uint8_t> pixels;  // (height, width, 3)
  int64_t height = 0;
  int64_t width = 0;
};

DecodedImage decode_jpeg(const uint8_t* data, size_t size, const std::string& name);

// The image size from the header alone (no pixel is decoded). Same errors as decode_jpeg.
struct JpegSize {
  int64_t height = 0;
  int64_t width = 0;
};
JpegSize read_jpeg_size(const uint8_t* data, size_t size, const std::string& name);

// A window of the image, decoded at a reduced scale where that loses nothing the caller needs:
// libjpeg-turbo's DCT scaling by n/8 (n = 1..8, the smallest n whose scaled window still has at
// least min_height x min_width pixels), only the rows of the window (jpeg_skip_scanlines) and the
// iMCU columns that cover it (jpeg_crop_scanline). The window (top, left, height, width) is in
// full-size pixels and lies inside the image; `image` is what was decoded (RGB, at the scale) and
// (top, left, height, width) the window's position in it, in its pixels (fractional). This is the
// decode of torchvision's RandomResizedCrop without decoding the pixels it throws away; the DCT
// scaling averages 8/n x 8/n blocks, an antialiased downscale where PIL's bilinear resize
// (without antialias) skips pixels.
struct DecodedWindow {
  DecodedImage image;
  double top = 0, left = 0, height = 0, width = 0;
  int scale_eighths = 8;  // n of the n/8 scale
};
DecodedWindow decode_jpeg_window(const uint8_t* data, size_t size, const std::string& name,
                                 int64_t top, int64_t left, int64_t height, int64_t width,
                                 int64_t min_height, int64_t min_width);

}  // namespace lowbit::data
