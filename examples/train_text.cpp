// train_text: a byte-level Reformer language model (vocabulary 256) trained on any text file.
//
//   train_text book.txt                                  train; validation bits/byte at intervals
//   train_text book.txt --resume runs/text-.../checkpoint.safetensors      continue a run
//   train_text --checkpoint runs/text-.../checkpoint.safetensors --generate 400 --prompt "The "
//
// The last --valid-fraction of the file is held out; training draws random windows of --length
// bytes from the rest. Checkpoints (safetensors: parameters, Adam state, config, run settings)
// are written every --checkpoint-every steps, at the end and on Ctrl-C; --resume continues a run
// bit-identically. Generation samples with --temperature, --top-k and --top-p.
#include "common/allocator.hpp"
#include "common/batch.hpp"
#include "common/checkpointing.hpp"
#include "common/cli.hpp"
#include "common/interrupt.hpp"
#include "common/metrics_log.hpp"
#include "common/progress.hpp"
#include "common/run_setup.hpp"
#include "common/sampling.hpp"
#include "common/text_data.hpp"
#include "common/training_loop.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/io/config_json.hpp"
#include "reformer/model/config.hpp"
#include "reformer/model/optimizer.hpp"
#include "reformer/model/reformer_lm.hpp"
#include "reformer/model/schedule.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

using reformer::Index;
using Scalar = float;
using Model = reformer::ReformerLM<Scalar>;
namespace ex = reformer::examples;

constexpr Index kVocab = 256;
constexpr double kLn2 = 0.69314718055994530942;

/// Everything that defines a training run (saved in checkpoints).
struct Options {
  std::string file;
  double valid_fraction = 0.1;
  // model
  std::string attention = "local,lsh";
  Index layers = 2;
  Index d_model = 128;
  Index d_ff = 256;
  Index heads = 4;
  Index hashes = 2;
  Index chunk = 64;
  Index buckets = 0;
  std::string positions = "learned";
  double dropout = 0.05;
  // optimisation
  Index length = 256;
  Index batch = 8;
  std::int64_t steps = 2000;
  double lr = 1e-3;
  std::int64_t warmup = 100;
  std::string schedule = "cosine";
  double clip = 1.0;
  std::uint64_t seed = 1;

  nlohmann::json to_json() const {
    return {{"program", "train_text"},
            {"file", file},
            {"valid_fraction", valid_fraction},
            {"attention", attention},
            {"layers", layers},
            {"d_model", d_model},
            {"d_ff", d_ff},
            {"heads", heads},
            {"hashes", hashes},
            {"chunk", chunk},
            {"buckets", buckets},
            {"positions", positions},
            {"dropout", dropout},
            {"length", length},
            {"batch", batch},
            {"steps", steps},
            {"lr", lr},
            {"warmup", warmup},
            {"schedule", schedule},
            {"clip", clip},
            {"seed", seed}};
  }

  static Options from_checkpoint(const ex::RunCheckpoint& c) {
    if (c.run.value("program", std::string()) != "train_text") {
      reformer::raise<reformer::IoError>("train_text", "'", c.file.source(),
                                         "' was not written by train_text");
    }
    Options o;
    o.file = c.setting<std::string>("file");
    o.valid_fraction = c.setting<double>("valid_fraction");
    o.attention = c.setting<std::string>("attention");
    o.layers = c.setting<Index>("layers");
    o.d_model = c.setting<Index>("d_model");
    o.d_ff = c.setting<Index>("d_ff");
    o.heads = c.setting<Index>("heads");
    o.hashes = c.setting<Index>("hashes");
    o.chunk = c.setting<Index>("chunk");
    o.buckets = c.setting<Index>("buckets");
    o.positions = c.setting<std::string>("positions");
    o.dropout = c.setting<double>("dropout");
    o.length = c.setting<Index>("length");
    o.batch = c.setting<Index>("batch");
    o.steps = c.setting<std::int64_t>("steps");
    o.lr = c.setting<double>("lr");
    o.warmup = c.setting<std::int64_t>("warmup");
    o.schedule = c.setting<std::string>("schedule");
    o.clip = c.setting<double>("clip");
    o.seed = c.setting<std::uint64_t>("seed");
    return o;
  }
};

