#pragma once
// What the training programs share: the settings every one of them has (TrainSettings, with
// their option rows), resuming from a checkpoint, and a TrainingRun that owns the model, the
// optimizer, the output directory and the metrics log and runs train_loop with checkpoints
// (io::Checkpoint: parameters, Adam state, config, the run settings as user JSON). Under mpirun
// every rank makes a TrainingRun; rank 0 alone owns the output directory (common/ranks.hpp).
#include "common/cli.hpp"
#include "common/interrupt.hpp"
#include "common/metrics_log.hpp"
#include "common/option_table.hpp"
#include "common/progress.hpp"
#include "common/ranks.hpp"
#include "common/run_setup.hpp"
#include "common/training_loop.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"
#include "reformer/io/checkpoint.hpp"
#include "reformer/model/config.hpp"
#include "reformer/model/optimizer.hpp"
#include "reformer/model/reformer_lm.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <set>
#include <string>
#include <utility>

namespace reformer::examples {

/// Settings every training program has; each program sets its own defaults in its constructor.
struct TrainSettings {
  // model
  std::string attention;
  Index layers = 1;
  Index d_model = 128;
  Index d_ff = 256;
  Index heads = 4;
  Index hashes = 1;
  Index chunk = 64;
  Index buckets = 0;
  std::string positions = "learned";
  double dropout = 0.0;
  // optimisation
  Index length = 256;
  Index batch = 8;
  std::int64_t steps = 2000;
  double lr = 1e-3;
  std::int64_t warmup = 0;
  std::string schedule = "constant";
  double clip = 1.0;
  std::uint64_t seed = 1;
  // run
  int threads = 0;
  std::int64_t kept_mib = 0;  ///< kept-activation budget of the backward, MiB (0: none)
  std::int64_t eval_every = 100;
  std::int64_t checkpoint_every = 0;
  std::string out_dir;
  std::string resume;
  std::string progress = "auto";
  bool may_stop_early = false;  ///< the program may end before --steps (the ETA is a bound)
};

/// The model options after --attention (group "Model").
template <class Settings>
void add_model_options(OptionTable<Settings>& t) {
  using S = TrainSettings;
  const auto run = OptionScope::kRun;
  t.option("--layers", &S::layers, "Reversible layers", run, CLI::Range(Index{1}, Index{64}))
      .option("--d-model", &S::d_model, "Model width d_model", run,
              CLI::Range(Index{2}, Index{8192}))
      .option("--d-ff", &S::d_ff, "Feed-forward width d_ff", run,
              CLI::Range(Index{1}, Index{65536}))
      .option("--heads", &S::heads, "Attention heads (must divide d_model)", run,
              CLI::Range(Index{1}, Index{256}))
      .option("--hashes,-R", &S::hashes, "LSH hash rounds (training)", run,
              CLI::Range(Index{1}, kLshMaxHashes))
      .option("--chunk", &S::chunk, "LSH / local chunk length (T / chunk chunks per round)", run,
              CLI::Range(Index{1}, Index{1} << 20))
      .option("--buckets", &S::buckets, "LSH buckets per round (even; 0 = auto, 2T/chunk)", run,
              zero_or_even_in_range(2, 1 << 30))
      .option("--positions", &S::positions, "Position embeddings: learned (absolute) or axial", run,
              CLI::IsMember({"learned", "axial"}))
      .option("--dropout", &S::dropout, "Dropout probability (hidden and attention)", run,
              CLI::Range(0.0, 0.9));
}

/// The optimisation options (group "Training"); --steps may be extended on --resume.
template <class Settings>
void add_training_options(OptionTable<Settings>& t, const std::string& steps_help,
                          const std::string& batch_help) {
  using S = TrainSettings;
  const auto run = OptionScope::kRun;
  t.group("Training")
      .option("--steps", &S::steps, steps_help, OptionScope::kExtend,
              CLI::Range(std::int64_t{1}, std::int64_t{1} << 40))
      .option("--batch,-B", &S::batch, batch_help, run, CLI::Range(Index{1}, Index{1} << 16))
      .option("--lr", &S::lr, "Peak learning rate (Adam)", run, CLI::Range(1e-8, 10.0))
      .option("--warmup", &S::warmup, "Linear learning-rate warmup steps", run,
              CLI::Range(std::int64_t{0}, std::int64_t{1} << 40))
      .option("--schedule", &S::schedule,
              "After warmup: constant, cosine (to lr/10 at --steps) or rsqrt", run,
              CLI::IsMember({"constant", "cosine", "rsqrt"}))
      .option("--clip", &S::clip, "Gradient-norm clipping (0 = off)", run, CLI::Range(0.0, 1e6))
      .option("--seed", &S::seed, "Seed of the initialisation, LSH rotations, dropout and data",
              run);
}

/// The per-invocation options of a training run (group "Run"); `out_prefix` names the default
/// output directory ("runs/copy").
template <class Settings>
void add_run_options(OptionTable<Settings>& t, const std::string& out_prefix) {
  using S = TrainSettings;
  const auto invocation = OptionScope::kInvocation;
  const auto extend = OptionScope::kExtend;  // saved; a resumed run keeps them unless given
  t.group("Run")
      .option("--threads", &S::threads, "Threads (0 = all cores)", extend, CLI::Range(0, 1024))
      .option("--kept-mib", &S::kept_mib,
              "Memory (MiB) the backward may spend keeping feed-forward and LSH attention "
              "activations, to skip their recompute (0 = none: memory independent of depth)",
              extend, CLI::Range(std::int64_t{0}, std::int64_t{1} << 30))
      .option("--eval-every", &S::eval_every, "Evaluate on the held-out data every N steps", extend,
              CLI::Range(std::int64_t{1}, std::int64_t{1} << 40))
      .option("--checkpoint-every", &S::checkpoint_every,
              "Save a checkpoint every N steps (0 = only at the end and on Ctrl-C)", extend,
              CLI::Range(std::int64_t{0}, std::int64_t{1} << 40))
      .option("--out-dir", &S::out_dir,
              "Directory for metrics.jsonl and checkpoint.safetensors (default " + out_prefix +
                  "-<date>-<time>; a resumed run keeps its directory)",
              invocation)
      .option("--resume", &S::resume,
              "Continue the run saved in this checkpoint (its settings apply; --steps may "
              "extend it)",
              invocation, CLI::ExistingFile)
      .option("--progress", &S::progress,
              "Progress display: auto (live line on a terminal), live or plain", invocation,
              CLI::IsMember({"auto", "live", "plain"}));
}

/// The model config of the settings every program shares (vocabulary `vocab`, ReLU, chunked
/// feed-forward and LM head); the program then sets its layer kinds, hash rounds and dropouts.
inline ReformerConfig base_config(const TrainSettings& o, Index vocab) {
  ReformerConfig c;
  c.vocab_size = vocab;
  c.hidden_size = o.d_model;
  c.num_attention_heads = o.heads;
  c.attention_head_size = 0;  // d_model / heads
  c.feed_forward_size = o.d_ff;
  c.hidden_act = "relu";
  c.num_hashes = o.hashes;
  c.lsh_attn_chunk_length = o.chunk;
  c.local_attn_chunk_length = o.chunk;
  if (o.buckets > 0) c.num_buckets = {o.buckets};
  c.hidden_dropout_prob = o.dropout;
  c.local_attention_probs_dropout_prob = o.dropout;
  set_positions(c, o.positions, o.length);
  c.chunk_size_feed_forward = 128;
  c.chunk_size_lm_head = 0;  // automatic (head_chunk_tokens)
  c.seed = o.seed;
  return c;
}

/// The run settings of `s` (the saved options of `table`) with the program's name: what
/// checkpoints store and the metrics log records.
template <class Settings>
nlohmann::json run_settings_json(const OptionTable<Settings>& table, const Settings& s,
                                 const std::string& program) {
  nlohmann::json j = table.to_json(s);
  j["program"] = program;
  return j;
}

/// Usage error unless --heads divides --d-model.
inline void require_heads_divide(const TrainSettings& o) {
  require_option(o.d_model % o.heads == 0, "--heads",
                 format("%lld does not divide --d-model %lld", static_cast<long long>(o.heads),
                        static_cast<long long>(o.d_model)));
}

/// With --resume: the checkpoint, whose saved settings replace those of `s` (a run option given
/// as well is a usage error; IoError when another program wrote the file). Else nullopt.
template <class Settings>
std::optional<io::Checkpoint> resume_settings(const CLI::App& app,
                                              const OptionTable<Settings>& table, Settings& s,
                                              const std::string& program) {
  if (s.resume.empty()) return std::nullopt;
  table.refuse_given(app, {OptionScope::kRun},
                     "cannot be changed when resuming (the checkpoint's value applies)");
  io::Checkpoint ck = io::Checkpoint::open(s.resume);
  if (ck.user().value("program", std::string()) != program) {
    raise<IoError>(program.c_str(), "'", ck.path(), "' was not written by ", program);
  }
  table.restore(ck, app, s);
  return ck;
}

/// The model, its optimizer (restored when resuming), the output directory and metrics log of
/// a training run, and the training loop with checkpoints.
template <class S>
class TrainingRun {
 public:
  TrainingRun(const TrainSettings& o, const ReformerConfig& config,
              const std::optional<io::Checkpoint>& resume, const std::string& out_prefix)
      : model(config),
        opt(model.parameters(), AdamOptions::adam(o.lr)),
        resumed_(resume.has_value()),
        batch_(o.batch) {
    model.set_kept_activation_budget(static_cast<std::size_t>(o.kept_mib) << 20);
    ranks().begin_run();  // from here, an error on one rank ends them all
    if (resume) {
      resume->restore(model, opt);
      prior_elapsed_ = resume->user().value("elapsed_s", 0.0);
    }
    if (ranks().is_root()) {  // rank 0 alone writes: the directory, checkpoints, metrics log
      out_dir =
          prepare_out_dir(o.out_dir, resume ? parent_dir(o.resume) : std::string(), out_prefix);
      checkpoint_path = out_dir + "/checkpoint.safetensors";
      remove_stale_temporaries(checkpoint_path);
      log = MetricsLog(out_dir + "/metrics.jsonl", resumed_, resumed_ ? opt.step_count() : -1);
    } else {
      out_dir = o.out_dir;
      checkpoint_path = out_dir + "/checkpoint.safetensors";
    }
  }

