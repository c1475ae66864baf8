// TensorBoard event files without a protobuf dependency: the trainer's scalars, histograms and
// config text written as TensorBoard reads them (docs/training.md, "TensorBoard").
//
// A file is a sequence of TFRecords: uint64 length (little endian), masked CRC-32C of those 8
// bytes, the payload, masked CRC-32C of the payload. Each payload is a tensorflow.Event protobuf
// message, encoded here by hand (varints, tags, length-delimited fields, packed doubles); the
// first event carries file_version "brain.Event:2". Only the fields TensorBoard reads are written.
#pragma once

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace lowbit::train {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as iSCSI (RFC 3720) and TFRecord use it.
uint32_t crc32c(const void* data, size_t n);
// TFRecord's masked form: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t masked_crc32c(const void* data, size_t n);

namespace tb {

// Protobuf wire format pieces (field numbers and wire types as in the .proto files).
void put_varint(std::string* out, uint64_t v);
void put_tag(std::string* out, uint32_t field, uint32_t wire_type);
void put_bytes_field(std::string* out, uint32_t field, const std::string& bytes);  // wire type 2
void put_double_field(std::string* out, uint32_t field, double v);                 // wire type 1
void put_float_field(std::string* out, uint32_t field, float v);                   // wire type 5
void put_varint_field(std::string* out, uint32_t field, uint64_t v);               // wire type 0
void put_packed_doubles(std::string* out, uint32_t field, const std::vector<double>& v);

// One TFRecord around `payload`.
std::string frame_record(const std::string& payload);

// Event messages: {wall_time, step, summary {value {tag, ...}}}.
std::string file_version_event(double wall_time);
std::string scalar_event(double wall_time, int64_t step, const std::string& tag, float value);
// HistogramProto of `values` in `buckets` equal-width buckets between their min and max
// (bucket_limit: each bucket's right edge, the last one the max); no value: no bucket.
std::string histogram_proto(const float* values, int64_t n, int buckets);
std::string histogram_event(double wall_time, int64_t step, const std::string& tag,
                            const float* values, int64_t n, int buckets);
// The text plugin's form: a scalar DT_STRING tensor with plugin_data {plugin_name: "text"}.
std::string text_event(double wall_time, int64_t step, const std::string& tag,
                       const std::string& markdown);

}  // namespace tb

// An event file in `dir`, named events.out.tfevents.<unix time>.<host>, opened for appending
// (a resumed run in the same second adds to the file instead of replacing it). Writes go to the
// stream's buffer; flush() makes them visible to a TensorBoard watching the folder.
class EventFile {
 public:
  explicit EventFile(const std::string& dir);
  const std::string& path() const { return path_; }

  void scalar(const std::string& tag, int64_t step, double value);
  void histogram(const std::string& tag, int64_t step, const float* values, int64_t n,
                 int buckets = 30);
  void text(const std::string& tag, int64_t step, const std::string& markdown);
  void flush();

 private:
  void write(const std::string& event);

  std::string path_;
  std::ofstream out_;
};

}  // namespace lowbit::train