/// Session settings: evaluation, output, generation.
struct Session {
  int threads = 0;
  std::int64_t eval_every = 200;
  Index eval_windows = 32;
  std::int64_t checkpoint_every = 500;
  std::string out_dir;
  std::string resume;
  std::string progress = "auto";
  // generation
  std::string checkpoint;
  Index generate = 0;
  std::string prompt;
  std::string output;
  ex::SamplingOptions sampling{0.8, 0, 0.95};
  std::uint64_t sample_seed = 1;
};

/// "local,lsh" -> {"local", "lsh"} (InvalidArgument naming a bad entry).
std::vector<std::string> split_kinds(const std::string& list) {
  std::vector<std::string> out;
  std::stringstream in(list);
  std::string kind;
  while (std::getline(in, kind, ',')) {
    if (kind != "lsh" && kind != "local" && kind != "full") {
      throw CLI::ValidationError("--attention",
                                 "'" + kind +
                                     "' is not one of lsh, local, full (a "
                                     "comma-separated list, repeated over the layers)");
    }
    out.push_back(kind);
  }
  if (out.empty()) throw CLI::ValidationError("--attention", "the list is empty");
  return out;
}

reformer::ReformerConfig model_config(const Options& o) {
  reformer::ReformerConfig c;
  c.vocab_size = kVocab;
  c.hidden_size = o.d_model;
  c.num_attention_heads = o.heads;
  c.attention_head_size = 0;
  c.feed_forward_size = o.d_ff;
  c.hidden_act = "relu";
  const auto kinds = split_kinds(o.attention);
  c.attn_layers.clear();
  for (Index l = 0; l < o.layers; ++l) {
    c.attn_layers.push_back(kinds[static_cast<std::size_t>(l) % kinds.size()]);
  }
  c.num_hashes = o.hashes;
  c.lsh_attn_chunk_length = o.chunk;
  c.local_attn_chunk_length = o.chunk;
  if (o.buckets > 0) c.num_buckets = {o.buckets};
  c.hidden_dropout_prob = o.dropout;
  c.local_attention_probs_dropout_prob = o.dropout;
  c.lsh_attention_probs_dropout_prob = 0.0;
  ex::set_positions(c, o.positions, o.length);
  c.chunk_size_feed_forward = 128;
  c.chunk_size_lm_head = 128;
  c.seed = o.seed;
  return c;
}

/// Validation bits per byte over (at most `max_windows`) windows of the validation split.
double validation_bpb(const Model& model, const std::vector<ex::TokenBatch>& windows) {
  double sum = 0.0;
  std::int64_t count = 0;
  // Windows of equal length go through the model together, a few at a time.
  const std::size_t group = 8;
  for (std::size_t i = 0; i < windows.size();) {
    std::size_t j = i;
    ex::TokenBatch b;
    b.batch = 0;
    b.length = windows[i].length;
    while (j < windows.size() && j - i < group && windows[j].length == b.length) {
      b.tokens.insert(b.tokens.end(), windows[j].tokens.begin(), windows[j].tokens.end());
      b.targets.insert(b.targets.end(), windows[j].targets.begin(), windows[j].targets.end());
      ++b.batch;
      ++j;
    }
    const auto logits = model.logits(reformer::TokenSpan(b.tokens), b.batch);
    const auto ce = ex::cross_entropy_of_logits(logits, b.targets);
    sum += ce.first;
    count += ce.second;
    i = j;
  }
  return count > 0 ? sum / static_cast<double>(count) / kLn2 : 0.0;
}

/// Samples `n` bytes after `prompt` with a context of at most `context` bytes, writing the
/// prompt and each new byte to `out` as it is produced. Returns the generated bytes.
std::string generate(const Model& model, const std::string& prompt, Index n, Index context,
                     const ex::SamplingOptions& sampling, std::uint64_t seed, std::FILE* out) {
  std::vector<ex::Tok> tokens = ex::to_tokens(prompt.empty() ? std::string("\n") : prompt);
  if (!prompt.empty()) std::fwrite(prompt.data(), 1, prompt.size(), out);
  const reformer::Rng rng = reformer::Rng(seed).derive(reformer::stream::kData).derive(0x6E4E7A7Eu);
  std::string generated;
  for (Index i = 0; i < n; ++i) {
    const auto len = std::min<Index>(static_cast<Index>(tokens.size()), context);
    const reformer::TokenSpan window(tokens.data() + tokens.size() - len, len);
    const auto logits = model.logits(window, 1);
    const Index next =
        ex::sample_token(logits.col(len - 1), sampling, rng.uniform(static_cast<std::uint64_t>(i)));
    tokens.push_back(static_cast<ex::Tok>(next));
    const char byte = static_cast<char>(static_cast<unsigned char>(next));
    generated.push_back(byte);
    std::fputc(static_cast<unsigned char>(byte), out);
    std::fflush(out);
    if (ex::interrupt_requested()) break;
  }
  return generated;
}

