// lowbit::Error and the check macros every folder uses.
// LOWBIT_CHECK is for anything a user, a config or a file can cause: it builds its message only
// on failure and puts file:line, the failed condition and the streamed pieces into the error.
// LOWBIT_DCHECK guards internal invariants and compiles to nothing in release builds.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace lowbit {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Bad input (config, data file, argument): the CLI maps it to exit code 2.
class InputError : public Error {
 public:
  explicit InputError(const std::string& what) : Error(what) {}
};

namespace detail {

template <typename T>
void stream_piece(std::ostringstream& os, const T& v) {
  os << v;
}
// Shapes and other vectors print as [a, b, c].
template <typename T>
void stream_piece(std::ostringstream& os, const std::vector<T>& v) {
  os << "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) os << ", ";
    os << v[i];
  }
  os << "]";
}

inline void stream_pieces(std::ostringstream&) {}
template <typename T, typename... Rest>
void stream_pieces(std::ostringstream& os, const T& first, const Rest&... rest) {
  stream_piece(os, first);
  stream_pieces(os, rest...);
}

template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  stream_pieces(os, args...);
  return os.str();
}

[[noreturn]] void throw_check_failure(const char* file, int line, const char* cond,
                                      const std::string& msg);

}  // namespace detail

// Concatenates its arguments with operator<< into a std::string.
template <typename... Args>
std::string str_cat(const Args&... args) {
  return detail::str_cat(args...);
}

}  // namespace lowbit

#define LOWBIT_CHECK(cond, ...)                                                      \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      ::lowbit::detail::throw_check_failure(__FILE__, __LINE__, #cond,               \
                                            ::lowbit::detail::str_cat(__VA_ARGS__)); \
    }                                                                                \
  } while (0)

// Throws lowbit::InputError: for bad configs, files and arguments (CLI exit code 2).
#define LOWBIT_CHECK_INPUT(cond, ...)                                     \
  do {                                                                    \
    if (!(cond)) {                                                        \
      throw ::lowbit::InputError(::lowbit::detail::str_cat(__VA_ARGS__)); \
    }                                                                     \
  } while (0)

#define LOWBIT_FAIL(...)                                        \
  ::lowbit::detail::throw_check_failure(__FILE__, __LINE__, "", \
                                        ::lowbit::detail::str_cat(__VA_ARGS__))

#ifdef NDEBUG
#define LOWBIT_DCHECK(cond, ...) \
  do {                           \
  } while (0)
#else
#define LOWBIT_DCHECK(cond, ...) LOWBIT_CHECK(cond, __VA_ARGS__)
#endif
