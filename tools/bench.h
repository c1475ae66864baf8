// `lowbit bench`: the kernel and training-step benchmarks of bench/ from the command line.
#pragma once

#include <ostream>

namespace lowbit::tools {

// argv[1] is "bench". Prints results (text or one JSON object per line with --json) to `out`;
// throws InputError for bad arguments.
int run_bench(int argc, char** argv, std::ostream& out);

}  // namespace lowbit::tools