/// Generation into --output (or stdout), from a trained model.
void run_generation(const Model& model, const Session& s, Index context) {
  std::FILE* out = stdout;
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(nullptr, &std::fclose);
  if (!s.output.empty()) {
    file.reset(std::fopen(s.output.c_str(), "wb"));
    REFORMER_REQUIRE(file != nullptr, reformer::IoError, "train_text", "cannot open --output '",
                     s.output, "' for writing");
    out = file.get();
  }
  generate(model, s.prompt, s.generate, context, s.sampling, s.sample_seed, out);
  if (out == stdout) std::fputc('\n', stdout);
  std::fflush(out);
  if (file) {
    REFORMER_REQUIRE(std::ferror(out) == 0, reformer::IoError, "train_text", "writing --output '",
                     s.output, "' failed");
  }
}

void add_options(CLI::App& app, Options& o, Session& s) {
  ex::show_defaults(app);
  app.add_option("file", o.file, "Text file to train on (any bytes; not needed with --checkpoint)")
      ->check(CLI::ExistingFile);
  auto* data = "Data";
  app.add_option("--valid-fraction", o.valid_fraction,
                 "Fraction of the file (its end) held out for validation")
      ->check(CLI::Range(0.001, 0.5))
      ->group(data);
  app.add_option("--length,-T", o.length, "Training window (context) length in bytes")
      ->check(CLI::Range(Index{2}, Index{1} << 20))
      ->group(data);

  auto* model = "Model";
  app.add_option("--attention", o.attention,
                 "Layer kinds, comma-separated and repeated over the layers (lsh, local, full)")
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
  app.add_option("--hashes,-R", o.hashes, "LSH hash rounds")
      ->check(CLI::Range(Index{1}, reformer::kLshMaxHashes))
      ->group(model);
  app.add_option("--chunk", o.chunk, "LSH and local attention chunk length")
      ->check(CLI::Range(Index{1}, Index{1} << 20))
      ->group(model);
  app.add_option("--buckets", o.buckets, "LSH buckets per round (even; 0 = auto)")
      ->check(CLI::Validator(
          [](std::string& v) {
            return v == "0" ? std::string() : ex::even_in_range(2, 1 << 30)(v);
          },
          "0|EVEN"))
      ->group(model);
  app.add_option("--positions", o.positions, "Position embeddings: learned or axial")
      ->check(CLI::IsMember({"learned", "axial"}))
      ->group(model);
  app.add_option("--dropout", o.dropout, "Dropout probability")
      ->check(CLI::Range(0.0, 0.9))
      ->group(model);

  auto* train = "Training";
  app.add_option("--steps", o.steps, "Training steps")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 40))
      ->group(train);
  app.add_option("--batch,-B", o.batch, "Windows per step")
      ->check(CLI::Range(Index{1}, Index{1} << 16))
      ->group(train);
  app.add_option("--lr", o.lr, "Peak learning rate (Adam)")
      ->check(CLI::Range(1e-8, 10.0))
      ->group(train);
  app.add_option("--warmup", o.warmup, "Linear learning-rate warmup steps")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{1} << 40))
      ->group(train);
  app.add_option("--schedule", o.schedule,
                 "After warmup: cosine (to lr/10 at --steps), constant or rsqrt")
      ->check(CLI::IsMember({"constant", "cosine", "rsqrt"}))
      ->group(train);
  app.add_option("--clip", o.clip, "Gradient-norm clipping (0 = off)")
      ->check(CLI::Range(0.0, 1e6))
      ->group(train);
  app.add_option("--seed", o.seed, "Seed of the initialisation, LSH rotations, dropout and data")
      ->group(train);

  auto* run = "Run";
  app.add_option("--threads", s.threads, "Threads (0 = all cores)")
      ->check(CLI::Range(0, 1024))
      ->group(run);
  app.add_option("--eval-every", s.eval_every, "Validation bits/byte every N steps")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 40))
      ->group(run);
  app.add_option("--eval-windows", s.eval_windows, "Validation windows per evaluation")
      ->check(CLI::Range(Index{1}, Index{1} << 30))
      ->group(run);
  app.add_option("--checkpoint-every", s.checkpoint_every,
                 "Save a checkpoint every N steps (0 = only at the end and on Ctrl-C)")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{1} << 40))
      ->group(run);
  app.add_option("--out-dir", s.out_dir,
                 "Directory for metrics.jsonl and checkpoint.safetensors (default "
                 "runs/text-<date>-<time>; a resumed run keeps its directory)")
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

  auto* gen = "Generation";
  app.add_option("--checkpoint", s.checkpoint,
                 "Generate from this checkpoint instead of training (with --generate)")
      ->check(CLI::ExistingFile)
      ->group(gen);
  app.add_option("--generate", s.generate,
                 "Generate N bytes (after training, or from --checkpoint)")
      ->check(CLI::Range(Index{0}, Index{1} << 30))
      ->group(gen);
  app.add_option("--prompt", s.prompt, "Text the generation continues")->group(gen);
  app.add_option("--temperature", s.sampling.temperature,
                 "Sampling temperature (0 = always the most likely byte)")
      ->check(CLI::Range(0.0, 100.0))
      ->group(gen);
  app.add_option("--top-k", s.sampling.top_k, "Sample among the k most likely bytes (0 = all)")
      ->check(CLI::Range(Index{0}, kVocab))
      ->group(gen);
  app.add_option("--top-p", s.sampling.top_p,
                 "Sample among the most likely bytes holding this probability mass")
      ->check(CLI::Range(1e-6, 1.0))
      ->group(gen);
  app.add_option("--sample-seed", s.sample_seed, "Seed of the sampling")->group(gen);
  app.add_option("--output,-o", s.output, "Write the generated text to this file (default stdout)")
      ->group(gen);
}

