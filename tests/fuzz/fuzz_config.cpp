// libFuzzer target: the YAML experiment config (train/config.cpp, parse_config) with --set
// overrides. Input: the YAML text; each line "#--set KEY=VALUE" (a YAML comment, so it leaves the
// YAML alone) is also passed as an override, at most 4. A config that parses is compared with
// its input by config_differences, as --resume does.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "train/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lowbit;
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> overrides;
  const std::string tag = "#--set ";
  for (size_t pos = text.find(tag); pos != std::string::npos && overrides.size() < 4;
       pos = text.find(tag, pos + 1)) {
    const size_t begin = pos + tag.size();
    const size_t end = text.find('\n', begin);
    overrides.push_back(text.substr(begin, end == std::string::npos ? end : end - begin));
  }
  try {
    const train::ExperimentConfig c = train::parse_config(text, "fuzz.yaml", overrides);
    if (c.stages.empty()) __builtin_trap();
    train::config_differences(text, c.raw_yaml);
  } catch (const InputError&) {
    // A refused config or override: the expected outcome for most inputs.
  }
  return 0;
}
