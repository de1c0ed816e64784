#pragma once
// Single source of the library version; CMake parses these three lines.
#define REFORMER_VERSION_MAJOR 0
#define REFORMER_VERSION_MINOR 1
#define REFORMER_VERSION_PATCH 0

#define REFORMER_VERSION_STRING "0.1.0"

namespace reformer {
/// The library version as "major.minor.patch".
inline constexpr const char* version_string() { return REFORMER_VERSION_STRING; }
}  // namespace reformer
