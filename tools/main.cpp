// The lowbit CLI: dispatches subcommands and turns exceptions into exit codes (2 for bad
// input, 1 for runtime failures) with one clear line on stderr.
#include <cstring>
#include <iostream>
#include <string>

#include "core/error.h"
#include "tools/info.h"

namespace {

const char* kUsage =
    "usage: lowbit <command> [options]\n"
    "\n"
    "commands:\n"
    "  info      print the build, backends and visible devices\n"
    "\n"
    "Run 'lowbit <command> --help' for a command's options.\n";

int run(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  if (cmd == "info") {
    if (argc > 2 && (!std::strcmp(argv[2], "--help") || !std::strcmp(argv[2], "-h"))) {
      std::cout << "usage: lowbit info\n\nPrints the lowbit version, whether the CUDA backend "
                   "was compiled in, the CPU threads and every visible CUDA device.\n";
      return 0;
    }
    return lowbit::tools::run_info(std::cout);
  }
  throw lowbit::InputError("unknown command '" + cmd + "'; run 'lowbit --help' for the list");
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const lowbit::InputError& e) {
    std::cerr << "lowbit: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "lowbit: error: " << e.what() << "\n";
    return 1;
  }
}
