// libjpeg reports errors through error_exit, which must not return: the standard answer is
// setjmp/longjmp. Jumping over C++ destructors is undefined, so the two functions that call
// setjmp (header, scanlines) hold no C++ objects; the buffers live in the caller, and the
// decompressor is destroyed by an RAII holder after the jump.
#include "data/jpeg.h"

#include <csetjmp>
#include <cstring>

// clang-format off
#include <stdio.h>  // jpeglib.h needs FILE and size_t declared first
#include <jerror.h>
#include <jpeglib.h>
// clang-format on

#include "core/error.h"

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

}  // namespace

DecodedImage decode_jpeg(const uint8_t* data, size_t size, const std::string& name) {
  LOWBIT_CHECK_INPUT(size > 0, name, ": empty file, not a JPEG");
  Decompressor d;
  LOWBIT_CHECK_INPUT(start(d, data, size), name, ": corrupt or truncated JPEG: ", d.err.message);
  const int64_t h = d.cinfo.output_height;
  const int64_t w = d.cinfo.output_width;
  const int64_t comps = d.cinfo.out_color_space == JCS_CMYK ? 4 : 3;
  LOWBIT_CHECK_INPUT(h > 0 && w > 0 && h * w <= kMaxPixels, name, ": JPEG header says ", w, "x", h,
                     " pixels, outside the supported 1 .. ", kMaxPixels, " pixels");
  DecodedImage img;
  img.height = h;
  img.width = w;
  std::vector<uint8_t> buffer;
  buffer.reserve(size_t(h * w * comps));
  LOWBIT_CHECK_INPUT(read_scanlines(d, buffer, size_t(w * comps)), name,
                     ": corrupt or truncated JPEG: ", d.err.message);
  if (comps == 3) {
    img.pixels = std::move(buffer);
    return img;
  }
  // CMYK to RGB. Adobe applications write inverted CMYK (the Adobe marker says so), as PIL and
  // libjpeg's djpeg assume.
  const bool inverted = d.cinfo.saw_Adobe_marker;
  img.pixels.resize(size_t(h * w * 3));
  for (int64_t p = 0; p < h * w; ++p) {
    uint32_t k = buffer[size_t(p * 4 + 3)];
    if (!inverted) k = 255 - k;
    for (int64_t c = 0; c < 3; ++c) {
      uint32_t v = buffer[size_t(p * 4 + c)];
      if (!inverted) v = 255 - v;
      img.pixels[size_t(p * 3 + c)] = uint8_t((v * k + 127) / 255);
    }
  }
  return img;
}

}  // namespace lowbit::data
