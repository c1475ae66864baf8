// Out-of-line failure path of LOWBIT_CHECK, so the macro expands to little code at each site.
#include "core/error.h"

#include <cstring>

namespace lowbit::detail {

void throw_check_failure(const char* file, int line, const char* cond, const std::string& msg) {
  const char* base = std::strrchr(file, '/');
  std::ostringstream os;
  os << (base ? base + 1 : file) << ":" << line << ": ";
  if (cond && cond[0] != '\0') os << "check failed (" << cond << "): ";
  os << msg;
  throw Error(os.str());
}

}  // namespace lowbit::detail
