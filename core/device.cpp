#include "core/device.h"

#include <cstdlib>

#include "core/error.h"

namespace lowbit {

Device Device::parse(const std::string& s) {
  if (s == "cpu") return cpu();
  if (s == "cuda") return cuda(0);
  if (s.rfind("cuda:", 0) == 0 && s.size() > 5) {
    char* end = nullptr;
    long i = std::strtol(s.c_str() + 5, &end, 10);
    if (*end == '\0' && i >= 0 && i < 1024) return cuda(int(i));
  }
  throw InputError(str_cat("unknown device '", s, "': allowed are cpu, cuda, cuda:N"));
}

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}

std::ostream& operator<<(std::ostream& os, const Device& d) { return os << d.str(); }

}  // namespace lowbit
