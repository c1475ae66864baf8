// `lowbit compare RUN...`: the runs' summary.json side by side as one markdown table (config,
// top-1, top-5, parameters, model bytes, compression, BOPs, images/s, wall time, ranks), with each
// run's difference to the first, and the config keys that differ from the first run's.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace lowbit::tools {

// runs: run folders (holding summary.json) or summary.json files. InputError naming the path for
// a missing or unreadable summary.
int run_compare(const std::vector<std::string>& runs, std::ostream& out);

}  // namespace lowbit::tools
