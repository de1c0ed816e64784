// train_text: a byte-level Reformer language model (vocabulary 256) trained on any text file.
//
//   train_text book.txt                                  train; validation bits/byte at intervals
//   train_text book.txt --resume runs/text-.../checkpoint.safetensors      continue a run
//   train_text --checkpoint runs/text-.../checkpoint.safetensors --generate 400 --prompt "The "
//
// The last --valid-fraction of the file is held out; training draws random windows of --length
// bytes from the rest. Checkpoints (safetensors: parameters, Adam state, config, run settings)
// are written every --checkpoint-every steps, at the end and on Ctrl-C; --resume continues a run
// bit-identically. Generation samples with --temperature, --top-k and --top-p, decoding
// incrementally with per-layer caches (--no-cache recomputes the context for every byte).
#include "common/batch.hpp"
#include "common/cli.hpp"
#include "common/interrupt.hpp"
#include "common/option_table.hpp"
#include "common/run_setup.hpp"
#include "common/text_data.hpp"
#include "common/training_run.hpp"
#include "reformer/core/gemm_backend.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/io/checkpoint.hpp"
#include "reformer/io/config_json.hpp"
#include "reformer/model/config.hpp"
#include "reformer/model/generator.hpp"
#include "reformer/model/optimizer.hpp"
#include "reformer/model/reformer_lm.hpp"
#include "reformer/model/sampling.hpp"
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

/// What --help says the program does.
constexpr const char* kDescription =
    "Train a byte-level Reformer language model on a text file (bits per byte on a held-out "
    "split, checkpoints, resume), or generate text from a checkpoint.";

/// The settings of train_text (TrainSettings plus data, evaluation and generation).
struct Settings : ex::TrainSettings {
  std::string file;
  double valid_fraction = 0.1;
  Index eval_windows = 32;
  // generation
  std::string checkpoint;
  Index generate = 0;
  std::string prompt;
  std::string output;
  double temperature = 0.8;
  Index top_k = 0;
  double top_p = 0.95;
  std::uint64_t sample_seed = 1;
  bool no_cache = false;

  Settings() {
    attention = "local,lsh";
    layers = 2;
    d_model = 128;
    d_ff = 256;
    heads = 4;
    hashes = 2;
    chunk = 64;
    dropout = 0.05;
    length = 256;
    batch = 8;
    steps = 2000;
    warmup = 100;
    schedule = "cosine";
    eval_every = 200;
    checkpoint_every = 500;
  }

  reformer::SamplingOptions sampling() const {
    reformer::SamplingOptions o;
    o.temperature = temperature;
    o.top_k = top_k;
    o.top_p = top_p;
    return o;
  }
};

/// Every option of train_text, declared once.
void declare_options(ex::OptionTable<Settings>& t) {
  using S = Settings;
  const auto run = ex::OptionScope::kRun;
  const auto invocation = ex::OptionScope::kInvocation;
  // A resumed run takes an explicit file (it may have moved).
  t.option("file", &S::file, "Text file to train on (any bytes; not needed with --checkpoint)",
           ex::OptionScope::kExtend, CLI::ExistingFile)
      .group("Data")
      .option("--valid-fraction", &S::valid_fraction,
              "Fraction of the file (its end) held out for validation", run, CLI::Range(0.001, 0.5))
      .option("--length,-T", &S::length, "Training window (context) length in bytes", run,
              CLI::Range(Index{2}, Index{1} << 20))
      .group("Model")
      .option("--attention", &S::attention,
              "Layer kinds, comma-separated and repeated over the layers (lsh, local, full)", run);
  ex::add_model_options(t);
  ex::add_training_options(t, "Training steps", "Windows per step");
  ex::add_run_options(t, "runs/text");
  t.option("--eval-windows", &S::eval_windows, "Validation windows per evaluation",
           ex::OptionScope::kExtend, CLI::Range(Index{1}, Index{1} << 30))
      .group("Generation")
      .option("--checkpoint", &S::checkpoint,
              "Generate from this checkpoint instead of training (with --generate)", invocation,
              CLI::ExistingFile)
      .option("--generate", &S::generate, "Generate N bytes (after training, or from --checkpoint)",
              invocation, CLI::Range(Index{0}, Index{1} << 30))
      .option("--prompt", &S::prompt, "Text the generation continues", invocation)
      .option("--temperature", &S::temperature,
              "Sampling temperature (0 = always the most likely byte)", invocation,
              CLI::Range(0.0, 100.0))
      .option("--top-k", &S::top_k, "Sample among the k most likely bytes (0 = all)", invocation,
              CLI::Range(Index{0}, kVocab))
      .option("--top-p", &S::top_p,
              "Sample among the most likely bytes holding this probability mass", invocation,
              CLI::Range(1e-6, 1.0))
      .option("--sample-seed", &S::sample_seed, "Seed of the sampling", invocation)
      .flag("--no-cache", &S::no_cache,
            "Recompute the whole context for every byte instead of decoding incrementally with "
            "per-layer caches (the same bytes while the text fits the context)",
            invocation)
      .option("--output,-o", &S::output, "Write the generated text to this file (default stdout)",
              invocation);
}

