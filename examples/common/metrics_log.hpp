#pragma once
// The metrics log of a run: one JSON object per line (JSON lines), flushed after every record so
// an interrupted run keeps everything it reported. scripts/plot_metrics.py turns it into a PNG.
//
// Records carry an "event" ("train", "eval", "checkpoint", "config", "done", ...), the "step"
// and the wall time "elapsed_s" plus whatever the program measures, e.g.
//   {"event":"eval","step":400,"elapsed_s":61.2,"eval_loss":0.05,"eval_acc":0.991}
#include "reformer/core/error.hpp"

#include <nlohmann/json.hpp>

#include <fstream>
#include <string>

namespace reformer::examples {

class MetricsLog {
 public:
  MetricsLog() = default;

  /// Opens `path` for writing (appending when `append`, e.g. for a resumed run).
  explicit MetricsLog(const std::string& path, bool append = false) : path_(path) {
    out_.open(path, append ? std::ios::app : std::ios::trunc);
    REFORMER_REQUIRE(out_.good(), IoError, "MetricsLog", "cannot open '", path, "' for writing");
  }

  bool is_open() const { return out_.is_open(); }
  const std::string& path() const { return path_; }

  /// Appends one record.
  void write(const nlohmann::json& record) {
    if (!out_.is_open()) return;
    out_ << record.dump() << '\n';
    out_.flush();
    REFORMER_REQUIRE(out_.good(), IoError, "MetricsLog::write", "writing '", path_, "' failed");
  }

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace reformer::examples
