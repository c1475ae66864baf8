// libjpeg reports errors through error_exit, which must not return: the standard answer is
// setjmp/longjmp. Jumping over C++ destructors is undefined, so the two functions that call
// setjmp (header, scanlines) hold no C++ objects; the buffers live in the caller, and the
// decompressor is destroyed by an RAII holder after the jump.
#include "data/jpeg.h"

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstring>

// clang-format off
#include <stdio.h>  // jpeglib.h needs FILE and size_t declared first
#include <jerror.h>
#include <jpeglib.h>
// clang-format on

#include "core/error.h"
#include "data/dataset.h"

namespace lowbit::data {

namespace {

// Large enough for any real photo; stops a corrupt header from asking for gigabytes.
constexpr int64_t kMaxPixels = int64_t(1) << 28;

struct ErrorManager {
  jpeg_error_mgr pub;  // first member: libjpeg casts cinfo->err to this
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void on_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// Level -1 is a warning; >= 0 are trace messages. A premature end of data is a truncated file,
// which we refuse rather than train on a gray-filled image: the end of the file (JWRN_JPEG_EOF)
// or a marker where the image data should go on (JWRN_HIT_MARKER, "premature end of data
// segment": a cut file that still ends with an EOI marker). libjpeg fills the rest with gray
// either way, for as many rows as the header claims: tests/fuzz/fuzz_jpeg found a 150-byte file
// claiming 13417x17457 pixels that took seconds and 700 MB to decode into nothing.
void on_emit_message(j_common_ptr cinfo, int level) {
  if (level >= 0) return;
  if (cinfo->err->msg_code == JWRN_JPEG_EOF || cinfo->err->msg_code == JWRN_HIT_MARKER) {
    on_error_exit(cinfo);
  }
  cinfo->err->num_warnings++;
}

struct Decompressor {
  jpeg_decompress_struct cinfo;
  ErrorManager err;
  bool created = false;
  Decompressor() {
    std::memset(&cinfo, 0, sizeof(cinfo));
    std::memset(&err, 0, sizeof(err));
  }
  ~Decompressor() {
    if (created) jpeg_destroy_decompress(&cinfo);
  }
};

// Reads the header and starts decompression. false on a libjpeg error (message in d.err).
bool start(Decompressor& d, const uint8_t* data, size_t size) {
  d.cinfo.err = jpeg_std_error(&d.err.pub);
  d.err.pub.error_exit = on_error_exit;
  d.err.pub.emit_message = on_emit_message;
  if (setjmp(d.err.jump)) return false;
  jpeg_create_decompress(&d.cinfo);
  d.created = true;
  jpeg_mem_src(&d.cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&d.cinfo, TRUE);
  switch (d.cinfo.jpeg_color_space) {
    case JCS_CMYK:
    case JCS_YCCK:
      d.cinfo.out_color_space = JCS_CMYK;
      break;
    default:  // grayscale, YCbCr, RGB: libjpeg-turbo converts all of them to RGB
      d.cinfo.out_color_space = JCS_RGB;
      break;
  }
  jpeg_calc_output_dimensions(&d.cinfo);
  return true;
}

// Skips `rows` scanlines, then appends the next `count` rows to `out` (capacity reserved by the
// caller) and stops the decompression without reading the rest. false on a libjpeg error.
bool read_window_rows(Decompressor& d, JDIMENSION* xoffset, JDIMENSION* xwidth, JDIMENSION rows,
                      JDIMENSION count, std::vector<uint8_t>& out, size_t comps) {
  if (setjmp(d.err.jump)) return false;
  jpeg_start_decompress(&d.cinfo);
  jpeg_crop_scanline(&d.cinfo, xoffset, xwidth);  // widens to iMCU boundaries
  const size_t row_bytes = size_t(d.cinfo.output_width) * comps;
  if (rows > 0) jpeg_skip_scanlines(&d.cinfo, rows);
  for (JDIMENSION r = 0; r < count && d.cinfo.output_scanline < d.cinfo.output_height; ++r) {
    out.resize(out.size() + row_bytes);
    JSAMPROW row = out.data() + out.size() - row_bytes;
    jpeg_read_scanlines(&d.cinfo, &row, 1);
  }
  jpeg_abort_decompress(&d.cinfo);  // the rows below the window are never decoded
  return true;
}

// Appends each decoded row to `out` (whose capacity the caller reserved for the whole image), so
// only the rows that decode are ever written: a corrupt file claiming a huge size fails after
// touching a row or two instead of clearing hundreds of megabytes first.
bool read_scanlines(Decompressor& d, std::vector<uint8_t>& out, size_t row_bytes) {
  if (setjmp(d.err.jump)) return false;
  jpeg_start_decompress(&d.cinfo);
  while (d.cinfo.output_scanline < d.cinfo.output_height) {
    out.resize(out.size() + row_bytes);  // within the reserved capacity: no reallocation
    JSAMPROW row = out.data() + out.size() - row_bytes;
    jpeg_read_scanlines(&d.cinfo, &row, 1);
  }
  jpeg_finish_decompress(&d.cinfo);
  return true;
}

// Starts d on the file and checks the size its header claims.
void open_checked(Decompressor& d, const uint8_t* data, size_t size, const std::string& name) {
  LOWBIT_CHECK_INPUT(size > 0, name, ": empty file, not a JPEG");
  LOWBIT_CHECK_INPUT(start(d, data, size), name, ": corrupt or truncated JPEG: ", d.err.message);
  const int64_t h = d.cinfo.image_height;
  const int64_t w = d.cinfo.image_width;
  LOWBIT_CHECK_INPUT(h > 0 && w > 0 && h * w <= kMaxPixels, name, ": JPEG header says ", w, "x", h,
                     " pixels, outside the supported 1 .. ", kMaxPixels, " pixels");
}

int64_t components(const Decompressor& d) { return d.cinfo.out_color_space == JCS_CMYK ? 4 : 3; }

// RGB pixels of what was decoded: the buffer itself, or CMYK converted.
std::vector<uint8_t> to_rgb(const Decompressor& d, std::vector<uint8_t> buffer, int64_t pixels) {
  if (components(d) == 3) return buffer;
  // CMYK to RGB. Adobe applications write inverted CMYK (the Adobe marker says so), as PIL and
  // libjpeg's djpeg assume.
  const bool inverted = d.cinfo.saw_Adobe_marker;
  std::vector<uint8_t> rgb(size_t(pixels * 3));
  for (int64_t p = 0; p < pixels; ++p) {
    uint32_t k = buffer[size_t(p * 4 + 3)];
    if (!inverted) k = 255 - k;
    for (int64_t c = 0; c < 3; ++c) {
      uint32_t v = buffer[size_t(p * 4 + c)];
      if (!inverted) v = 255 - v;
      rgb[size_t(p * 3 + c)] = uint8_t((v * k + 127) / 255);
    }
  }
  return rgb;
}

}  // namespace

DecodedImage decode_jpeg(const uint8_t* data, size_t size, const std::string& name) {
  Decompressor d;
  open_checked(d, data, size, name);
  const int64_t h = d.cinfo.output_height;
  const int64_t w = d.cinfo.output_width;
  const int64_t comps = components(d);
  DecodedImage img;
  img.height = h;
  img.width = w;
  std::vector<uint8_t> buffer;
  buffer.reserve(size_t(h * w * comps));
  LOWBIT_CHECK_INPUT(read_scanlines(d, buffer, size_t(w * comps)), name,
                     ": corrupt or truncated JPEG: ", d.err.message);
  img.pixels = to_rgb(d, std::move(buffer), h * w);
  return img;
}

JpegSize read_jpeg_size(const uint8_t* data, size_t size, const std::string& name) {
  Decompressor d;
  open_checked(d, data, size, name);
  return {int64_t(d.cinfo.image_height), int64_t(d.cinfo.image_width)};
}

void decode_sample(Sample& s) {
  if (!s.encoded) return;
  DecodedImage img = decode_jpeg(s.encoded->data(), s.encoded->size(), s.source);
  s.image = std::move(img.pixels);
  s.height = img.height;
  s.width = img.width;
  s.channels = 3;
  s.encoded.reset();
}

DecodedWindow decode_jpeg_window(const uint8_t* data, size_t size, const std::string& name,
                                 int64_t top, int64_t left, int64_t height, int64_t width,
                                 int64_t min_height, int64_t min_width) {
  Decompressor d;
  open_checked(d, data, size, name);
  const int64_t H = d.cinfo.image_height, W = d.cinfo.image_width;
  LOWBIT_CHECK(
      top >= 0 && left >= 0 && height > 0 && width > 0 && top + height <= H && left + width <= W,
      name, ": window (", top, ", ", left, ", ", height, ", ", width, ") outside the image ", H,
      "x", W);
  int n = 1;  // the smallest scale that keeps the window at least min_height x min_width
  while (n < 8 && (height * n < min_height * 8 || width * n < min_width * 8)) ++n;
  d.cinfo.scale_num = unsigned(n);
  d.cinfo.scale_denom = 8;
  jpeg_calc_output_dimensions(&d.cinfo);
  // The window in scaled pixels; libjpeg's scaled image is ceil(W n / 8) wide.
  const double f = double(n) / 8.0;
  const int64_t sh = d.cinfo.output_height, sw = d.cinfo.output_width;
  const int64_t y0 = std::min<int64_t>(int64_t(std::floor(double(top) * f)), sh - 1);
  const int64_t y1 = std::min<int64_t>(int64_t(std::ceil(double(top + height) * f)), sh);
  const int64_t x0 = std::min<int64_t>(int64_t(std::floor(double(left) * f)), sw - 1);
  const int64_t x1 = std::min<int64_t>(int64_t(std::ceil(double(left + width) * f)), sw);
  JDIMENSION xoffset = JDIMENSION(x0), xwidth = JDIMENSION(x1 - x0);
  const int64_t comps = components(d);
  std::vector<uint8_t> buffer;
  // jpeg_crop_scanline widens by less than an iMCU (at most 32 scaled pixels) on either side.
  buffer.reserve(size_t((y1 - y0) * std::min<int64_t>(sw, x1 - x0 + 64) * comps));
  LOWBIT_CHECK_INPUT(read_window_rows(d, &xoffset, &xwidth, JDIMENSION(y0), JDIMENSION(y1 - y0),
                                      buffer, size_t(comps)),
                     name, ": corrupt or truncated JPEG: ", d.err.message);
  const int64_t rows = int64_t(buffer.size()) / (int64_t(xwidth) * comps);
  LOWBIT_CHECK_INPUT(rows == y1 - y0, name, ": corrupt or truncated JPEG: ", rows, " of ", y1 - y0,
                     " window rows decoded");
  DecodedWindow out;
  out.image.height = rows;
  out.image.width = int64_t(xwidth);
  out.image.pixels = to_rgb(d, std::move(buffer), rows * int64_t(xwidth));
  out.top = double(top) * f - double(y0);
  out.left = double(left) * f - double(xoffset);
  out.height = double(height) * f;
  out.width = double(width) * f;
  out.scale_eighths = n;
  return out;
}

}  // namespace lowbit::data
