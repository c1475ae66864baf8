// safetensors writer (atomic: temporary file, fsync, rename, directory fsync) and validating
// reader. POSIX file I/O for the exact error of each step; nlohmann-json for the header.
#include "train/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>
#include <vector>

#include "core/error.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; this writer copies host bytes as they are");

namespace lowbit::train {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100000000;  // the reference reader's limit

struct DTypeCode {
  DType dtype;
  const char* code;
  int alignment_rank;  // position in the reference's Dtype enum: it sorts by it, descending
};
constexpr DTypeCode kDTypeCodes[] = {
    {DType::u8, "U8", 1},     {DType::i8, "I8", 2},    {DType::f16, "F16", 7},
    {DType::bf16, "BF16", 8}, {DType::i32, "I32", 9},  {DType::f32, "F32", 11},
    {DType::f64, "F64", 12},  {DType::i64, "I64", 13},
};
// The format's other dtypes: valid files, but lowbit has no tensor type for them.
constexpr const char* kForeignCodes[] = {"BOOL", "I16",     "U16",     "U32",
                                         "U64",  "F8_E5M2", "F8_E4M3", "F8_E8M0",
                                         "F4",   "F6_E2M3", "F6_E3M2", "C64"};

const DTypeCode& code_of(DType t) {
  for (const auto& c : kDTypeCodes) {
    if (c.dtype == t) return c;
  }
  LOWBIT_FAIL("safetensors: no code for dtype ", t);
}

std::string errno_text() { return std::strerror(errno); }

std::string dir_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// --------------------------------------------------------------------------------- writing

// The temporary file of one save: removed on destruction unless renamed into place.
class TempFile {
 public:
  TempFile(std::string tmp_path, std::string final_path)
      : tmp_(std::move(tmp_path)), final_(std::move(final_path)) {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("cannot create the temporary file '" + tmp_ + "'");
    created_ = true;
  }
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (created_ && !renamed_) ::unlink(tmp_.c_str());  // best effort; the error is in flight
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  void write_all(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const size_t chunk = std::min<size_t>(n, size_t(1) << 30);
      const ssize_t w = ::write(fd_, p, chunk);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) fail("writing '" + tmp_ + "' failed");
      p += w;
      n -= size_t(w);
    }
  }

  // fsync, close, rename over the final path, fsync the directory.
  void commit() {
    if (::fsync(fd_) != 0) fail("fsync of '" + tmp_ + "' failed");
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail("closing '" + tmp_ + "' failed");
    if (::rename(tmp_.c_str(), final_.c_str()) != 0) {
      fail("renaming '" + tmp_ + "' over '" + final_ + "' failed");
    }
    renamed_ = true;
    const std::string dir = dir_of(final_);
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
      fail("the file is in place, but opening its directory '" + dir + "' to fsync failed");
    }
    const int rc = ::fsync(dfd);
    const int saved = errno;
    ::close(dfd);
    errno = saved;
    if (rc != 0) fail("the file is in place, but fsync of its directory '" + dir + "' failed");
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(str_cat("save_safetensors: '", final_, "': ", what, ": ", errno_text()));
  }
  std::string tmp_, final_;
  int fd_ = -1;
  bool created_ = false;
  bool renamed_ = false;
};

// --------------------------------------------------------------------------------- reading

class ReadFile {
 public:
  explicit ReadFile(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) fail(str_cat("cannot open: ", errno_text()));
    struct stat st {};
    const bool stat_ok = ::fstat(fd_, &st) == 0;
    const std::string stat_error = stat_ok ? "" : errno_text();
    if (!stat_ok || !S_ISREG(st.st_mode)) {
      ::close(fd_);  // the destructor does not run for a throwing constructor
      fd_ = -1;
      fail(stat_ok ? std::string("not a regular file") : "cannot stat: " + stat_error);
    }
    size_ = uint64_t(st.st_size);
  }
  ~ReadFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  ReadFile(const ReadFile&) = delete;
  ReadFile& operator=(const ReadFile&) = delete;

  uint64_t size() const { return size_; }

  void read_at(void* dst, uint64_t n, uint64_t offset) const {
    char* p = static_cast<char*>(dst);
    while (n > 0) {
      const size_t chunk = size_t(std::min<uint64_t>(n, uint64_t(1) << 30));
      const ssize_t r = ::pread(fd_, p, chunk, off_t(offset));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) fail(str_cat("read failed at byte ", offset, ": ", errno_text()));
      if (r == 0) fail(str_cat("unexpected end of file at byte ", offset, " (file changed?)"));
      p += r;
      n -= uint64_t(r);
      offset += uint64_t(r);
    }
  }

  [[noreturn]] void fail(const std::string& problem) const {
    throw InputError(str_cat("load_safetensors: '", path_, "': ", problem));
  }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

