#pragma once
// Small pieces of run set-up shared by the example programs: threads, output directory (and the
// temporaries a killed checkpoint write left in it), position embeddings, learning-rate schedule,
// progress mode, the -march of the build.
#include "common/progress.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/core/types.hpp"
#include "reformer/model/config.hpp"
#include "reformer/model/schedule.hpp"

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <filesystem>
#include <string>
#include <system_error>
#include <thread>

#if defined(__unix__) || defined(__APPLE__)
#include <signal.h>
#include <sys/types.h>
#endif

namespace reformer::examples {

/// The -march value the program was compiled with (CMake REFORMER_MARCH, e.g. "native" or
/// "haswell"), or "default" without one (REFORMER_NATIVE=OFF: the compiler's default target).
inline const char* build_march() {
#if defined(REFORMER_BUILD_MARCH)
  return REFORMER_BUILD_MARCH;
#else
  return "default";
#endif
}

/// Sets the library's thread count (`requested` 0 = one per core) and returns it.
inline int apply_threads(int requested) {
  int n = requested;
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  set_num_threads(n);
  return n;
}

/// Position embeddings for sequences of length `length`: "learned" (absolute, one row per
/// position) or "axial" (s1 x s2 >= length, half of the width each).
inline void set_positions(ReformerConfig& c, const std::string& kind, Index length) {
  if (kind == "learned") {
    c.axial_pos_embds = false;
    c.max_position_embeddings = length;
    return;
  }
  REFORMER_REQUIRE(kind == "axial", InvalidArgument, "set_positions", "kind = '", kind,
                   "' is not one of 'learned', 'axial'");
  Index s2 = 1;
  while (s2 * s2 < length) ++s2;
  const Index s1 = (length + s2 - 1) / s2;
  c.axial_pos_embds = true;
  c.axial_pos_shape = {s1, s2};
  c.axial_pos_embds_dim = {c.hidden_size / 2, c.hidden_size - c.hidden_size / 2};
  c.max_position_embeddings = s1 * s2;
}

/// The learning-rate schedule `kind` with a linear warmup over `warmup` steps, then
///   constant: the peak;  rsqrt: peak * sqrt(warmup / step);
///   cosine: from the peak down to a tenth of it at step `steps` (the optimizer refuses lr 0).
inline LrSchedule make_schedule(const std::string& kind, double lr, std::int64_t warmup,
                                std::int64_t steps) {
  if (kind == "rsqrt") return LrSchedule::warmup_rsqrt(lr, warmup > 0 ? warmup : 1);
  if (kind == "cosine") {
    const std::int64_t total = std::max<std::int64_t>(steps, 1);
    return LrSchedule::warmup_cosine(lr, std::min(warmup, total - 1), total, 0.1 * lr);
  }
  REFORMER_REQUIRE(kind == "constant", InvalidArgument, "make_schedule", "kind = '", kind,
                   "' is not one of 'constant', 'cosine', 'rsqrt'");
  if (warmup <= 0) return LrSchedule::constant(lr);
  // Warmup, then flat: a cosine whose floor is the peak.
  return LrSchedule::warmup_cosine(lr, warmup, warmup + 1, lr);
}

inline Progress::Mode progress_mode(const std::string& name) {
  if (name == "live") return Progress::Mode::kLive;
  if (name == "plain") return Progress::Mode::kPlain;
  return Progress::Mode::kAuto;
}

/// The directory part of `path` ("." when it has none).
inline std::string parent_dir(const std::string& path) {
  const std::string p = std::filesystem::path(path).parent_path().string();
  return p.empty() ? std::string(".") : p;
}

/// Whether process `pid` is running (false when unknown or not a POSIX system).
inline bool process_alive(long long pid) {
#if defined(__unix__) || defined(__APPLE__)
  if (pid <= 0) return false;
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
#else
  (void)pid;
  return false;
#endif
}

/// Removes the temporaries "<path>.tmp.<pid>.<ticks>" that an atomic write of `path`
/// (SafetensorsWriter::write) leaves when its process is killed, except those of a process
/// still running (it may be writing them). Returns how many were removed; never throws.
inline int remove_stale_temporaries(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const std::string prefix = target.filename().string() + ".tmp.";
  std::error_code ec;
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  int removed = 0;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    const std::string rest = name.substr(prefix.size());  // "<pid>.<ticks>"
    const auto dot = rest.find('.');
    if (dot == 0 || dot == std::string::npos || dot > 18 ||
        rest.find_first_not_of("0123456789.") != std::string::npos)
      continue;
    if (process_alive(std::stoll(rest.substr(0, dot)))) continue;
    std::error_code remove_ec;
    if (fs::remove(it->path(), remove_ec)) ++removed;
  }
  return removed;
}

/// The output directory of a run, created if needed: `requested`, else `fallback` (a resumed
/// run's directory), else "<prefix>-YYYYmmdd-HHMMSS".
inline std::string prepare_out_dir(const std::string& requested, const std::string& fallback,
                                   const std::string& prefix) {
  std::string dir = requested.empty() ? fallback : requested;
  if (dir.empty()) {
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
    dir = prefix + "-" + stamp;
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir)) {
    raise<IoError>("prepare_out_dir", "cannot create the output directory '", dir,
                   "': ", ec ? ec.message() : std::string("not a directory"));
  }
  return dir;
}

}  // namespace reformer::examples
