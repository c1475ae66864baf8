// File reads for the dataset readers: plain and gzip (zlib's inflate with gzip header detection,
// so a truncated or corrupt stream is reported rather than silently shortened).
#include "data/file_io.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace lowbit::data {

std::vector<uint8_t> read_file_bytes(const std::string& path) {
  std::error_code ec;
  LOWBIT_CHECK_INPUT(std::filesystem::exists(path, ec), path, ": no such file");
  LOWBIT_CHECK_INPUT(!std::filesystem::is_directory(path, ec), path,
                     ": is a directory, expected a file");
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  LOWBIT_CHECK_INPUT(in.good(), path, ": cannot open: ", std::strerror(errno));
  const std::streamoff size = in.tellg();
  LOWBIT_CHECK_INPUT(size >= 0, path, ": cannot determine the file size");
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  in.seekg(0);
  if (size > 0) in.read(reinterpret_cast<char*>(bytes.data()), size);
  LOWBIT_CHECK_INPUT(in.good() || (size == 0), path, ": read failed after ", in.gcount(), " of ",
                     size, " bytes");
  return bytes;
}

bool is_gzip(const std::vector<uint8_t>& bytes) {
  return bytes.size() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b;
}

namespace {

// Inflates every gzip member of `in` (gzip allows concatenated members, as `cat a.gz b.gz`).
std::vector<uint8_t> gunzip(const std::vector<uint8_t>& in, const std::string& path) {
  std::vector<uint8_t> out;
  // The last 4 bytes of a single-member gzip hold the uncompressed size mod 2^32: a good hint,
  // but only a hint: a corrupt trailer must not reserve gigabytes for a few bytes of input
  // (tests/fuzz/fuzz_idx found that), so it is capped by deflate's best ratio, 1032:1.
  if (in.size() >= 18) {
    const size_t n = in.size();
    const uint32_t isize = uint32_t(in[n - 4]) | uint32_t(in[n - 3]) << 8 |
                           uint32_t(in[n - 2]) << 16 | uint32_t(in[n - 1]) << 24;
    out.reserve(std::min<size_t>(isize, n * 1032));
  }
  size_t pos = 0;  // start of the current gzip member
  while (pos < in.size()) {
    z_stream zs;
    std::memset(&zs, 0, sizeof(zs));
    LOWBIT_CHECK_INPUT(inflateInit2(&zs, 16 + MAX_WBITS) == Z_OK, path,
                       ": zlib inflateInit2 failed");
    size_t fed = pos;  // input bytes handed to zlib so far
    int rc = Z_OK;
    std::vector<uint8_t> chunk(size_t(1) << 16);
    while (true) {
      if (zs.avail_in == 0 && fed < in.size()) {  // uInt is 32 bits: feed in slices
        const size_t n = std::min<size_t>(in.size() - fed, size_t(1) << 30);
        zs.next_in = const_cast<Bytef*>(in.data() + fed);
        zs.avail_in = static_cast<uInt>(n);
        fed += n;
      }
      zs.next_out = chunk.data();
      zs.avail_out = static_cast<uInt>(chunk.size());
      rc = inflate(&zs, Z_NO_FLUSH);
      const size_t produced = chunk.size() - zs.avail_out;
      out.insert(out.end(), chunk.data(), chunk.data() + produced);
      if (rc == Z_STREAM_END) break;
      std::string msg;
      if (rc == Z_BUF_ERROR ||
          (rc == Z_OK && zs.avail_in == 0 && fed == in.size() && produced < chunk.size())) {
        msg = str_cat(path, ": gzip stream is truncated (it ends after ", in.size(),
                      " compressed bytes, ", out.size(), " bytes decompressed)");
      } else if (rc != Z_OK) {
        msg = str_cat(path, ": corrupt gzip data near compressed byte ", pos + zs.total_in, ": ",
                      zs.msg ? zs.msg : zError(rc));
      }
      if (!msg.empty()) {
        inflateEnd(&zs);
        throw InputError(msg);
      }
    }
    pos += zs.total_in;
    inflateEnd(&zs);
    // Zero padding after the last member is tolerated, as gzip -d does.
    while (pos < in.size() && in[pos] == 0) ++pos;
    if (pos < in.size()) {
      LOWBIT_CHECK_INPUT(in.size() - pos >= 2 && in[pos] == 0x1f && in[pos + 1] == 0x8b, path,
                         ": trailing garbage after the gzip stream at byte ", pos);
    }
  }
  return out;
}

}  // namespace

std::vector<uint8_t> read_maybe_gzip(const std::string& path, bool* was_gzip) {
  std::vector<uint8_t> bytes = read_file_bytes(path);
  const bool gz = is_gzip(bytes);
  if (was_gzip != nullptr) *was_gzip = gz;
  if (!gz) return bytes;
  return gunzip(bytes, path);
}

std::string first_existing(const std::vector<std::string>& candidates) {
  std::error_code ec;
  for (const std::string& c : candidates) {
    if (std::filesystem::is_regular_file(c, ec)) return c;
  }
  return "";
}

}  // namespace lowbit::data
