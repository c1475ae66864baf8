// Parsing of a checkpoint's position and RNG metadata (see the header for the keys).
#include "train/checkpoint_meta.h"

#include <charconv>
#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace lowbit::train {

namespace {

constexpr uint64_t kMaxInt64 = uint64_t(std::numeric_limits<int64_t>::max());

// SEED,OFFSET of a generator.
void parse_rng(const std::string& s, const std::string& where, uint64_t* seed, uint64_t* offset) {
  const size_t comma = s.find(',');
  LOWBIT_CHECK_INPUT(comma != std::string::npos, where, " = '", s, "': wants SEED,OFFSET");
  *seed = parse_count(s.substr(0, comma), where + " seed");
  *offset = parse_count(s.substr(comma + 1), where + " offset");
}

}  // namespace

uint64_t parse_count(const std::string& text, const std::string& where, uint64_t max) {
  const bool digits = !text.empty() && text.find_first_not_of("0123456789") == std::string::npos;
  uint64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  const bool ok = digits && ec == std::errc() && end == text.data() + text.size() && v <= max;
  LOWBIT_CHECK_INPUT(ok, where, " = '", text, "': wants an integer from 0 to ", max);
  return v;
}

CheckpointMeta parse_checkpoint_meta(const std::map<std::string, std::string>& m,
                                     const std::string& path) {
  LOWBIT_CHECK_INPUT(m.count("stage") && m.count("epoch") && m.count("global_epoch"), path,
                     ": not a lowbit training checkpoint (no position metadata)");
  const auto count = [&](const char* key) {
    const auto it = m.find(key);
    LOWBIT_CHECK_INPUT(it != m.end(), path, ": metadata ", key, " is missing");
    return int64_t(parse_count(it->second, str_cat(path, ": metadata ", key), kMaxInt64));
  };
  CheckpointMeta c;
  c.stage = count("stage");
  c.epoch = count("epoch");
  c.global_epoch = count("global_epoch");
  c.mid_epoch = m.count("batch") > 0;
  if (c.mid_epoch) {
    c.batch = count("batch");
    c.last_step = count("last_step");
    const auto it = m.find("epoch_sums");
    LOWBIT_CHECK_INPUT(it != m.end(), path, ": metadata epoch_sums is missing (batch is there)");
    const nlohmann::json sums = nlohmann::json::parse(it->second, nullptr, false);
    const auto sum = [&](const char* key, bool required) {
      const bool has = sums.is_object() && sums.contains(key);
      LOWBIT_CHECK_INPUT(has || !required, path, ": metadata epoch_sums = '", it->second,
                         "': wants a JSON object with loss_sum, correct and seen");
      if (!has) return 0.0;
      const nlohmann::json& v = sums[key];
      LOWBIT_CHECK_INPUT(v.is_number() && std::isfinite(v.get<double>()) && v.get<double>() >= 0,
                         path, ": metadata epoch_sums.", key, " = ", v.dump(),
                         ": wants a finite number >= 0");
      return v.get<double>();
    };
    c.loss_sum = sum("loss_sum", true);
    c.correct = sum("correct", true);
    c.seen = sum("seen", true);
    c.elapsed_s = sum("elapsed_s", false);
  }
  const auto rng = m.find("rng_cpu");
  LOWBIT_CHECK_INPUT(rng != m.end(), path, ": metadata rng_cpu is missing");
  parse_rng(rng->second, path + ": metadata rng_cpu", &c.rng_cpu_seed, &c.rng_cpu_offset);
  const auto rng_device = m.find("rng_device");
  c.has_rng_device = rng_device != m.end();
  if (c.has_rng_device) {
    parse_rng(rng_device->second, path + ": metadata rng_device", &c.rng_device_seed,
              &c.rng_device_offset);
  }
  if (m.count("world_size")) {
    c.world_size = count("world_size");
    LOWBIT_CHECK_INPUT(c.world_size >= 1, path, ": metadata world_size = 0: wants 1 or more");
  }
  return c;
}

}  // namespace lowbit::train