const std::vector<std::string> kRunFlags = {
    "file",      "--valid-fraction", "--length",  "--attention", "--layers",
    "--d-model", "--d-ff",           "--heads",   "--hashes",    "--chunk",
    "--buckets", "--positions",      "--dropout", "--batch",     "--lr",
    "--warmup",  "--schedule",       "--clip",    "--seed"};

/// Generation only: rebuild the model from a checkpoint and sample.
int generate_from_checkpoint(CLI::App& app, const Session& s) {
  for (const auto& flag : kRunFlags) {
    ex::require_option(app.count(flag) == 0, flag,
                       "does not apply with --checkpoint (the checkpoint defines the model)");
  }
  ex::require_option(s.generate > 0, "--checkpoint", "needs --generate N (N > 0)");
  ex::require_option(s.resume.empty(), "--checkpoint", "cannot be combined with --resume");
  const auto ckpt = ex::RunCheckpoint::open(s.checkpoint);
  REFORMER_REQUIRE(ckpt.config.vocab_size == kVocab, reformer::IoError, "train_text", "'",
                   s.checkpoint, "' holds a model with vocab_size ", ckpt.config.vocab_size,
                   ", not a byte-level model (256)");
  ex::apply_threads(s.threads);
  Model model(ckpt.config);
  ckpt.restore_parameters(model);
  const Index context = ckpt.run.value("length", ckpt.config.max_length());
  ex::install_interrupt_handler();
  run_generation(model, s, std::min(context, ckpt.config.max_length()));
  return ex::kExitOk;
}