struct TensorEntry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin = 0, end = 0;
};

uint64_t read_u64_le(const unsigned char* b) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | b[i];
  return v;
}

std::string offsets_str(const TensorEntry& e) { return str_cat("[", e.begin, ", ", e.end, "]"); }

// Parses one tensor entry of the header.
TensorEntry parse_entry(const ReadFile& file, const std::string& name, const nlohmann::json& v) {
  const std::string who = "tensor '" + name + "'";
  if (!v.is_object()) file.fail(who + ": entry is " + v.dump() + ", not an object");
  // Other fields are ignored, as the reference reader ignores them.
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!v.contains(field)) file.fail(who + ": no '" + field + "' field");
  }
  TensorEntry e;
  e.name = name;
  const nlohmann::json& dt = v["dtype"];
  if (!dt.is_string()) file.fail(who + ": dtype " + dt.dump() + " is not a string");
  const std::string code = dt.get<std::string>();
  bool found = false;
  for (const auto& c : kDTypeCodes) {
    if (code == c.code) {
      e.dtype = c.dtype;
      found = true;
    }
  }
  if (!found) {
    for (const char* f : kForeignCodes) {
      if (code == f) {
        file.fail(who + ": dtype " + code +
                  " is valid safetensors but lowbit has no such tensor type (it reads F32, F64, "
                  "BF16, F16, I8, U8, I32, I64)");
      }
    }
    file.fail(who + ": unknown dtype '" + code +
              "' (lowbit reads F32, F64, BF16, F16, I8, U8, I32, I64)");
  }
  const nlohmann::json& shape = v["shape"];
  if (!shape.is_array()) file.fail(who + ": shape " + shape.dump() + " is not an array");
  // span: the product of the sizes with 0 counted as 1, which is what the strides of the tensor
  // reach. It must fit in int64_t even when a 0 makes the tensor empty: [0, 2^62, 2^62] has no
  // elements, but its strides would overflow.
  const uint64_t max = uint64_t(std::numeric_limits<int64_t>::max());
  uint64_t span = 1;
  bool overflow = false, empty_tensor = false;
  for (const auto& d : shape) {
    if (!d.is_number_unsigned()) {
      file.fail(who + ": shape " + shape.dump() + " holds something other than sizes >= 0");
    }
    const uint64_t n = d.get<uint64_t>();
    const uint64_t m = std::max<uint64_t>(n, 1);
    if (n > max || span > max / m) overflow = true;
    span = overflow ? span : span * m;
    empty_tensor = empty_tensor || n == 0;
    e.shape.push_back(int64_t(std::min<uint64_t>(n, max)));
  }
  const uint64_t numel = empty_tensor ? 0 : span;
  const uint64_t esize = uint64_t(dtype_size(e.dtype));
  if (overflow || numel > max / esize) {
    file.fail(who + ": shape " + shape.dump() + " is too large");
  }
  const nlohmann::json& off = v["data_offsets"];
  if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
      !off[1].is_number_unsigned()) {
    file.fail(who + ": data_offsets " + off.dump() + " is not a pair of offsets >= 0");
  }
  e.begin = off[0].get<uint64_t>();
  e.end = off[1].get<uint64_t>();
  if (e.end < e.begin) {
    file.fail(who + ": data_offsets " + offsets_str(e) + " end before they begin");
  }
  if (e.end - e.begin != numel * esize) {
    file.fail(str_cat(who, ": data_offsets ", offsets_str(e), " span ", e.end - e.begin,
                      " bytes but shape ", shape.dump(), " of ", code, " needs ", numel * esize));
  }
  return e;
}

}  // namespace

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  LOWBIT_CHECK(!path.empty(), "save_safetensors: empty path");
  // Everything that can be checked without the disk is checked before the file is created.
  struct Item {
    const std::string* name;
    const Tensor* tensor;
    int rank;
  };
  std::vector<Item> order;
  for (const auto& [name, t] : tensors) {
    LOWBIT_CHECK(!name.empty(), "save_safetensors: '", path, "': a tensor has an empty name");
    LOWBIT_CHECK(name != "__metadata__", "save_safetensors: '", path,
                 "': '__metadata__' is reserved and cannot name a tensor");
    LOWBIT_CHECK(t.defined(), "save_safetensors: '", path, "': tensor '", name, "' is undefined");
    order.push_back({&name, &t, code_of(t.dtype()).alignment_rank});
  }
  std::stable_sort(order.begin(), order.end(),
                   [](const Item& a, const Item& b) { return a.rank > b.rank; });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const Item& it : order) {
    const Tensor& t = *it.tensor;
    const uint64_t nbytes = uint64_t(t.nbytes());
    nlohmann::ordered_json info = nlohmann::ordered_json::object();
    info["dtype"] = code_of(t.dtype()).code;
    info["shape"] = t.shape();
    info["data_offsets"] = {offset, offset + nbytes};
    header[*it.name] = std::move(info);
    offset += nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // names that are not UTF-8
    LOWBIT_FAIL("save_safetensors: '", path, "': cannot encode the header: ", e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = (uint64_t(text.size()) >> (8 * i)) & 0xffu;

  TempFile file(str_cat(path, ".tmp.", ::getpid()), path);
  file.write_all(len, 8);
  file.write_all(text.data(), text.size());
  for (const Item& it : order) {
    try {
      const Tensor host = it.tensor->detach().to(Device::cpu()).contiguous();
      if (host.nbytes() > 0) file.write_all(host.raw_data(), size_t(host.nbytes()));
    } catch (const Error& e) {
      throw Error(str_cat("save_safetensors: '", path, "': writing tensor '", *it.name,
                          "' failed: ", e.what()));
    }
  }
  file.commit();
}

SafetensorsFile load_safetensors(const std::string& path) {
  ReadFile file(path);
  const uint64_t size = file.size();
  if (size < 8) {
    file.fail(str_cat("file is ", size, " bytes, shorter than the 8-byte header length"));
  }
  unsigned char len[8];
  file.read_at(len, 8, 0);
  const uint64_t n = read_u64_le(len);
  if (n > kMaxHeaderBytes) {
    file.fail(str_cat("header length ", n, " is over the limit of ", kMaxHeaderBytes, " bytes"));
  }
  if (n > size - 8) {
    file.fail(str_cat("header length ", n, " runs past the end of the file (", size,
                      " bytes; truncated?)"));
  }
  std::string text(size_t(n), '\0');
  file.read_at(text.data(), n, 8);
  if (text.empty() || text[0] != '{') file.fail("header does not start with '{'");

  // Duplicate names are invalid JSON for this format; nlohmann would keep the last one.
  std::string duplicate;
  std::set<std::string> keys;
  const nlohmann::json::parser_callback_t note_keys =
      [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
        if (event == nlohmann::json::parse_event_t::key && depth == 1 &&
            !keys.insert(parsed.get<std::string>()).second && duplicate.empty()) {
          duplicate = parsed.get<std::string>();
        }
        return true;
      };
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text, note_keys);
  } catch (const nlohmann::json::exception& e) {
    file.fail(str_cat("header is not valid JSON: ", e.what()));
  }
  if (!header.is_object()) file.fail("header is not a JSON object");
  if (!duplicate.empty()) file.fail("header names '" + duplicate + "' more than once");

  SafetensorsFile out;
  std::vector<TensorEntry> entries;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) file.fail("__metadata__ is " + value.dump() + ", not an object");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) {
          file.fail("__metadata__ entry '" + k + "' is " + v.dump() + ", not a string");
        }
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(file, name, value));
  }

  const uint64_t data_bytes = size - 8 - n;
  for (const TensorEntry& e : entries) {
    if (e.end > data_bytes) {
      file.fail(str_cat("tensor '", e.name, "': data_offsets ", offsets_str(e),
                        " are out of range: the data section holds ", data_bytes,
                        " bytes (truncated file?)"));
    }
  }
  std::sort(entries.begin(), entries.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t covered = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const TensorEntry& e = entries[i];
    if (e.begin < covered) {
      file.fail(str_cat("tensor '", e.name, "': data_offsets ", offsets_str(e),
                        " overlap those of tensor '", entries[i - 1].name, "' ",
                        offsets_str(entries[i - 1])));
    }
    if (e.begin > covered) {
      file.fail(str_cat("bytes [", covered, ", ", e.begin,
                        ") of the data section belong to no tensor (the offsets must cover it "
                        "without gaps)"));
    }
    covered = e.end;
  }
  if (covered != data_bytes) {
    file.fail(str_cat(data_bytes - covered,
                      " bytes of trailing data after the last tensor (the offsets must cover the "
                      "data section exactly)"));
  }

  for (const TensorEntry& e : entries) {
    Tensor t = empty(e.shape, TensorOptions(e.dtype));
    if (e.end > e.begin) file.read_at(t.raw_data(), e.end - e.begin, 8 + n + e.begin);
    out.tensors.emplace(e.name, std::move(t));
  }
  return out;
}

}  // namespace lowbit::train
