// Helpers the libFuzzer targets share. Readers that take a path get the fuzz input through a
// scratch directory created once per process (under $TMPDIR, else /tmp) and removed at exit;
// each input overwrites the files it needs. A target catches only the exception its reader
// documents for bad input (lowbit::InputError); anything else escapes, and libFuzzer reports it
// (an uncaught exception aborts) along with ASan/UBSan reports, crashes and timeouts.
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace lowbit::fuzz {

class ScratchDir {
 public:
  ScratchDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/lowbit_fuzz_XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("fuzz: mkdtemp failed");
    path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }

  // Writes `size` bytes to path()/name (creating its parent folders) and returns the full path.
  std::string write(const std::string& name, const uint8_t* data, size_t size) const {
    const std::filesystem::path p = std::filesystem::path(path_) / name;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    if (size > 0) out.write(reinterpret_cast<const char*>(data), std::streamsize(size));
    out.close();
    if (!out) throw std::runtime_error("fuzz: cannot write " + p.string());
    return p.string();
  }
  std::string write(const std::string& name, const std::string& bytes) const {
    return write(name, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  }
  // Empties the directory (between inputs that lay out different files).
  void clear() const {
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(path_, ec)) {
      std::filesystem::remove_all(e.path(), ec);
    }
  }

 private:
  std::string path_;
};

// One directory for the process: a function-local static, removed when the process exits
// normally (libFuzzer's -max_total_time and -runs end with exit()).
inline const ScratchDir& scratch() {
  static const ScratchDir dir;
  return dir;
}

// Little-endian u32 from the first 4 bytes (0 when shorter); advances data/size past them.
inline uint32_t take_u32(const uint8_t*& data, size_t& size) {
  if (size < 4) {
    data += size;
    size = 0;
    return 0;
  }
  const uint32_t v = uint32_t(data[0]) | uint32_t(data[1]) << 8 | uint32_t(data[2]) << 16 |
                     uint32_t(data[3]) << 24;
  data += 4;
  size -= 4;
  return v;
}

}  // namespace lowbit::fuzz
