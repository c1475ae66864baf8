// Helpers shared by the trainer test files: run folders and quiet trainer options.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

#include "train/trainer.h"

namespace lowbit::train::testing_util {

// An empty path under the temp directory, unique to the suite, the name and this process (not
// created: a run creates its folder).
inline std::filesystem::path fresh_dir(const std::string& suite, const std::string& name) {
  std::filesystem::path d = std::filesystem::temp_directory_path() /
                            ("lowbit_" + suite + "_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  return d;
}

// Trainer options writing to `out`, without progress output.
inline TrainerOptions quiet(const std::filesystem::path& out) {
  TrainerOptions o;
  o.out_dir = out.string();
  o.progress = false;
  return o;
}

}  // namespace lowbit::train::testing_util
