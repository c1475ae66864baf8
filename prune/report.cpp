// PruneReport printing: a per-layer table with totals, and the pruned channels with the BN
// statistics docs/methods.md, "PfQ" asks to log; the same as JSON for the run logs.
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "prune/criteria.h"
#include "prune/prune.h"

namespace lowbit::prune {

namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string pad(const std::string& s, size_t w) {
  return s.size() >= w ? s : s + std::string(w - s.size(), ' ');
}

nlohmann::json num(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); }

}  // namespace

std::string PruneReport::table() const {
  std::ostringstream os;
  os << "pruning: method " << options.method << ", mode " << options.mode;
  if (find_criterion(options.method).folds) {  // PfQ's options; the ratio criteria's below
    os << ", var_threshold "
       << (options.var_threshold < 0 ? std::string("BN eps") : fmt("%g", options.var_threshold))
       << ", border " << options.border << ", constant " << options.constant << ", residual "
       << options.residual;
  } else {
    os << ", ratio " << options.ratio << " (" << options.scope << ")";
  }
  os << "\n";
  size_t w = 5;
  for (const LayerChange& l : layers) w = std::max(w, l.name.size());
  os << pad("layer", w) << "  " << pad("type", 12) << "  channels     masked  params\n";
  for (const LayerChange& l : layers) {
    os << pad(l.name, w) << "  " << pad(l.type, 12) << "  "
       << pad(std::to_string(l.channels_before) + " -> " + std::to_string(l.channels_after), 11)
       << "  " << pad(std::to_string(l.masked), 6) << "  " << l.params_before << " -> "
       << l.params_after << "\n";
  }
  os << "channels: " << removed << " removed, " << masked << " masked, " << skipped << " skipped\n";
  os << "params: " << params_before << " -> " << params_after << "; model bytes: " << bytes_before
     << " -> " << bytes_after << "; MACs/sample: " << macs_before << " -> " << macs_after
     << "; BOPs/sample: " << fmt("%.4g", bops_before) << " -> " << fmt("%.4g", bops_after) << "\n";
  if (!channels.empty()) {
    os << "pruned channels (layer channel action: var gamma beta out_std -> constant):\n";
    for (const PrunedChannel& c : channels) {
      os << "  " << c.layer << " " << c.channel << " " << c.action << ": " << fmt("%.3g", c.var)
         << " " << fmt("%.4g", c.gamma) << " " << fmt("%.4g", c.beta) << " "
         << fmt("%.3g", c.out_std) << " -> "
         << (std::isnan(c.constant) ? std::string("not folded") : fmt("%.4g", c.constant));
      if (!c.reason.empty()) os << " (" << c.reason << ")";
      os << "\n";
    }
  }
  return os.str();
}

nlohmann::json PruneReport::to_json() const {
  nlohmann::json j;
  j["options"] = {{"method", options.method},
                  {"ratio", options.ratio},
                  {"scope", options.scope},
                  {"var_threshold", options.var_threshold},
                  {"out_std_threshold", options.out_std_threshold},
                  {"border", options.border},
                  {"constant", options.constant},
                  {"mode", options.mode},
                  {"residual", options.residual}};
  j["removed"] = removed;
  j["masked"] = masked;
  j["skipped"] = skipped;
  j["params_before"] = params_before;
  j["params_after"] = params_after;
  j["bytes_before"] = bytes_before;
  j["bytes_after"] = bytes_after;
  j["macs_before"] = macs_before;
  j["macs_after"] = macs_after;
  j["bops_before"] = bops_before;
  j["bops_after"] = bops_after;
  j["layers"] = nlohmann::json::array();
  for (const LayerChange& l : layers) {
    j["layers"].push_back({{"name", l.name},
                           {"type", l.type},
                           {"channels_before", l.channels_before},
                           {"channels_after", l.channels_after},
                           {"masked", l.masked},
                           {"params_before", l.params_before},
                           {"params_after", l.params_after}});
  }
  j["channels"] = nlohmann::json::array();
  for (const PrunedChannel& c : channels) {
    j["channels"].push_back({{"layer", c.layer},
                             {"conv", c.conv},
                             {"channel", c.channel},
                             {"action", c.action},
                             {"reason", c.reason},
                             {"score", num(c.score)},
                             {"running_var", num(c.var)},
                             {"gamma", num(c.gamma)},
                             {"beta", num(c.beta)},
                             {"out_std", num(c.out_std)},
                             {"constant", num(c.constant)}});
  }
  return j;
}

}  // namespace lowbit::prune
