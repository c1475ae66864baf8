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

}  // namespace lowbit::data
