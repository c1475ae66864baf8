// `lowbit info`: the build, its backends and the visible devices.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace lowbit::tools {

int run_info(std::ostream& out);
// `lowbit info --model CONFIG [--set K=V]...`: the model's per-layer accounting table
// (docs/methods.md, "Accounting": parameters, bits, MACs, BOPs, bytes), float and, when the config
// has a quant: section, as quantize_model converts it (all quantizers on; the conversion probe is
// random normal input).
int run_info_model(const std::string& config, const std::vector<std::string>& sets,
                   std::ostream& out);

}  // namespace lowbit::tools
