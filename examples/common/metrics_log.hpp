#pragma once
// The metrics log of a run: one JSON object per line (JSON lines), flushed after every record so
// an interrupted run keeps everything it reported. scripts/plot_metrics.py turns it into a PNG.
//
// Records carry an "event" ("train", "eval", "checkpoint", "config", "done", ...), the "step"
// and the wall time "elapsed_s" plus whatever the program measures, e.g.
//   {"event":"eval","step":400,"elapsed_s":61.2,"eval_loss":0.05,"eval_acc":0.991}
#include "reformer/core/error.hpp"
#include "reformer/io/json_reader.hpp"
#include "reformer/io/safetensors.hpp"  // SafetensorsWriter::write_file_atomically

#include <nlohmann/json.hpp>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace reformer::examples {

class MetricsLog {
 public:
  MetricsLog() = default;

  /// Opens `path` for writing (appending when `append`, e.g. for a resumed run). With
  /// `keep_through_step` >= 0 (the step a run resumes at) an appended log first loses the records
  /// of later steps: those of an invocation killed after its last checkpoint, which the resumed
  /// run computes again.
  explicit MetricsLog(const std::string& path, bool append = false,
                      std::int64_t keep_through_step = -1)
      : path_(path) {
    if (append && keep_through_step >= 0) drop_records_after(path, keep_through_step);
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

  /// Rewrites the log at `path` (atomically) without the records whose "step" exceeds `step`
  /// and without lines that are not JSON (torn writes); other lines are kept as they are.
  /// Returns how many lines were dropped (0 when the file does not exist).
  static int drop_records_after(const std::string& path, std::int64_t step) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return 0;
    std::string kept, line;
    int dropped = 0;
    while (std::getline(in, line)) {
      const io::JsonReadResult r = io::read_json(line);
      const bool later = r.ok() && r.value.is_object() && r.value.contains("step") &&
                         r.value["step"].is_number_integer() &&
                         r.value["step"].get<std::int64_t>() > step;
      if (later || !r.ok()) {  // !r.ok(): a record torn by a kill in the middle of its write
        ++dropped;
      } else {
        kept += line + '\n';
      }
    }
    in.close();
    if (dropped > 0) {
      io::SafetensorsWriter::write_file_atomically(path,
                                                   std::vector<char>(kept.begin(), kept.end()));
    }
    return dropped;
  }

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace reformer::examples