const ex::OptionTable<Settings>& option_table() { return ex::declared_once(declare_options); }

/// The run settings saved in checkpoints and logged.
nlohmann::json run_json(const Settings& o) {
  return ex::run_settings_json(option_table(), o, "train_text");
}

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

reformer::ReformerConfig model_config(const Settings& o) {
  reformer::ReformerConfig c = ex::base_config(o, kVocab);
  const auto kinds = split_kinds(o.attention);
  c.attn_layers.clear();
  for (Index l = 0; l < o.layers; ++l) {
    c.attn_layers.push_back(kinds[static_cast<std::size_t>(l) % kinds.size()]);
  }
  c.lsh_attention_probs_dropout_prob = 0.0;
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
/// Cached (reformer::Generator): one forward pass over the prompt, then one column per byte; when
/// the context is full it restarts from the last half of it. --no-cache: a forward pass over the
/// last `context` bytes for every byte, with the generator's model (the LSH bucket layout fixed
/// from the context length), so both give the same bytes while the text fits the context.
std::string generate(const Model& model, const std::string& prompt, Index n, Index context,
                     const reformer::SamplingOptions& sampling, std::uint64_t seed, bool cached,
                     std::FILE* out) {
  std::vector<ex::Tok> tokens = ex::to_tokens(prompt.empty() ? std::string("\n") : prompt);
  if (!prompt.empty()) std::fwrite(prompt.data(), 1, prompt.size(), out);
  const reformer::Rng key = reformer::Rng(seed).derive(reformer::stream::kData).derive(0x6E4E7A7Eu);
  reformer::Sampler sampler(sampling, key);
  reformer::Generator<float> gen(model, context);
  auto window = [&](Index len) {
    len = std::min<Index>(len, static_cast<Index>(tokens.size()));
    return reformer::TokenSpan(tokens.data() + tokens.size() - len, len);
  };
  if (cached) gen.prefill(window(context));
  std::string generated;
  for (Index i = 0; i < n; ++i) {
    Index next = 0;
    if (cached) {
      next = sampler.next(gen.next_logits());
    } else {
      const reformer::TokenSpan w = window(context);
      const reformer::Matrix<float> logits = gen.reference_model().logits(w, 1);
      next = sampler.next(reformer::Vector<float>(logits.col(w.size() - 1)));
    }
    tokens.push_back(static_cast<ex::Tok>(next));
    const char byte = static_cast<char>(static_cast<unsigned char>(next));
    generated.push_back(byte);
    std::fputc(static_cast<unsigned char>(byte), out);
    std::fflush(out);
    if (ex::interrupt_requested()) break;
    if (cached && i + 1 < n) {
      if (gen.length() < gen.max_length()) {
        gen.append(static_cast<reformer::Token>(next));
      } else {
        gen.prefill(window(std::max<Index>(1, context / 2)));
      }
    }
  }
  return generated;
}

/// Generation into --output (or stdout), from a trained model.
void run_generation(const Model& model, const Settings& s, Index context) {
  std::FILE* out = stdout;
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(nullptr, &std::fclose);
  if (!s.output.empty()) {
    file.reset(std::fopen(s.output.c_str(), "wb"));
    REFORMER_REQUIRE(file != nullptr, reformer::IoError, "train_text", "cannot open --output '",
                     s.output, "' for writing");
    out = file.get();
  }
  generate(model, s.prompt, s.generate, context, s.sampling(), s.sample_seed, !s.no_cache, out);
  if (out == stdout) std::fputc('\n', stdout);
  std::fflush(out);
  if (file) {
    REFORMER_REQUIRE(std::ferror(out) == 0, reformer::IoError, "train_text", "writing --output '",
                     s.output, "' failed");
  }
}

/// Generation only: rebuild the model from a checkpoint and sample.
int generate_from_checkpoint(const CLI::App& app, const Settings& s) {
  option_table().refuse_given(app, {ex::OptionScope::kRun, ex::OptionScope::kExtend},
                              "does not apply with --checkpoint (the checkpoint defines the model)",
                              {"--steps", "--threads"});
  ex::require_option(s.generate > 0, "--checkpoint", "needs --generate N (N > 0)");
  ex::require_option(s.resume.empty(), "--checkpoint", "cannot be combined with --resume");
  const auto ckpt = reformer::io::Checkpoint::open(s.checkpoint);
  REFORMER_REQUIRE(ckpt.config().vocab_size == kVocab, reformer::IoError, "train_text", "'",
                   s.checkpoint, "' holds a model with vocab_size ", ckpt.config().vocab_size,
                   ", not a byte-level model (256)");
  ex::apply_threads(s.threads);
  Model model(ckpt.config());
  ckpt.restore(model);
  const Index context = ckpt.user().value("length", ckpt.config().max_length());
  ex::install_interrupt_handler();
  run_generation(model, s, std::min(context, ckpt.config().max_length()));
  return ex::kExitOk;
}

int run(const CLI::App& app, Settings o) {
  if (!o.checkpoint.empty()) return generate_from_checkpoint(app, o);

  // ---- settings ---------------------------------------------------------------------------
  const auto resume = ex::resume_settings(app, option_table(), o, "train_text");
  ex::require_option(!o.file.empty(), "file",
                     "a text file to train on is required (or --checkpoint to generate)");
  ex::require_heads_divide(o);
  const reformer::ReformerConfig config = resume ? resume->config() : model_config(o);
  config.validate();
  const int threads = ex::apply_threads(o.threads);

  const ex::TextCorpus corpus(ex::read_bytes(o.file), o.valid_fraction, o.length, o.file);
  const auto windows = corpus.valid_windows(o.length, o.eval_windows);

  ex::TrainingRun<Scalar> tr(o, config, resume, "runs/text");
  const Model& model = tr.model;
  const reformer::Rng train_rng = reformer::Rng(o.seed).derive(reformer::stream::kData).derive(0);
  const std::string title =
      ex::format("byte-level LM on %s: %lld layers (%s), d_model %lld, T = %lld", o.file.c_str(),
                 static_cast<long long>(o.layers), o.attention.c_str(),
                 static_cast<long long>(o.d_model), static_cast<long long>(o.length));

  std::printf("train_text: %s\n", title.c_str());
  std::printf("  %zu training bytes, %zu validation bytes (%zu windows per evaluation)\n",
              corpus.train().size(), corpus.valid().size(), windows.size());
  std::printf(
      "  %lld parameters, batch %lld, lr %g (%s, warmup %lld), %d thread(s), GEMM %s, "
      "march %s\n",
      static_cast<long long>(model.parameters().size()), static_cast<long long>(o.batch), o.lr,
      o.schedule.c_str(), static_cast<long long>(o.warmup), threads, reformer::gemm_backend_name(),
      reformer::examples::build_march());
  tr.print_output();
  tr.log_config(title, run_json(o), threads);

  // ---- training -----------------------------------------------------------------------------
  const auto result = tr.train(
      o, run_json(o),
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
      });
  if (tr.finish(result, {{"eval_bpb", result.last_eval.record.value("eval_bpb", 0.0)}})) {
    return ex::kExitInterrupted;
  }
  std::printf("Done: %lld steps in %s. Metrics: %s\n", static_cast<long long>(result.step),
              ex::format_duration(result.elapsed).c_str(), tr.metrics_hint().c_str());
  if (o.generate > 0) {
    std::printf("\nSample (%lld bytes, temperature %g, top-k %lld, top-p %g):\n",
                static_cast<long long>(o.generate), o.temperature, static_cast<long long>(o.top_k),
                o.top_p);
    std::fflush(stdout);
    run_generation(model, o, o.length);
  }
  return ex::kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  return ex::run_with_options("train_text", kDescription, option_table(), argc, argv, run);
}
