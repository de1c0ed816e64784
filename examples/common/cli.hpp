#pragma once
// Command-line plumbing shared by the example programs (CLI11, Debian libcli11-dev).
//
// run_program() parses the command line and runs the program body, turning every failure into
// ONE line on stderr ("<program>: error: <what went wrong>") and exit code 1 (2 for a bad
// command line), never a crash or a stack trace. `--help` prints every flag with its default.
#include "reformer/core/error.hpp"

#include <CLI/CLI.hpp>

#include <cstdio>
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
    return std::forward<Body>(body)();
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
