// `lowbit compare` (compare.h).
#include "tools/compare.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "train/config.h"

namespace lowbit::tools {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct Run {
  std::string label;  // the folder (or file) as given
  json summary;
};

Run read_run(const std::string& arg) {
  fs::path p(arg);
  if (fs::is_directory(p)) p /= "summary.json";
  std::ifstream in(p);
  LOWBIT_CHECK_INPUT(in.good(), p.string(), ": no summary.json (has the run finished?)");
  json j = json::parse(in, nullptr, false);
  LOWBIT_CHECK_INPUT(j.is_object(), p.string(), ": not a JSON object");
  return {arg, j};
}

double number(const json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : NAN;
}

std::string format(double v, int digits) {
  if (std::isnan(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

// One column: how to read it from a summary, print it, and whether a difference is worth a sign.
struct Column {
  const char* title;
  const char* key;
  double scale;  // printed value = scale * summary value
  int digits;
};

const Column kColumns[] = {
    {"top-1 %", "test_top1", 100.0, 2},
    {"top-5 %", "test_top5", 100.0, 2},
    {"params", "params", 1.0, 0},
    {"model bytes", "model_bytes", 1.0, 0},
    {"compression", "compression_ratio", 1.0, 2},
    {"GBOPs", "bops", 1e-9, 3},
    {"images/s", "images_per_s", 1.0, 0},
    {"wall s", "wall_s", 1.0, 1},
    {"ranks", "world_size", 1.0, 0},
};

}  // namespace

int run_compare(const std::vector<std::string>& args, std::ostream& out) {
  LOWBIT_CHECK_INPUT(!args.empty(),
                     "compare: give one or more run folders (or summary.json files)");
  std::vector<Run> runs;
  for (const auto& a : args) runs.push_back(read_run(a));
  out << "| run | config |";
  for (const Column& c : kColumns) out << " " << c.title << " |";
  out << "\n| --- | --- |";
  for (size_t i = 0; i < std::size(kColumns); ++i) out << " ---: |";
  out << "\n";
  const json& first = runs.front().summary;
  for (size_t r = 0; r < runs.size(); ++r) {
    const json& s = runs[r].summary;
    std::string config = s.value("config_file", std::string("?"));
    if (r > 0 && s.contains("config") && first.contains("config")) {
      const auto diff = train::config_differences(first["config"].get<std::string>(),
                                                  s["config"].get<std::string>());
      if (!diff.empty()) {
        config += " (";
        for (size_t k = 0; k < diff.size(); ++k) config += (k ? "; " : "") + diff[k];
        config += ")";
      }
    }
    out << "| " << runs[r].label << " | " << config << " |";
    for (const Column& c : kColumns) {
      const double v = c.scale * number(s, c.key);
      out << " " << format(v, c.digits);
      const double d = v - c.scale * number(first, c.key);
      if (r > 0 && !std::isnan(d) && d != 0.0)
        out << " (" << (d > 0 ? "+" : "") << format(d, c.digits) << ")";
      out << " |";
    }
    out << "\n";
  }
  return 0;
}

}  // namespace lowbit::tools
