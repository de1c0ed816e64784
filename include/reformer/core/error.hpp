#pragma once
// Errors thrown by the library, and the internal assert macro.
//
// Public entry points validate their arguments and throw a reformer::Error (or a subclass) whose
// message starts with the function name and names the offending argument and its values, e.g.
//   "linear_forward: x.rows() = 7 must equal the weight's in_features = 8".
// Inner loops use REFORMER_ASSERT, which compiles to nothing unless REFORMER_ENABLE_ASSERTS is
// defined (the test build defines it).
#include "reformer/core/types.hpp"

#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace reformer {

/// Base of every exception the library throws.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

/// A wrong argument: shape mismatch, value out of range, NaN/Inf input.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

/// Inconsistent configuration (a config struct's validate() failed).
class ConfigError : public InvalidArgument {
 public:
  using InvalidArgument::InvalidArgument;
};

/// Reading or writing a file failed, or a file is corrupt / truncated / does not match.
class IoError : public Error {
 public:
  using Error::Error;
};

namespace detail {
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

/// "(a, b, c)": a list of sizes in a message.
inline std::string list_to_string(const std::vector<Index>& v) {
  std::ostringstream os;
  os << '(';
  for (std::size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  os << ')';
  return os.str();
}
}  // namespace detail

/// Throws E with the message "<where>: <args...>".
template <class E = InvalidArgument, class... Args>
[[noreturn]] void raise(const char* where, const Args&... args) {
  throw E(detail::concat(where, ": ", args...));
}

/// Throws InvalidArgument unless `actual_rows x actual_cols` equals the expected shape
/// (a negative expected extent accepts anything).
inline void check_shape(const char* where, const char* arg, Index actual_rows, Index actual_cols,
                        Index expected_rows, Index expected_cols) {
  if ((expected_rows >= 0 && actual_rows != expected_rows) ||
      (expected_cols >= 0 && actual_cols != expected_cols)) {
    raise(where, arg, " has shape ", actual_rows, " x ", actual_cols, ", expected ",
          expected_rows < 0 ? std::string("any") : std::to_string(expected_rows), " x ",
          expected_cols < 0 ? std::string("any") : std::to_string(expected_cols));
  }
}

}  // namespace reformer

/// Throws `E` with a message built from the remaining arguments unless `cond` holds.
#define REFORMER_REQUIRE(cond, E, where, ...)              \
  do {                                                     \
    if (!(cond)) ::reformer::raise<E>(where, __VA_ARGS__); \
  } while (0)

#if defined(REFORMER_ENABLE_ASSERTS)
#define REFORMER_ASSERT(cond)                                                                  \
  do {                                                                                         \
    if (!(cond))                                                                               \
      ::reformer::raise<::reformer::Error>("internal assertion", #cond, " at ", __FILE__, ":", \
                                           __LINE__);                                          \
  } while (0)
#else
#define REFORMER_ASSERT(cond) ((void)0)
#endif
