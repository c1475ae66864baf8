#include "train/progress.h"

#include <unistd.h>

#include <cmath>
#include <sstream>

#include "core/error.h"

namespace lowbit::train {

ProgressBar::ProgressBar(std::string label, int64_t total, std::FILE* out)
    : label_(std::move(label)), total_(total), out_(out), tty_(isatty(fileno(out)) != 0) {
  start_ = last_print_ = std::chrono::steady_clock::now();
}

std::string ProgressBar::format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "--:--";
  const int64_t t = int64_t(s + 0.5);
  std::ostringstream os;
  char buf[32];
  if (t >= 3600) {
    std::snprintf(buf, sizeof(buf), "%lld:%02lld:%02lld", (long long)(t / 3600),
                  (long long)(t / 60 % 60), (long long)(t % 60));
  } else {
    std::snprintf(buf, sizeof(buf), "%02lld:%02lld", (long long)(t / 60), (long long)(t % 60));
  }
  return buf;
}

void ProgressBar::update(int64_t done, const std::string& metrics) {
  const auto now = std::chrono::steady_clock::now();
  const double since_print = std::chrono::duration<double>(now - last_print_).count();
  // Terminal: redraw at most 10 times a second. Pipe: a line every 10 s.
  if (done < total_ && since_print < (tty_ ? 0.1 : 10.0)) return;
  last_print_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double eta = done > 0 ? elapsed / double(done) * double(total_ - done) : NAN;
  const int width = 24;
  const int filled = total_ > 0 ? int(double(width) * double(done) / double(total_)) : width;
  std::string bar(size_t(filled), '#');
  bar.resize(size_t(width), '.');
  if (tty_) {
    std::fprintf(out_, "\r\033[K%s [%s] %lld/%lld %s<%s %s", label_.c_str(), bar.c_str(),
                 (long long)done, (long long)total_, format_duration(elapsed).c_str(),
                 format_duration(eta).c_str(), metrics.c_str());
  } else {
    std::fprintf(out_, "%s %lld/%lld elapsed %s eta %s %s\n", label_.c_str(), (long long)done,
                 (long long)total_, format_duration(elapsed).c_str(), format_duration(eta).c_str(),
                 metrics.c_str());
  }
  std::fflush(out_);
}

void ProgressBar::finish(const std::string& metrics) {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (tty_) std::fprintf(out_, "\r\033[K");
  std::fprintf(out_, "%s done in %s %s\n", label_.c_str(), format_duration(elapsed).c_str(),
               metrics.c_str());
  std::fflush(out_);
}

JsonlLog::JsonlLog(const std::string& path) : out_(path, std::ios::app), path_(path) {
  LOWBIT_CHECK_INPUT(out_.good(), path, ": cannot open the log for writing");
}

void JsonlLog::write(const std::string& json_object) {
  out_ << json_object << '\n';
  out_.flush();
  LOWBIT_CHECK(out_.good(), path_, ": writing the log failed (disk full?)");
}

}  // namespace lowbit::train
