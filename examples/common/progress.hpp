#pragma once
// What a user sees during a long run: one live status line
//   step 1200/5000  loss 0.8123  acc 93.1%  31.2k tok/s  elapsed 0:02:41  ETA 0:08:30
// redrawn in place (carriage return) at most `kLiveRedrawSeconds` apart when the output is a
// terminal, and written as plain lines every `plain_interval_seconds` otherwise (a log file, a
// pipe, CI), so logs stay readable. Messages (evaluations, checkpoints) go through message(),
// which clears the live line first.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace reformer::examples {

/// True when `stream` is an interactive terminal.
inline bool is_terminal(std::FILE* stream) {
#if defined(__unix__) || defined(__APPLE__)
  return ::isatty(::fileno(stream)) != 0;
#else
  (void)stream;
  return false;
#endif
}

/// "h:mm:ss" (or "--:--:--" for an unknown duration).
inline std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--:--";
  const auto total = static_cast<long long>(seconds + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", total / 3600, (total / 60) % 60, total % 60);
  return buf;
}

/// "812", "31.2k", "1.25M".
inline std::string format_count(double v) {
  char buf[32];
  if (v >= 1e6) {
    std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
  } else if (v >= 1e4) {
    std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
  } else {
    std::snprintf(buf, sizeof buf, "%.0f", v);
  }
  return buf;
}

/// printf into a std::string.
template <class... Args>
std::string format(const char* fmt, Args... args) {
  char buf[512];
  std::snprintf(buf, sizeof buf, fmt, args...);
  return buf;
}

class Progress {
 public:
  enum class Mode { kAuto, kLive, kPlain };
  static constexpr double kLiveRedrawSeconds = 0.2;

  /// A display for steps (first_step, total_steps]; `first_step` > 0 when a run is resumed.
  Progress(std::int64_t first_step, std::int64_t total_steps, Mode mode = Mode::kAuto,
           double plain_interval_seconds = 10.0, std::FILE* out = stdout)
      : out_(out),
        live_(mode == Mode::kLive || (mode == Mode::kAuto && is_terminal(out))),
        plain_interval_(plain_interval_seconds),
        first_step_(first_step),
        total_steps_(total_steps),
        start_(Clock::now()),
        last_draw_(start_) {}

  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  ~Progress() { end_line(); }

  bool live() const { return live_; }

  /// The run may end before total_steps (at an accuracy target): the ETA shown is then an
  /// upper bound, and says so.
  void set_may_stop_early(bool may) { may_stop_early_ = may; }

  /// Seconds since construction.
  double elapsed() const { return seconds_since(start_); }

  /// Reports that `step` steps are done and `tokens` tokens were processed since construction;
  /// `metrics` is the text in the middle ("loss 0.81  acc 93.1%").
  void update(std::int64_t step, std::int64_t tokens, const std::string& metrics) {
    if (!due(step)) return;
    const auto now = Clock::now();
    last_draw_ = now;
    drawn_ = true;
    const std::string text = status(step, tokens, metrics);
    if (live_) {
      std::fprintf(out_, "\r%s\033[K", text.c_str());
      line_open_ = true;
    } else {
      std::fprintf(out_, "%s\n", text.c_str());
    }
    std::fflush(out_);
  }

  /// Whether update(step, ...) would draw now (so callers can skip preparing the text).
  bool due(std::int64_t step) const {
    if (step >= total_steps_ || !drawn_) return true;
    return seconds_since(last_draw_) >= (live_ ? kLiveRedrawSeconds : plain_interval_);
  }

  /// Prints `text` on its own line (clearing the live line; the next update redraws it).
  void message(const std::string& text) {
    if (live_ && line_open_) std::fprintf(out_, "\r\033[K");
    line_open_ = false;
    std::fprintf(out_, "%s\n", text.c_str());
    std::fflush(out_);
    drawn_ = false;  // redraw the status at the next update
  }

  /// Ends the live line (so later output starts on a fresh line).
  void end_line() {
    if (live_ && line_open_) {
      std::fprintf(out_, "\n");
      std::fflush(out_);
    }
    line_open_ = false;
  }

  /// The status text for `step` (exposed for tests).
  std::string status(std::int64_t step, std::int64_t tokens, const std::string& metrics) const {
    const double t = elapsed();
    const std::int64_t done = step - first_step_;
    const double eta =
        done > 0 ? t / static_cast<double>(done) * static_cast<double>(total_steps_ - step) : -1.0;
    const int width = static_cast<int>(std::to_string(total_steps_).size());
    std::string s = format("step %*lld/%lld", width, static_cast<long long>(step),
                           static_cast<long long>(total_steps_));
    if (!metrics.empty()) s += "  " + metrics;
    s += "  " + (t > 0 ? format_count(static_cast<double>(tokens) / t) : std::string("-")) +
         " tok/s";
    s += "  elapsed " + format_duration(t) + "  ETA " +
         (may_stop_early_ ? "at most " + format_duration(eta) + " (may stop early)"
                          : format_duration(eta));
    return s;
  }

 private:
  using Clock = std::chrono::steady_clock;
  static double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
  }

  std::FILE* out_;
  bool live_;
  double plain_interval_;
  std::int64_t first_step_, total_steps_;
  Clock::time_point start_, last_draw_;
  bool drawn_ = false;
  bool line_open_ = false;
  bool may_stop_early_ = false;
};

}  // namespace reformer::examples
