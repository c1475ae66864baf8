// Whole-file reads for the dataset readers. read_file_bytes reads a file as it is on disk;
// read_maybe_gzip decompresses it first when it starts with the gzip magic bytes 1f 8b, so a
// reader accepts `train-images-idx3-ubyte` and `train-images-idx3-ubyte.gz` alike. Both throw
// lowbit::InputError naming the path (missing, unreadable, corrupt or truncated gzip).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit::data {

std::vector<uint8_t> read_file_bytes(const std::string& path);
// gunzips when the file starts with 1f 8b, else returns the raw bytes. *was_gzip (optional)
// tells which.
std::vector<uint8_t> read_maybe_gzip(const std::string& path, bool* was_gzip = nullptr);
bool is_gzip(const std::vector<uint8_t>& bytes);
// First existing path among `candidates` (in order), or "" when none exists.
std::string first_existing(const std::vector<std::string>& candidates);

}  // namespace lowbit::data