  bool resumed() const { return resumed_; }
  /// Wall time of the run so far, earlier invocations of a resumed run included.
  double elapsed() const { return prior_elapsed_ + (progress_ ? progress_->elapsed() : 0.0); }

  /// Prints where the run writes (and the step it resumes at).
  void print_output() const {
    if (ranks().size() > 1) {
      std::printf("  data-parallel: %d ranks x %lld sequences per step\n", ranks().size(),
                  static_cast<long long>(batch_ / ranks().size()));
    }
    std::printf(
        "  output: %s/ (metrics.jsonl, checkpoint.safetensors)%s\n", out_dir.c_str(),
        resumed_
            ? format(", resuming at step %lld", static_cast<long long>(opt.step_count())).c_str()
            : "");
    std::fflush(stdout);
  }

  /// "<out_dir>/metrics.jsonl (plot: ...)": where the metrics are and how to plot them.
  std::string metrics_hint() const {
    return format(
        "%s/metrics.jsonl (plot: /usr/bin/python3 scripts/plot_metrics.py %s/metrics.jsonl)",
        out_dir.c_str(), out_dir.c_str());
  }

  /// Logs the "config" record: title, run settings, model config, threads, step.
  void log_config(const std::string& title, const nlohmann::json& run, int threads) {
    log.write({{"event", "config"},
               {"title", title},
               {"run", run},
               {"model", nlohmann::json(model.config())},
               {"threads", threads},
               {"ranks", ranks().size()},
               {"step", opt.step_count()},
               {"resumed", resumed_}});
  }