int run(CLI::App& app, Options o, Session s) {
  if (!s.checkpoint.empty()) return generate_from_checkpoint(app, s);

  // ---- settings ---------------------------------------------------------------------------
  std::unique_ptr<ex::RunCheckpoint> resume;
  if (!s.resume.empty()) {
    for (const auto& flag : kRunFlags) {
      if (flag == "file") continue;  // the file may have moved: an explicit one wins
      ex::require_option(app.count(flag) == 0, flag,
                         "cannot be changed when resuming (the checkpoint's value applies)");
    }
    resume = std::make_unique<ex::RunCheckpoint>(ex::RunCheckpoint::open(s.resume));
    const Options given = o;
    o = Options::from_checkpoint(*resume);
    if (app.count("--steps") > 0) o.steps = given.steps;
    if (app.count("file") > 0) o.file = given.file;
  }
  ex::require_option(!o.file.empty(), "file",
                     "a text file to train on is required (or --checkpoint to generate)");
  ex::require_option(
      o.d_model % o.heads == 0, "--heads",
      ex::format("%lld does not divide --d-model %lld", static_cast<long long>(o.heads),
                 static_cast<long long>(o.d_model)));
  const reformer::ReformerConfig config = resume ? resume->config : model_config(o);
  config.validate();
  const int threads = ex::apply_threads(s.threads);

  const ex::TextCorpus corpus(ex::read_bytes(o.file), o.valid_fraction, o.length, o.file);
  const auto windows = corpus.valid_windows(o.length, s.eval_windows);

  Model model(config);
  reformer::Adam<Scalar> opt(model.parameters(), reformer::AdamOptions::adam(o.lr));
  double prior_elapsed = 0.0;
  if (resume) {
    resume->restore(model, opt);
    prior_elapsed = resume->run.value("elapsed_s", 0.0);
  }
  const reformer::LrSchedule schedule = ex::make_schedule(o.schedule, o.lr, o.warmup, o.steps);
  const reformer::Rng train_rng = reformer::Rng(o.seed).derive(reformer::stream::kData).derive(0);

  const std::string out_dir = ex::prepare_out_dir(
      s.out_dir, resume ? ex::parent_dir(s.resume) : std::string(), "runs/text");
  ex::MetricsLog log(out_dir + "/metrics.jsonl", static_cast<bool>(resume));
  const std::string checkpoint_path = out_dir + "/checkpoint.safetensors";
  const std::string title =
      ex::format("byte-level LM on %s: %lld layers (%s), d_model %lld, T = %lld", o.file.c_str(),
                 static_cast<long long>(o.layers), o.attention.c_str(),
                 static_cast<long long>(o.d_model), static_cast<long long>(o.length));

  std::printf("train_text: %s\n", title.c_str());
  std::printf("  %zu training bytes, %zu validation bytes (%zu windows per evaluation)\n",
              corpus.train().size(), corpus.valid().size(), windows.size());
  std::printf("  %lld parameters, batch %lld, lr %g (%s, warmup %lld), %d thread(s)\n",
              static_cast<long long>(model.parameters().size()), static_cast<long long>(o.batch),
              o.lr, o.schedule.c_str(), static_cast<long long>(o.warmup), threads);
  std::printf(
      "  output: %s/ (metrics.jsonl, checkpoint.safetensors)%s\n", out_dir.c_str(),
      resume
          ? ex::format(", resuming at step %lld", static_cast<long long>(opt.step_count())).c_str()
          : "");
  std::fflush(stdout);
  log.write({{"event", "config"},
             {"title", title},
             {"run", o.to_json()},
             {"model", nlohmann::json(config)},
             {"threads", threads},
             {"step", opt.step_count()},
             {"resumed", static_cast<bool>(resume)}});

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

  const auto result = ex::train_loop<Scalar>(
      model, opt, loop, progress, log,
      [&](std::int64_t step) {
        return corpus.sample_train(train_rng.derive(static_cast<std::uint64_t>(step)), o.batch,
                                   o.length);
      },
      [&](std::int64_t step) {
        const double bpb = validation_bpb(model, windows);
        ex::EvalOutcome e;
        e.record = {{"eval_bpb", bpb}, {"eval_loss", bpb * kLn2}};
        e.summary =
            ex::format("step %lld: validation %.4f bits/byte", static_cast<long long>(step), bpb);
        e.progress = ex::format("valid %.3f bpb", bpb);
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
             {"eval_bpb", result.last_eval.record.value("eval_bpb", 0.0)}});
  if (result.interrupted) {
    std::printf("Interrupted at step %lld. Resume with: --resume %s\n",
                static_cast<long long>(result.step), checkpoint_path.c_str());
    return ex::kExitInterrupted;
  }
  std::printf(
      "Done: %lld steps in %s. Metrics: %s/metrics.jsonl (plot: /usr/bin/python3 "
      "scripts/plot_metrics.py %s/metrics.jsonl)\n",
      static_cast<long long>(result.step), ex::format_duration(result.elapsed).c_str(),
      out_dir.c_str(), out_dir.c_str());
  if (s.generate > 0) {
    std::printf("\nSample (%lld bytes, temperature %g, top-k %lld, top-p %g):\n",
                static_cast<long long>(s.generate), s.sampling.temperature,
                static_cast<long long>(s.sampling.top_k), s.sampling.top_p);
    std::fflush(stdout);
    run_generation(model, s, o.length);
  }
  return ex::kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  ex::keep_freed_memory();
  CLI::App app(
      "Train a byte-level Reformer language model on a text file (bits per byte on a held-out "
      "split, checkpoints, resume), or generate text from a checkpoint.",
      "train_text");
  Options options;
  Session session;
  add_options(app, options, session);
  return ex::run_program(app, argc, argv, [&] { return run(app, options, session); });
}
