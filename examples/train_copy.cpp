// train_copy: the duplication task of the Reformer paper (Kitaev et al. 2020, section 5 and
// Table 2), trained from scratch on the CPU.
//
// Sequences are `0 w 0 w` with w drawn from symbols 1..N-1, |w| = T/2 - 1; the model must copy
// w, and loss and accuracy count only the second copy (the predictable positions). Every step
// draws fresh sequences; a fixed held-out set measures accuracy. Training stops early once the
// held-out accuracy reaches --target. Afterwards the same weights are evaluated with 1, 2, 4 and
// 8 hash rounds and with full attention, as in the paper's Table 2.
//
//   train_copy                      the default run (README): T = 1024 (the paper's length), LSH
//                                   attention with 4 hash rounds; about 300 steps, 4 minutes
//   train_copy --paper              the paper's setting: T = 1024, 1 layer, d_model = d_ff = 256
//   train_copy --resume runs/copy-.../checkpoint.safetensors     continue an interrupted run
//
// Ctrl-C saves a checkpoint and exits; the metrics log (JSON lines) is plotted with
// scripts/plot_metrics.py.
#include "common/allocator.hpp"
#include "common/checkpointing.hpp"
#include "common/cli.hpp"
#include "common/copy_task.hpp"
#include "common/interrupt.hpp"
#include "common/metrics_log.hpp"
#include "common/progress.hpp"
#include "common/run_setup.hpp"
#include "common/training_loop.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/io/config_json.hpp"
#include "reformer/model/config.hpp"
#include "reformer/model/optimizer.hpp"
#include "reformer/model/reformer_lm.hpp"
#include "reformer/model/schedule.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace {

using reformer::Index;
using Scalar = float;
using Model = reformer::ReformerLM<Scalar>;
namespace ex = reformer::examples;

/// Held-out sequences come from a fixed key, independent of --seed, so runs are comparable.
constexpr std::uint64_t kHeldOutSeed = 0x4E1D0u;

/// Everything that defines a run (saved in checkpoints as the run settings).
struct Options {
  // task
  Index length = 1024;
  Index symbols = 128;
  // model
  std::string attention = "lsh";
  Index hashes = 4;
  Index layers = 1;
  Index d_model = 256;
  Index d_ff = 256;
  Index heads = 4;
  Index chunk = 32;
  Index buckets = 0;
  std::string positions = "learned";
  double dropout = 0.0;
  // optimisation
  std::int64_t steps = 2000;
  Index batch = 16;
  double lr = 1e-3;
  std::int64_t warmup = 50;
  std::string schedule = "constant";
  double clip = 1.0;
  std::uint64_t seed = 1;

  nlohmann::json to_json() const {
    return {{"program", "train_copy"},
            {"length", length},
            {"symbols", symbols},
            {"attention", attention},
            {"hashes", hashes},
            {"layers", layers},
            {"d_model", d_model},
            {"d_ff", d_ff},
            {"heads", heads},
            {"chunk", chunk},
            {"buckets", buckets},
            {"positions", positions},
            {"dropout", dropout},
            {"steps", steps},
            {"batch", batch},
            {"lr", lr},
            {"warmup", warmup},
            {"schedule", schedule},
            {"clip", clip},
            {"seed", seed}};
  }

  /// The settings saved in a checkpoint (everything but --steps, which a resume may extend).
  static Options from_checkpoint(const ex::RunCheckpoint& c) {
    if (c.run.value("program", std::string()) != "train_copy") {
      reformer::raise<reformer::IoError>("train_copy", "'", c.file.source(),
                                         "' was not written by train_copy");
    }
    Options o;
    o.length = c.setting<Index>("length");
    o.symbols = c.setting<Index>("symbols");
    o.attention = c.setting<std::string>("attention");
    o.hashes = c.setting<Index>("hashes");
    o.layers = c.setting<Index>("layers");
    o.d_model = c.setting<Index>("d_model");
    o.d_ff = c.setting<Index>("d_ff");
    o.heads = c.setting<Index>("heads");
    o.chunk = c.setting<Index>("chunk");
    o.buckets = c.setting<Index>("buckets");
    o.positions = c.setting<std::string>("positions");
    o.dropout = c.setting<double>("dropout");
    o.steps = c.setting<std::int64_t>("steps");
    o.batch = c.setting<Index>("batch");
    o.lr = c.setting<double>("lr");
    o.warmup = c.setting<std::int64_t>("warmup");
    o.schedule = c.setting<std::string>("schedule");
    o.clip = c.setting<double>("clip");
    o.seed = c.setting<std::uint64_t>("seed");
    return o;
  }

