// TensorBoard event files (tensorboard.h). Field numbers are those of tensorflow/core/util/
// event.proto, framework/summary.proto, tensor.proto and tensor_shape.proto.
#include "train/tensorboard.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace lowbit::train {

namespace {

std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}

// Wire types.
constexpr uint32_t kVarint = 0, kFixed64 = 1, kBytes = 2, kFixed32 = 5;

// Event fields.
constexpr uint32_t kEventWallTime = 1, kEventStep = 2, kEventFileVersion = 3, kEventSummary = 5;
// Summary.value, and Summary.Value's fields.
constexpr uint32_t kSummaryValue = 1;
constexpr uint32_t kValueTag = 1, kValueSimple = 2, kValueHisto = 5, kValueTensor = 8,
                   kValueMetadata = 9;
// HistogramProto.
constexpr uint32_t kHistoMin = 1, kHistoMax = 2, kHistoNum = 3, kHistoSum = 4, kHistoSumSq = 5,
                   kHistoLimit = 6, kHistoBucket = 7;
// TensorProto (DT_STRING = 7), SummaryMetadata.plugin_data, PluginData.plugin_name.
constexpr uint32_t kTensorDtype = 1, kTensorShape = 2, kTensorString = 8, kDtString = 7;
constexpr uint32_t kMetaPluginData = 1, kPluginName = 1;

template <typename T>
void put_le(std::string* out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // the targets are little endian, as the wire format
  out->append(b, sizeof(T));
}