  /// Trains to o.steps (train_loop), saving checkpoints with the run settings `run` (plus the
  /// elapsed time) as their user JSON.
  template <class BatchFn, class EvalFn>
  LoopResult train(const TrainSettings& o, const nlohmann::json& run, BatchFn&& batch,
                   EvalFn&& evaluate) {
    install_interrupt_handler();
    agree_across_ranks(o, run);
    progress_.emplace(opt.step_count(), o.steps, progress_mode(o.progress));
    progress_->set_may_stop_early(o.may_stop_early);
    LoopSettings loop;
    loop.total_steps = o.steps;
    loop.clip = o.clip;
    loop.schedule = make_schedule(o.schedule, o.lr, o.warmup, o.steps);
    loop.eval_every = o.eval_every;
    loop.checkpoint_every = o.checkpoint_every;
    loop.prior_elapsed = prior_elapsed_;
    const LoopResult result =
        train_loop<S>(model, opt, loop, *progress_, log, std::forward<BatchFn>(batch),
                      std::forward<EvalFn>(evaluate), [&](std::int64_t, double elapsed) {
                        if (!ranks().is_root())
                          return checkpoint_path;  // every rank has the same state
                        nlohmann::json user = run;
                        user["elapsed_s"] = elapsed;
                        io::Checkpoint::save(checkpoint_path, model, opt, user);
                        return checkpoint_path;
                      });
    ranks().end_run();
    return result;
  }