  std::string title() const {
    std::string kind = attention == "lsh"     ? "LSH-" + std::to_string(hashes)
                       : attention == "local" ? std::string("local")
                                              : std::string("full");
    return ex::format("duplication task, T = %lld, %lld symbols: %s, %lld layer(s), d_model %lld",
                      static_cast<long long>(length), static_cast<long long>(symbols), kind.c_str(),
                      static_cast<long long>(layers), static_cast<long long>(d_model));
  }
};

/// Session settings (not part of the run's identity).
struct Session {
  int threads = 0;
  std::int64_t eval_every = 50;
  Index eval_size = 256;
  double target = 0.99;
  std::string out_dir;
  std::int64_t checkpoint_every = 0;
  std::string resume;
  std::string progress = "auto";
  bool table2 = true;
};

/// The model configuration of a run. "full" is dense shared-QK attention (an LSH layer whose
/// chunk covers the whole sequence, docs/DESIGN.md 1.2), so its weights also run with LSH.
reformer::ReformerConfig model_config(const Options& o) {
  reformer::ReformerConfig c;
  c.vocab_size = o.symbols;
  c.hidden_size = o.d_model;
  c.num_attention_heads = o.heads;
  c.attention_head_size = 0;  // d_model / heads
  c.feed_forward_size = o.d_ff;
  c.hidden_act = "relu";
  const bool local = o.attention == "local";
  c.attn_layers.assign(static_cast<std::size_t>(o.layers), local ? "local" : "lsh");
  c.num_hashes = o.attention == "lsh" ? o.hashes : 1;
  c.lsh_attn_chunk_length = o.attention == "full" ? o.length : o.chunk;
  c.local_attn_chunk_length = o.chunk;
  if (o.buckets > 0) c.num_buckets = {o.buckets};
  c.hidden_dropout_prob = o.dropout;
  c.local_attention_probs_dropout_prob = o.dropout;
  c.lsh_attention_probs_dropout_prob = o.dropout;
  ex::set_positions(c, o.positions, o.length);
  c.chunk_size_feed_forward = 128;
  c.chunk_size_lm_head = 128;
  c.seed = o.seed;
  return c;
}

/// One evaluation setting of the Table-2 row.
struct EvalSetting {
  std::string name;
  reformer::ReformerConfig config;
};

/// The Table-2 settings for the trained config: LSH-1/2/4/8 and full attention for LSH and
/// full training (shared QK), local and full (separate Q/K/V) for local training.
std::vector<EvalSetting> table2_settings(const Options& o,
                                         const reformer::ReformerConfig& trained) {
  std::vector<EvalSetting> out;
  if (o.attention == "local") {
    out.push_back({"local", trained});
    auto full = trained;
    full.attn_layers.assign(trained.attn_layers.size(), "full");
    out.push_back({"full", full});
    return out;
  }
  auto full = trained;
  full.num_hashes = 1;
  full.lsh_attn_chunk_length = std::max(o.length, trained.lsh_attn_chunk_length);
  out.push_back({"full", full});
  for (Index r : {1, 2, 4, 8}) {
    auto c = trained;
    c.num_hashes = r;
    c.lsh_attn_chunk_length = o.chunk;
    out.push_back({"LSH-" + std::to_string(r), c});
  }
  return out;
}

/// Held-out accuracy (and loss) of `model` on `held_out`, in batches.
struct HeldOutResult {
  ex::Accuracy acc;
  double loss = 0.0;
};

