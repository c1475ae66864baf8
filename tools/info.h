// `lowbit info`: the build, its backends and the visible devices.
#pragma once

#include <ostream>

namespace lowbit::tools {

int run_info(std::ostream& out);

}  // namespace lowbit::tools
