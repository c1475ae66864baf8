// Console progress for long loops: on a terminal a single line redrawn in place (bar, ETA,
// the caller's metrics); otherwise plain lines at a fixed interval, so logs stay readable when
// piped to a file. Also the JSONL logger for records a plot script can read.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

namespace lowbit::train {

class ProgressBar {
 public:
  // total: number of steps; label: e.g. "stage pretrain epoch 1/3".
  ProgressBar(std::string label, int64_t total, std::FILE* out = stderr);
  // Called after each step with a preformatted metrics string ("loss 0.41 acc 86.2% 812 img/s").
  void update(int64_t done, const std::string& metrics);
  void finish(const std::string& metrics);
  static std::string format_duration(double seconds);

 private:
  std::string label_;
  int64_t total_;
  std::FILE* out_;
  bool tty_;
  std::chrono::steady_clock::time_point start_, last_print_;
};

// Appends one JSON object per line; flushed per record so a crash loses nothing.
class JsonlLog {
 public:
  explicit JsonlLog(const std::string& path);
  void write(const std::string& json_object);

 private:
  std::ofstream out_;
  std::string path_;
};

}  // namespace lowbit::train