HeldOutResult evaluate(const Model& model, const ex::TokenBatch& held_out, Index eval_batch) {
  HeldOutResult r;
  double loss_sum = 0.0;
  std::int64_t count = 0;
  const Index T = held_out.length;
  for (Index b0 = 0; b0 < held_out.batch; b0 += eval_batch) {
    const Index nb = std::min(eval_batch, held_out.batch - b0);
    ex::TokenBatch part;
    part.batch = nb;
    part.length = T;
    part.tokens.assign(held_out.tokens.begin() + b0 * T, held_out.tokens.begin() + (b0 + nb) * T);
    part.targets.assign(held_out.targets.begin() + b0 * T,
                        held_out.targets.begin() + (b0 + nb) * T);
    const reformer::Matrix<Scalar> logits = model.logits(reformer::TokenSpan(part.tokens), nb);
    r.acc += ex::argmax_accuracy(logits, part);
    const auto ce = ex::cross_entropy_of_logits(logits, part.targets);
    loss_sum += ce.first;
    count += ce.second;
  }
  r.loss = count > 0 ? loss_sum / static_cast<double>(count) : 0.0;
  return r;
}

void add_options(CLI::App& app, Options& o, Session& s, bool& paper) {
  ex::show_defaults(app);
  app.add_flag("--paper", paper,
               "The paper's setting: --length 1024 --layers 1 --d-model 256 --d-ff 256 "
               "--heads 4 (explicit flags still win)");
  auto* task = "Task";
  app.add_option("--length,-T", o.length, "Sequence length T (even; |w| = T/2 - 1)")
      ->check(ex::even_in_range(4, 1 << 20))
      ->group(task);
  app.add_option("--symbols,-N", o.symbols, "Number of symbols N (0 separates the copies)")
      ->check(CLI::Range(Index{3}, Index{1} << 24))
      ->group(task);

  auto* model = "Model";
  app.add_option("--attention", o.attention,
                 "Attention: lsh, full (dense shared-QK) or local (chunked)")
      ->check(CLI::IsMember({"lsh", "full", "local"}))
      ->group(model);
  app.add_option("--hashes,-R", o.hashes, "LSH hash rounds (training)")
      ->check(CLI::Range(Index{1}, reformer::kLshMaxHashes))
      ->group(model);
  app.add_option("--layers", o.layers, "Reversible layers")
      ->check(CLI::Range(Index{1}, Index{64}))
      ->group(model);
  app.add_option("--d-model", o.d_model, "Model width d_model")
      ->check(CLI::Range(Index{2}, Index{8192}))
      ->group(model);
  app.add_option("--d-ff", o.d_ff, "Feed-forward width d_ff")
      ->check(CLI::Range(Index{1}, Index{65536}))
      ->group(model);
  app.add_option("--heads", o.heads, "Attention heads (must divide d_model)")
      ->check(CLI::Range(Index{1}, Index{256}))
      ->group(model);
  app.add_option("--chunk", o.chunk, "LSH / local chunk length (T / chunk chunks per round)")
      ->check(CLI::Range(Index{1}, Index{1} << 20))
      ->group(model);
  app.add_option("--buckets", o.buckets, "LSH buckets per round (even; 0 = auto, 2T/chunk)")
      ->check(CLI::Validator(
          [](std::string& v) {
            return v == "0" ? std::string() : ex::even_in_range(2, 1 << 30)(v);
          },
          "0|EVEN"))
      ->group(model);
  app.add_option("--positions", o.positions, "Position embeddings: learned (absolute) or axial")
      ->check(CLI::IsMember({"learned", "axial"}))
      ->group(model);
  app.add_option("--dropout", o.dropout, "Dropout probability (hidden and attention)")
      ->check(CLI::Range(0.0, 0.9))
      ->group(model);

  auto* train = "Training";
  app.add_option("--steps", o.steps, "Maximum training steps (stops earlier at --target)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 40))
      ->group(train);
  app.add_option("--batch,-B", o.batch, "Sequences per step")
      ->check(CLI::Range(Index{1}, Index{1} << 16))
      ->group(train);
  app.add_option("--lr", o.lr, "Peak learning rate (Adam)")
      ->check(CLI::Range(1e-8, 10.0))
      ->group(train);
  app.add_option("--warmup", o.warmup, "Linear learning-rate warmup steps")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{1} << 40))
      ->group(train);
  app.add_option("--schedule", o.schedule,
                 "After warmup: constant, cosine (to lr/10 at --steps) or rsqrt")
      ->check(CLI::IsMember({"constant", "cosine", "rsqrt"}))
      ->group(train);
  app.add_option("--clip", o.clip, "Gradient-norm clipping (0 = off)")
      ->check(CLI::Range(0.0, 1e6))
      ->group(train);
  app.add_option("--seed", o.seed, "Seed of the initialisation, LSH rotations and data")
      ->group(train);

  auto* run = "Run";
  app.add_option("--threads", s.threads, "Threads (0 = all cores)")
      ->check(CLI::Range(0, 1024))
      ->group(run);
  app.add_option("--eval-every", s.eval_every, "Evaluate on the held-out set every N steps")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 40))
      ->group(run);
  app.add_option("--eval-size", s.eval_size, "Held-out sequences")
      ->check(CLI::Range(Index{1}, Index{1} << 20))
      ->group(run);
  app.add_option("--target", s.target,
                 "Stop when the held-out accuracy reaches this (0 = never stop early)")
      ->check(CLI::Range(0.0, 1.0))
      ->group(run);
  app.add_option("--out-dir", s.out_dir,
                 "Directory for metrics.jsonl and checkpoint.safetensors (default "
                 "runs/copy-<date>-<time>; a resumed run keeps its directory)")
      ->group(run);
  app.add_option("--checkpoint-every", s.checkpoint_every,
                 "Save a checkpoint every N steps (0 = only at the end and on Ctrl-C)")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{1} << 40))
      ->group(run);
  app.add_option("--resume", s.resume,
                 "Continue the run saved in this checkpoint (its settings apply; --steps may "
                 "extend it)")
      ->check(CLI::ExistingFile)
      ->group(run);
  app.add_option("--progress", s.progress,
                 "Progress display: auto (live line on a terminal), live or plain")
      ->check(CLI::IsMember({"auto", "live", "plain"}))
      ->group(run);
  app.add_flag("!--no-table2", s.table2,
               "Skip the evaluation with 1/2/4/8 hash rounds and full attention after training")
      ->group(run);
}

