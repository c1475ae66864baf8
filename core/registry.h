// Registry<T>: named entries of one kind (models, pruning criteria, optimizers, LR schedules,
// datasets, stage kinds), so the framework looks choices up by name and never chains ifs over
// names. Entries are added by static registrar objects in the files that define them, into a
// function-local static (the one kind of mutable global docs/style.md allows); registering a name
// twice is an error. Lookups of unknown names throw InputError listing what is registered, and
// names() feeds config validation, --help and the docs checks.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"

namespace lowbit {

template <typename T>
class Registry {
 public:
  // kind: what an entry is, for messages ("optimizer", "LR schedule").
  explicit Registry(std::string kind) : kind_(std::move(kind)) {}
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  void add(const std::string& name, T entry) {
    LOWBIT_CHECK(entries_.emplace(name, std::move(entry)).second, kind_, " '", name,
                 "' registered twice");
  }
  bool has(const std::string& name) const { return entries_.count(name) > 0; }
  // The entry; InputError "unknown <kind> 'name'; allowed: a, b, c" otherwise.
  const T& get(const std::string& name) const {
    auto it = entries_.find(name);
    if (it == entries_.end())
      throw InputError(str_cat("unknown ", kind_, " '", name, "'; allowed: ", joined_names()));
    return it->second;
  }
  std::vector<std::string> names() const {  // sorted
    std::vector<std::string> out;
    for (const auto& [n, e] : entries_) out.push_back(n);
    return out;
  }
  std::string joined_names() const {
    std::string s;
    for (const auto& [n, e] : entries_) s += (s.empty() ? "" : ", ") + n;
    return s;
  }
  const std::string& kind() const { return kind_; }

 private:
  std::string kind_;
  std::map<std::string, T> entries_;
};

}  // namespace lowbit