  /// Logs the "done" record (with `fields`); on an interrupted run prints how to resume and
  /// returns true.
  bool finish(const LoopResult& result, const nlohmann::json& fields) {
    nlohmann::json record = {{"event", "done"},
                             {"step", result.step},
                             {"elapsed_s", result.elapsed},
                             {"interrupted", result.interrupted}};
    record.update(fields);
    log.write(record);
    if (result.interrupted) {
      std::printf("Interrupted at step %lld. Resume with: --resume %s\n",
                  static_cast<long long>(result.step), checkpoint_path.c_str());
    }
    return result.interrupted;
  }

  ReformerLM<S> model;
  Adam<S> opt;
  std::string out_dir;
  std::string checkpoint_path;
  MetricsLog log;

 private:
  /// With several ranks: the same settings, model and step on every rank (RankMismatch on all
  /// of them otherwise, after which they end normally), a batch they divide, and rank 0's
  /// parameters everywhere.
  void agree_across_ranks(const TrainSettings& o, const nlohmann::json& run) {
#if defined(REFORMER_WITH_MPI)
    if (ranks().size() == 1) return;
    try {
      const nlohmann::json agreed = {{"run", run},
                                     {"model", nlohmann::json(model.config())},
                                     {"step", opt.step_count()},
                                     {"steps", o.steps}};
      ranks().require_same("settings (run, model, step)", agreed.dump());
      if (o.batch % ranks().size() != 0) {
        raise<distributed::RankMismatch>("TrainingRun", "--batch ", o.batch,
                                         " cannot be split evenly over ", ranks().size(),
                                         " ranks (use a multiple of the rank count)");
      }
    } catch (const distributed::RankMismatch&) {
      ranks().end_run();  // raised on every rank alike: no rank is left waiting
      throw;
    }
    StepExchange<S>(ranks()).broadcast_parameters(model.parameters());
#else
    (void)o;
    (void)run;
#endif
  }

  bool resumed_ = false;
  Index batch_ = 0;
  double prior_elapsed_ = 0.0;
  std::optional<Progress> progress_;
};

}  // namespace reformer::examples
