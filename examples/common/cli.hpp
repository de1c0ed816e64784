#pragma once
// Command-line plumbing shared by the example programs (CLI11, Debian libcli11-dev).
//
// run_program() parses the command line and runs the program body, turning every failure into
// ONE line on stderr ("<program>: error: <what went wrong>") and exit code 1 (2 for a bad
// command line), never a crash or a stack trace; output that could not be written (a full
// disk) is such a failure too. `--help` prints every flag with its default.
#include "reformer/core/error.hpp"

#include <CLI/CLI.hpp>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <utility>

namespace reformer::examples {

/// Exit codes of the example programs.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;        ///< a run-time error (file, checkpoint, numerics)
inline constexpr int kExitUsage = 2;          ///< a bad command line
inline constexpr int kExitInterrupted = 130;  ///< stopped by Ctrl-C after saving (128 + SIGINT)

/// `text` on one line: newlines and tabs become spaces, trailing blanks are dropped.
inline std::string one_line(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}

/// Prints "<program>: error: <message>" to stderr.
inline void print_error(const std::string& program, const std::string& message) {
  std::fprintf(stderr, "%s: error: %s\n", program.c_str(), one_line(message).c_str());
  std::fflush(stderr);
}

/// Makes --help show the default of every option added afterwards.
inline void show_defaults(CLI::App& app) {
  app.option_defaults()->always_capture_default();
  app.get_formatter()->column_width(34);
}

/// Validator: an even integer in [lo, hi].
inline CLI::Validator even_in_range(long long lo, long long hi) {
  return CLI::Validator(
      [lo, hi](std::string& input) -> std::string {
        long long v = 0;
        if (!CLI::detail::lexical_cast(input, v) || v < lo || v > hi || v % 2 != 0) {
          return "value " + input + " must be an even integer in [" + std::to_string(lo) + ", " +
                 std::to_string(hi) + "]";
        }
        return std::string();
      },
      "EVEN in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
}

/// Validator: 0, or an even integer in [lo, hi].
inline CLI::Validator zero_or_even_in_range(long long lo, long long hi) {
  const CLI::Validator even = even_in_range(lo, hi);
  return CLI::Validator([even](std::string& v) { return v == "0" ? std::string() : even(v); },
                        "0|EVEN");
}

/// Validator: a finite number (CLI11's ranges let "nan" through: every comparison with NaN is
/// false). OptionTable adds it to every floating-point option.
inline CLI::Validator finite_number() {
  return CLI::Validator(
      [](std::string& input) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(input.c_str(), &end);
        if (input.empty() || end != input.c_str() + input.size() || !std::isfinite(v))
          return "value " + input + " must be a finite number";
        return std::string();
      },
      "FINITE");
}

/// Validator: a non-negative integer that fits 64 bits, written in decimal digits only (CLI11
/// would turn "-1" or "2^64" into 2^64 - 1). OptionTable adds it to every unsigned option.
inline CLI::Validator unsigned_integer() {
  return CLI::Validator(
      [](std::string& input) -> std::string {
        const std::string fail = "value " + input + " must be an integer in [0, 2^64 - 1]";
        if (input.empty() || input.size() > 20 ||
            input.find_first_not_of("0123456789") != std::string::npos)
          return fail;
        errno = 0;
        (void)std::strtoull(input.c_str(), nullptr, 10);
        return errno == ERANGE ? fail : std::string();
      },
      "UINT64");
}

/// Flushes standard output and reports whether everything written to it arrived (false after
/// a write error such as a full disk).
inline bool flush_stdout(std::string& error) {
  errno = 0;
  const bool ok = std::fflush(stdout) == 0 && std::ferror(stdout) == 0;
  if (!ok) {
    error = std::string("writing to standard output failed") +
            (errno != 0 ? std::string(": ") + std::strerror(errno) : std::string(" (disk full?)"));
  }
  return ok;
}

/// Parses argv into `app` and runs `body()` (returning the exit code). Every exception ends as
/// one line on stderr and a non-zero exit code.
template <class Body>
int run_program(CLI::App& app, int argc, char** argv, Body&& body) {
  const std::string program = app.get_name();
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    print_error(program, std::string(e.what()) + " (see --help)");
    return kExitUsage;
  }
  try {
    const int code = std::forward<Body>(body)();
    std::string error;
    if (!flush_stdout(error)) {
      print_error(program, error);
      return code == kExitOk ? kExitFailure : code;
    }
    return code;
  } catch (const CLI::Error& e) {
    print_error(program, e.what());
    return kExitUsage;
  } catch (const reformer::Error& e) {
    print_error(program, e.what());
  } catch (const std::bad_alloc&) {
    print_error(program,
                "out of memory (the model, a batch of --batch x --length or the data does not "
                "fit: try smaller values)");
  } catch (const std::exception& e) {
    print_error(program, e.what());
  } catch (...) {
    print_error(program, "unknown error");
  }
  return kExitFailure;
}

/// Throws CLI::ValidationError (reported as a usage error) unless `cond` holds.
inline void require_option(bool cond, const std::string& option, const std::string& message) {
  if (!cond) throw CLI::ValidationError(option, message);
}

}  // namespace reformer::examples
