// Helpers for the data tests: a temporary directory, writers for the small IDX, gzip, CIFAR and
// JPEG files the tests read back, and an expectation that a call throws InputError whose
// message contains given pieces (the file name and what is wrong).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"

namespace lowbit::testing {

// A fresh directory under the system temp dir, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes);
// Through zlib's gzopen/gzwrite, as gzip(1) would write it.
void write_gzip(const std::string& path, const std::vector<uint8_t>& bytes);
void put_be32(std::vector<uint8_t>& out, uint32_t v);
// IDX files: images (magic 0x803, n x rows x cols) and labels (magic 0x801).
std::vector<uint8_t> idx_images(const std::vector<uint8_t>& pixels, uint32_t n, uint32_t rows,
                                uint32_t cols, uint32_t magic = 0x00000803);
std::vector<uint8_t> idx_labels(const std::vector<uint8_t>& labels, uint32_t magic = 0x00000801);
// Encodes (h, w, channels) uint8 pixels (channels 1 or 3) as a baseline JPEG.
std::vector<uint8_t> encode_jpeg(const std::vector<uint8_t>& pixels, int h, int w, int channels,
                                 int quality = 95);

// Runs fn and checks it throws lowbit::InputError whose message contains every piece.
::testing::AssertionResult throws_input_error(const std::function<void()>& fn,
                                              const std::vector<std::string>& pieces);

}  // namespace lowbit::testing

#define EXPECT_INPUT_ERROR(stmt, ...) \
  EXPECT_TRUE(::lowbit::testing::throws_input_error([&] { stmt; }, {__VA_ARGS__}))