// An Event with wall_time, step and a Summary of one Value (its encoded fields).
std::string summary_event(double wall_time, int64_t step, const std::string& value_fields) {
  std::string summary, e;
  tb::put_bytes_field(&summary, kSummaryValue, value_fields);
  tb::put_double_field(&e, kEventWallTime, wall_time);
  tb::put_varint_field(&e, kEventStep, uint64_t(step));
  tb::put_bytes_field(&e, kEventSummary, summary);
  return e;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

uint32_t crc32c(const void* data, size_t n) {
  static const std::array<uint32_t, 256> table = make_crc32c_table();
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

namespace tb {

void put_varint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(char((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out->push_back(char(v));
}

void put_tag(std::string* out, uint32_t field, uint32_t wire_type) {
  put_varint(out, (uint64_t(field) << 3) | wire_type);
}

void put_bytes_field(std::string* out, uint32_t field, const std::string& bytes) {
  put_tag(out, field, kBytes);
  put_varint(out, bytes.size());
  out->append(bytes);
}

void put_double_field(std::string* out, uint32_t field, double v) {
  put_tag(out, field, kFixed64);
  put_le(out, v);
}

void put_float_field(std::string* out, uint32_t field, float v) {
  put_tag(out, field, kFixed32);
  put_le(out, v);
}

void put_varint_field(std::string* out, uint32_t field, uint64_t v) {
  put_tag(out, field, kVarint);
  put_varint(out, v);
}

void put_packed_doubles(std::string* out, uint32_t field, const std::vector<double>& v) {
  std::string packed;
  packed.reserve(v.size() * sizeof(double));
  for (double d : v) put_le(&packed, d);
  put_bytes_field(out, field, packed);
}

std::string frame_record(const std::string& payload) {
  std::string r;
  r.reserve(payload.size() + 16);
  put_le(&r, uint64_t(payload.size()));
  put_le(&r, masked_crc32c(r.data(), 8));
  r.append(payload);
  put_le(&r, masked_crc32c(payload.data(), payload.size()));
  return r;
}

std::string file_version_event(double wall_time) {
  std::string e;
  put_double_field(&e, kEventWallTime, wall_time);
  put_bytes_field(&e, kEventFileVersion, "brain.Event:2");
  return e;
}

std::string scalar_event(double wall_time, int64_t step, const std::string& tag, float value) {
  std::string v;
  put_bytes_field(&v, kValueTag, tag);
  put_float_field(&v, kValueSimple, value);
  return summary_event(wall_time, step, v);
}

std::string histogram_proto(const float* values, int64_t n, int buckets) {
  LOWBIT_CHECK(buckets >= 1, "histogram: buckets = ", buckets, ", wants >= 1");
  double lo = 0.0, hi = 0.0, sum = 0.0, sum_sq = 0.0;
  if (n > 0) lo = hi = values[0];
  for (int64_t i = 0; i < n; ++i) {
    const double x = values[i];
    lo = std::min(lo, x);
    hi = std::max(hi, x);
    sum += x;
    sum_sq += x * x;
  }
  std::vector<double> limits, counts;
  if (n > 0) {
    // One bucket when every value is the same (a per-tensor scale, a constant init).
    const int k = hi > lo ? buckets : 1;
    const double width = (hi - lo) / k;
    counts.assign(size_t(k), 0.0);
    for (int64_t i = 0; i < n; ++i) {
      const int b = width > 0 ? int((double(values[i]) - lo) / width) : 0;
      counts[size_t(std::clamp(b, 0, k - 1))] += 1.0;
    }
    for (int b = 0; b < k; ++b) limits.push_back(b == k - 1 ? hi : lo + width * (b + 1));
  }
  std::string h;
  put_double_field(&h, kHistoMin, lo);
  put_double_field(&h, kHistoMax, hi);
  put_double_field(&h, kHistoNum, double(n));
  put_double_field(&h, kHistoSum, sum);
  put_double_field(&h, kHistoSumSq, sum_sq);
  put_packed_doubles(&h, kHistoLimit, limits);
  put_packed_doubles(&h, kHistoBucket, counts);
  return h;
}

std::string histogram_event(double wall_time, int64_t step, const std::string& tag,
                            const float* values, int64_t n, int buckets) {
  std::string v;
  put_bytes_field(&v, kValueTag, tag);
  put_bytes_field(&v, kValueHisto, histogram_proto(values, n, buckets));
  return summary_event(wall_time, step, v);
}

std::string text_event(double wall_time, int64_t step, const std::string& tag,
                       const std::string& markdown) {
  std::string plugin, meta, tensor, v;
  put_bytes_field(&plugin, kPluginName, "text");
  put_bytes_field(&meta, kMetaPluginData, plugin);
  put_varint_field(&tensor, kTensorDtype, kDtString);
  put_bytes_field(&tensor, kTensorShape, "");  // a scalar: no dim
  put_bytes_field(&tensor, kTensorString, markdown);
  put_bytes_field(&v, kValueTag, tag);
  put_bytes_field(&v, kValueMetadata, meta);
  put_bytes_field(&v, kValueTensor, tensor);
  return summary_event(wall_time, step, v);
}

}  // namespace tb

EventFile::EventFile(const std::string& dir) {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0 || host[0] == '\0') std::strcpy(host, "localhost");
  const auto t = std::chrono::duration_cast<std::chrono::seconds>(
                     std::chrono::system_clock::now().time_since_epoch())
                     .count();
  path_ = (std::filesystem::path(dir) /
           ("events.out.tfevents." + std::to_string(t) + "." + std::string(host)))
              .string();
  out_.open(path_, std::ios::binary | std::ios::app);
  LOWBIT_CHECK_INPUT(out_.good(), path_, ": cannot open the TensorBoard event file for writing");
  write(tb::file_version_event(now_seconds()));
  flush();
}

void EventFile::scalar(const std::string& tag, int64_t step, double value) {
  write(tb::scalar_event(now_seconds(), step, tag, float(value)));
}

void EventFile::histogram(const std::string& tag, int64_t step, const float* values, int64_t n,
                          int buckets) {
  write(tb::histogram_event(now_seconds(), step, tag, values, n, buckets));
}

void EventFile::text(const std::string& tag, int64_t step, const std::string& markdown) {
  write(tb::text_event(now_seconds(), step, tag, markdown));
}

void EventFile::write(const std::string& event) {
  const std::string r = tb::frame_record(event);
  out_.write(r.data(), std::streamsize(r.size()));
}

void EventFile::flush() {
  out_.flush();
  LOWBIT_CHECK(out_.good(), path_, ": writing the TensorBoard event file failed (disk full?)");
}

}  // namespace lowbit::train
