// Reading and writing the safetensors format (https://github.com/huggingface/safetensors):
//   8 bytes    N, the header length, unsigned little-endian
//   N bytes    UTF-8 JSON: {"__metadata__": {str: str} (optional),
//                           "<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [b, e]},
//                           ...}, padded with spaces to a multiple of 8
//   the data   each tensor's bytes, row-major, little-endian, at [b, e) of this section
// dtypes: F32 F64 BF16 F16 I8 U8 I32 I64 (the format's others, BOOL, U16, F8_*, ..., are refused
// on load with a message saying lowbit cannot hold them).
//
// Writing reproduces the reference writer (safetensors' Rust serialize) byte for byte: tensors
// are ordered by descending dtype alignment (I64, F64, F32, I32, BF16, F16, I8, U8) and then by
// name, so every tensor is aligned to its element size and a file with one dtype lists its names
// sorted; the header is compact JSON with "__metadata__" first (omitted when empty) and the
// fields in the order dtype, shape, data_offsets, padded with spaces.
//
// save_safetensors is atomic: it writes <path>.tmp.<pid>, fsyncs it, renames it over <path> and
// fsyncs the directory. If anything fails before the rename (a tensor that cannot be copied to
// the host, a full disk, a directory that cannot be written), the temporary file is removed, an
// existing <path> is left untouched, and lowbit::Error names the path and the failed step.
//
// load_safetensors validates the whole file before returning and throws lowbit::InputError
// naming the file and the problem: shorter than 8 bytes; header length past the end of the file
// or over the reference's 100 MB limit; a header that is not a UTF-8 JSON object starting with
// '{' (duplicate names included); an entry without dtype, shape or data_offsets (other fields
// are ignored, as the reference reader ignores them); an unknown dtype; a shape whose byte size
// differs from its offsets; offsets out of range, overlapping, or leaving a gap; bytes after the
// last tensor (the reference requires the offsets to cover the data section exactly).
#pragma once

#include <map>
#include <string>

#include "core/tensor.h"

namespace lowbit::train {

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;  // contiguous CPU tensors
  std::map<std::string, std::string> metadata;
};

// Tensors on any device, any strides; names non-empty, valid UTF-8, not "__metadata__".
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

SafetensorsFile load_safetensors(const std::string& path);

}  // namespace lowbit::train