/// Options that define the run: with --resume they come from the checkpoint.
const std::vector<std::string> kRunFlags = {
    "--length", "--symbols",  "--attention", "--hashes",    "--layers",  "--d-model", "--d-ff",
    "--heads",  "--chunk",    "--buckets",   "--positions", "--dropout", "--batch",   "--lr",
    "--warmup", "--schedule", "--clip",      "--seed",      "--paper"};

int run(CLI::App& app, Options o, Session s, bool paper) {
  // ---- settings ---------------------------------------------------------------------------
  std::unique_ptr<ex::RunCheckpoint> resume;
  if (!s.resume.empty()) {
    for (const auto& flag : kRunFlags) {
      ex::require_option(app.count(flag) == 0, flag,
                         "cannot be changed when resuming (the checkpoint's value applies)");
    }
    resume = std::make_unique<ex::RunCheckpoint>(ex::RunCheckpoint::open(s.resume));
    const std::int64_t steps = o.steps;
    o = Options::from_checkpoint(*resume);
    if (app.count("--steps") > 0) o.steps = steps;
  } else if (paper) {
    if (app.count("--length") == 0) o.length = 1024;
    if (app.count("--layers") == 0) o.layers = 1;
    if (app.count("--d-model") == 0) o.d_model = 256;
    if (app.count("--d-ff") == 0) o.d_ff = 256;
    if (app.count("--heads") == 0) o.heads = 4;
  }
  ex::require_option(
      o.d_model % o.heads == 0, "--heads",
      ex::format("%lld does not divide --d-model %lld", static_cast<long long>(o.heads),
                 static_cast<long long>(o.d_model)));
  const reformer::ReformerConfig config = resume ? resume->config : model_config(o);
  config.validate();
  const int threads = ex::apply_threads(s.threads);

  // ---- model, optimizer, data ---------------------------------------------------------------
  Model model(config);
  reformer::Adam<Scalar> opt(model.parameters(), reformer::AdamOptions::adam(o.lr));
  double prior_elapsed = 0.0;
  if (resume) {
    resume->restore(model, opt);
    prior_elapsed = resume->run.value("elapsed_s", 0.0);
  }
  const reformer::LrSchedule schedule = ex::make_schedule(o.schedule, o.lr, o.warmup, o.steps);
  const ex::CopyTask task(o.length, o.symbols);
  const reformer::Rng train_rng = reformer::Rng(o.seed).derive(reformer::stream::kData).derive(0);
  const ex::TokenBatch held_out =
      task.sample(reformer::Rng(kHeldOutSeed).derive(reformer::stream::kData), s.eval_size);
  const Index eval_batch = std::max<Index>(1, std::min<Index>(s.eval_size, 16384 / o.length));

  const std::string out_dir = ex::prepare_out_dir(
      s.out_dir, resume ? ex::parent_dir(s.resume) : std::string(), "runs/copy");
  ex::MetricsLog log(out_dir + "/metrics.jsonl", static_cast<bool>(resume));
  const std::string checkpoint_path = out_dir + "/checkpoint.safetensors";

  std::printf("train_copy: %s\n", o.title().c_str());
  std::printf(
      "  %lld parameters, %s attention, chunk %lld, batch %lld, lr %g (%s, warmup %lld), "
      "%d thread(s)\n",
      static_cast<long long>(model.parameters().size()), o.attention.c_str(),
      static_cast<long long>(config.lsh_attn_chunk_length), static_cast<long long>(o.batch), o.lr,
      o.schedule.c_str(), static_cast<long long>(o.warmup), threads);
  if (o.attention == "lsh" && o.length / o.chunk < 4) {
    std::printf("  note: T / chunk = %lld LSH chunks per round; the paper's task has >= 4\n",
                static_cast<long long>(o.length / o.chunk));
  }
  std::printf(
      "  output: %s/ (metrics.jsonl, checkpoint.safetensors)%s\n", out_dir.c_str(),
      resume
          ? ex::format(", resuming at step %lld", static_cast<long long>(opt.step_count())).c_str()
          : "");
  std::fflush(stdout);
  nlohmann::json config_record = {{"event", "config"},
                                  {"title", o.title()},
                                  {"run", o.to_json()},
                                  {"model", nlohmann::json(config)},
                                  {"threads", threads},
                                  {"step", opt.step_count()},
                                  {"resumed", static_cast<bool>(resume)}};
  log.write(config_record);

  // ---- training -----------------------------------------------------------------------------
  ex::install_interrupt_handler();
  ex::Progress progress(opt.step_count(), o.steps, ex::progress_mode(s.progress));
  ex::LoopSettings loop;
  loop.total_steps = o.steps;
  loop.clip = o.clip;
  loop.schedule = schedule;
  loop.eval_every = s.eval_every;
  loop.checkpoint_every = s.checkpoint_every;
  loop.prior_elapsed = prior_elapsed;
  double reached_at = -1.0;
  std::int64_t reached_step = -1;

  const auto result = ex::train_loop<Scalar>(
      model, opt, loop, progress, log,
      [&](std::int64_t step) {
        return task.sample(train_rng.derive(static_cast<std::uint64_t>(step)), o.batch);
      },
      [&](std::int64_t step) {
        const HeldOutResult r = evaluate(model, held_out, eval_batch);
        ex::EvalOutcome e;
        e.record = {{"eval_loss", r.loss},
                    {"eval_acc", r.acc.token_accuracy()},
                    {"eval_seq_acc", r.acc.sequence_accuracy()}};
        const double elapsed = prior_elapsed + progress.elapsed();
        e.summary = ex::format(
            "step %lld: held-out accuracy %.2f%% (sequences fully right %.1f%%), loss %.4f, "
            "elapsed %s",
            static_cast<long long>(step), 100.0 * r.acc.token_accuracy(),
            100.0 * r.acc.sequence_accuracy(), r.loss, ex::format_duration(elapsed).c_str());
        e.progress = ex::format("held-out acc %.1f%%", 100.0 * r.acc.token_accuracy());
        if (s.target > 0 && r.acc.token_accuracy() >= s.target) {
          e.stop = true;
          reached_at = elapsed;
          reached_step = step;
        }
        return e;
      },
      [&](std::int64_t, double elapsed) {
        nlohmann::json run = o.to_json();
        run["elapsed_s"] = elapsed;
        ex::save_run_checkpoint(checkpoint_path, model, opt, run);
        return checkpoint_path;
      });

  log.write({{"event", "done"},
             {"step", result.step},
             {"elapsed_s", result.elapsed},
             {"interrupted", result.interrupted},
             {"target", s.target},
             {"target_reached", reached_step >= 0},
             {"eval_acc", result.last_eval.record.value("eval_acc", 0.0)}});
  if (result.interrupted) {
    std::printf("Interrupted at step %lld. Resume with: --resume %s\n",
                static_cast<long long>(result.step), checkpoint_path.c_str());
    return ex::kExitInterrupted;
  }
  if (reached_step >= 0) {
    std::printf(
        "Reached the target: %.2f%% held-out accuracy >= %.2f%% at step %lld after %s "
        "(stopped early).\n",
        100.0 * result.last_eval.record.value("eval_acc", 0.0), 100.0 * s.target,
        static_cast<long long>(reached_step), ex::format_duration(reached_at).c_str());
  } else if (s.target > 0) {
    std::printf(
        "Did not reach the target %.2f%% in %lld steps (final held-out accuracy "
        "%.2f%%, %s).\n",
        100.0 * s.target, static_cast<long long>(result.step),
        100.0 * result.last_eval.record.value("eval_acc", 0.0),
        ex::format_duration(result.elapsed).c_str());
  }

  // ---- Table 2: the same weights with other attention settings ------------------------------
  if (s.table2) {
    const auto settings = table2_settings(o, config);
    std::vector<std::string> names;
    std::vector<double> accs;
    nlohmann::json record = {{"event", "table2"}, {"step", result.step}};
    for (const auto& setting : settings) {
      Model eval_model(setting.config);
      // Every setting keeps the trained parameter names (an LSH layer's query_key serves the
      // dense shared-QK attention too; local and full layers share query/key/value names).
      ex::copy_parameters_by_name(model.parameters(), eval_model.parameters(),
                                  [](const std::string& name) { return name; });
      const HeldOutResult r = evaluate(eval_model, held_out, eval_batch);
      names.push_back(setting.name);
      accs.push_back(r.acc.token_accuracy());
      record[setting.name] = r.acc.token_accuracy();
      if (ex::interrupt_requested()) break;
    }
    log.write(record);
    const std::string train_name =
        o.attention == "lsh" ? "LSH-" + std::to_string(o.hashes) : o.attention;
    std::printf("\nHeld-out accuracy of the trained weights (as the paper's Table 2):\n");
    std::printf("  %-10s", "train\\eval");
    for (const auto& n : names) std::printf(" %8s", n.c_str());
    std::printf("\n  %-10s", train_name.c_str());
    for (double a : accs) std::printf(" %7.1f%%", 100.0 * a);
    std::printf("\n");
  }
  std::printf(
      "\nMetrics: %s/metrics.jsonl   plot: /usr/bin/python3 scripts/plot_metrics.py "
      "%s/metrics.jsonl\n",
      out_dir.c_str(), out_dir.c_str());
  return ex::kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  ex::keep_freed_memory();
  CLI::App app(
      "Train a Reformer on the duplication task of Kitaev et al. (2020): sequences 0 w 0 w, "
      "accuracy on the second copy, then evaluate the weights with 1/2/4/8 hash rounds and full "
      "attention (Table 2).",
      "train_copy");
  Options options;
  Session session;
  bool paper = false;
  add_options(app, options, session, paper);
  return ex::run_program(app, argc, argv, [&] { return run(app, options, session, paper); });
}
