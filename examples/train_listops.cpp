// train_listops: long-sequence classification on ListOps, the Long Range Arena task (Tay et al.
// 2021; Nangia and Bowman 2018), trained from scratch on the CPU.
//
// Expressions such as [MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ] are generated in the program
// (examples/common/listops.hpp: LRA's definition, seeded); the label is the value, 0-9. A
// bidirectional Reformer reads [CLS] expression and classifies from the first position
// (Hugging Face's ReformerClassificationHead). Batches mix lengths: each is padded to its
// longest sequence (rounded up to the chunk length) and an AttentionMask marks the padding.
// Training batches come from pools of length-sorted examples, so a batch holds similar lengths.
// A fixed validation split measures accuracy; the majority-class baseline is measured on it.
//
//   train_listops                      the default run (README): lengths 500-2000 as LRA
//   train_listops --max-length 512 --min-length 64 --steps 200    a quick look
//
// The metrics log (JSON lines) is plotted with scripts/plot_metrics.py. Ctrl-C ends the run
// after the current step with a final evaluation.
#include "common/cli.hpp"
#include "common/interrupt.hpp"
#include "common/listops.hpp"
#include "common/metrics_log.hpp"
#include "common/option_table.hpp"
#include "common/progress.hpp"
#include "common/run_setup.hpp"
#include "common/training_run.hpp"
#include "reformer/core/attention_mask.hpp"
#include "reformer/core/gemm_backend.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/io/config_json.hpp"
#include "reformer/model/clip.hpp"
#include "reformer/model/config.hpp"
#include "reformer/model/encoder_models.hpp"
#include "reformer/model/optimizer.hpp"
#include "reformer/model/schedule.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

namespace {

using reformer::Index;
using reformer::Token;
using Scalar = float;
namespace ex = reformer::examples;
namespace lo = reformer::examples::listops;

constexpr const char* kDescription =
    "Train a bidirectional Reformer classifier on ListOps (the Long Range Arena task), generated "
    "in the program, and report validation accuracy and the majority-class baseline.";

// ---- the model ----------------------------------------------------------------------------------

/// Hugging Face's ReformerForSequenceClassification: embeddings -> bidirectional reversible stack
/// (padding masked) -> ClassificationHead on the first position.
using Model = reformer::ReformerForSequenceClassification<Scalar>;

// ---- settings -----------------------------------------------------------------------------------

struct Settings : ex::TrainSettings {
  Index min_length = 500;
  Index max_depth = 10;
  Index max_args = 10;
  Index eval_size = 1000;
  Index pool = 16;  ///< batches per length-sorted pool

  Settings() {
    length = 2000;  // --max-length
    attention = "local,lsh";
    layers = 2;
    d_model = 64;
    d_ff = 128;
    heads = 2;
    hashes = 2;
    chunk = 64;
    dropout = 0.1;
    steps = 2400;
    batch = 16;
    lr = 1e-3;
    warmup = 100;
    schedule = "cosine";
    eval_every = 400;
  }

  std::string title() const {
    return ex::format(
        "ListOps, lengths %lld-%lld, depth %lld, %lld args: %lld layers (%s), "
        "d_model %lld",
        static_cast<long long>(min_length), static_cast<long long>(length),
        static_cast<long long>(max_depth), static_cast<long long>(max_args),
        static_cast<long long>(layers), attention.c_str(), static_cast<long long>(d_model));
  }
};

void declare_options(ex::OptionTable<Settings>& t) {
  using S = Settings;
  const auto run = ex::OptionScope::kRun;
  const auto invocation = ex::OptionScope::kInvocation;
  t.group("Task")
      .option("--max-length,-T", &S::length, "Longest sequence ([CLS] included); LRA: 2000", run,
              CLI::Range(Index{8}, Index{1} << 16))
      .option("--min-length", &S::min_length, "Shortest sequence; LRA: 500", run,
              CLI::Range(Index{4}, Index{1} << 16))
      .option("--max-depth", &S::max_depth, "Nesting depth limit; LRA: 10", run,
              CLI::Range(Index{2}, Index{64}))
      .option("--max-args", &S::max_args, "Arguments per operator, at most; LRA: 10", run,
              CLI::Range(Index{2}, Index{64}))
      .group("Model")
      .option("--attention", &S::attention,
              "Layer kinds, repeated over --layers: local, lsh, or local,lsh (alternating)", run,
              CLI::IsMember({"local", "lsh", "local,lsh"}));
  ex::add_model_options(t);
  ex::add_training_options(t, "Training steps", "Sequences per step");
  t.group("Run")
      .option("--threads", &S::threads, "Threads (0 = all cores)", invocation, CLI::Range(0, 1024))
      .option("--eval-every", &S::eval_every, "Evaluate on the validation split every N steps",
              invocation, CLI::Range(std::int64_t{1}, std::int64_t{1} << 40))
      .option("--eval-size", &S::eval_size, "Validation examples (a fixed split)", invocation,
              CLI::Range(Index{1}, Index{1} << 20))
      .option("--pool", &S::pool, "Batches per length-sorted pool of training examples", run,
              CLI::Range(Index{1}, Index{1} << 10))
      .option("--out-dir", &S::out_dir,
              "Directory for metrics.jsonl (default runs/listops-<date>-<time>)", invocation)
      .option("--progress", &S::progress,
              "Progress display: auto (live line on a terminal), live or plain", invocation,
              CLI::IsMember({"auto", "live", "plain"}));
}

const ex::OptionTable<Settings>& option_table() { return ex::declared_once(declare_options); }

/// The bidirectional model of a run: HF's look-ahead of one chunk in both attention kinds, and
/// learned positions up to the longest padded batch.
reformer::ReformerConfig model_config(const Settings& o, Index padded_max) {
  reformer::ReformerConfig c = ex::base_config(o, lo::kVocabSize);
  c.is_decoder = false;
  c.attn_layers.clear();
  for (Index l = 0; l < o.layers; ++l) {
    const bool local = o.attention == "local" || (o.attention == "local,lsh" && l % 2 == 0);
    c.attn_layers.push_back(local ? "local" : "lsh");
  }
  c.local_num_chunks_after = 1;
  c.lsh_num_chunks_after = 1;
  c.lsh_attention_probs_dropout_prob = o.dropout;
  c.num_labels = lo::kNumClasses;
  c.pad_token_id = lo::kPad;
  ex::set_positions(c, o.positions, padded_max);
  return c;
}

// ---- data ---------------------------------------------------------------------------------------

/// A padded batch: B sequences of length T (a multiple of the chunk length), the mask of the
/// real positions and the labels.
struct Batch {
  Index batch = 0, length = 0;
  std::vector<Token> tokens;
  reformer::AttentionMask mask;
  std::vector<Token> labels;
  Index real_tokens = 0;
};

Index round_up(Index n, Index multiple) { return (n + multiple - 1) / multiple * multiple; }

Batch make_batch(const std::vector<const ex::ListOpsExample*>& examples, Index multiple) {
  Batch b;
  b.batch = static_cast<Index>(examples.size());
  Index longest = 0;
  for (const auto* e : examples) longest = std::max(longest, static_cast<Index>(e->tokens.size()));
  b.length = round_up(longest, multiple);
  b.tokens.assign(static_cast<std::size_t>(b.batch * b.length), lo::kPad);
  std::vector<Index> lengths;
  for (Index i = 0; i < b.batch; ++i) {
    const auto& e = *examples[static_cast<std::size_t>(i)];
    std::copy(e.tokens.begin(), e.tokens.end(), b.tokens.begin() + i * b.length);
    lengths.push_back(static_cast<Index>(e.tokens.size()));
    b.labels.push_back(static_cast<Token>(e.label));
    b.real_tokens += static_cast<Index>(e.tokens.size());
  }
  b.mask = reformer::AttentionMask::from_lengths(lengths, b.length);
  return b;
}

/// Training batches: pool p holds training examples [p*P*B, (p+1)*P*B), sorted by length and
/// cut into P batches taken in a seeded order, so step s's batch is a function of s alone.
class TrainBatches {
 public:
  TrainBatches(const ex::ListOpsGenerator& gen, Index batch, Index pool, Index multiple,
               std::uint64_t seed)
      : gen_(gen), batch_(batch), pool_(pool), multiple_(multiple), seed_(seed) {}

  Batch at(std::int64_t step) {
    const std::int64_t p = step / pool_;
    if (p != loaded_) load(p);
    const Index k = order_[static_cast<std::size_t>(step % pool_)];
    std::vector<const ex::ListOpsExample*> part;
    for (Index i = 0; i < batch_; ++i)
      part.push_back(&examples_[static_cast<std::size_t>(k * batch_ + i)]);
    return make_batch(part, multiple_);
  }

 private:
  void load(std::int64_t p) {
    examples_ = gen_.examples(ex::ListOpsGenerator::kTrain, p * pool_ * batch_, pool_ * batch_);
    std::stable_sort(examples_.begin(), examples_.end(), [](const auto& a, const auto& b) {
      return a.tokens.size() < b.tokens.size();
    });
    order_.resize(static_cast<std::size_t>(pool_));
    std::iota(order_.begin(), order_.end(), Index{0});
    const reformer::Rng rng =
        reformer::Rng(seed_).derive(reformer::stream::kData).derive(static_cast<std::uint64_t>(p));
    for (Index i = pool_ - 1; i > 0; --i) {  // Fisher-Yates
      const auto j = static_cast<Index>(
          rng.below(static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(i + 1)));
      std::swap(order_[static_cast<std::size_t>(i)], order_[static_cast<std::size_t>(j)]);
    }
    loaded_ = p;
  }

  const ex::ListOpsGenerator& gen_;
  Index batch_, pool_, multiple_;
  std::uint64_t seed_;
  std::int64_t loaded_ = -1;
  std::vector<ex::ListOpsExample> examples_;
  std::vector<Index> order_;
};

/// The validation split in length-sorted batches.
std::vector<Batch> validation_batches(const std::vector<ex::ListOpsExample>& split, Index batch,
                                      Index multiple) {
  std::vector<const ex::ListOpsExample*> sorted;
  for (const auto& e : split) sorted.push_back(&e);
  std::stable_sort(sorted.begin(), sorted.end(), [](const auto* a, const auto* b) {
    return a->tokens.size() < b->tokens.size();
  });
  std::vector<Batch> out;
  for (std::size_t i = 0; i < sorted.size(); i += static_cast<std::size_t>(batch)) {
    const std::size_t end = std::min(sorted.size(), i + static_cast<std::size_t>(batch));
    out.push_back(make_batch({sorted.begin() + static_cast<std::ptrdiff_t>(i),
                              sorted.begin() + static_cast<std::ptrdiff_t>(end)},
                             multiple));
  }
  return out;
}

/// The most frequent label of `examples` and its share.
std::pair<int, double> majority_class(const std::vector<ex::ListOpsExample>& examples) {
  std::vector<Index> counts(lo::kNumClasses, 0);
  for (const auto& e : examples) ++counts[static_cast<std::size_t>(e.label)];
  const auto best = std::max_element(counts.begin(), counts.end());
  return {static_cast<int>(best - counts.begin()),
          static_cast<double>(*best) / static_cast<double>(examples.size())};
}

struct Evaluation {
  double accuracy = 0.0;
  double loss = 0.0;
};

Evaluation evaluate(const Model& model, const std::vector<Batch>& batches) {
  Index correct = 0, total = 0;
  double loss = 0.0;
  for (const Batch& b : batches) {
    const reformer::Matrix<Scalar> logits = model.logits(b.tokens, b.batch, b.mask);  // 10 x B
    for (Index i = 0; i < b.batch; ++i) {
      const auto col = logits.col(i).cast<double>();
      Index best = 0;
      col.maxCoeff(&best);
      const Token label = b.labels[static_cast<std::size_t>(i)];
      correct += best == label ? 1 : 0;
      const double m = col.maxCoeff();
      loss += m + std::log((col.array() - m).exp().sum()) - col(label);
      ++total;
    }
  }
  return {static_cast<double>(correct) / static_cast<double>(total),
          loss / static_cast<double>(total)};
}

// ---- the run ------------------------------------------------------------------------------------

int run(const CLI::App&, Settings o) {
  ex::require_heads_divide(o);
  ex::require_option(
      o.min_length <= o.length, "--min-length",
      ex::format("%lld exceeds --max-length %lld", static_cast<long long>(o.min_length),
                 static_cast<long long>(o.length)));
  const int threads = ex::apply_threads(o.threads);
  const Index multiple = o.chunk;  // local and LSH chunks have the same length
  const reformer::ReformerConfig config = model_config(o, round_up(o.length, multiple));
  Model model(config);
  reformer::Adam<Scalar> opt(model.parameters(), reformer::AdamOptions::adam(o.lr));
  const reformer::LrSchedule schedule = ex::make_schedule(o.schedule, o.lr, o.warmup, o.steps);

  ex::ListOpsConfig task;
  task.min_length = o.min_length;
  task.max_length = o.length;
  task.max_depth = o.max_depth;
  task.max_args = o.max_args;
  // The validation split does not depend on --seed: runs are compared on the same examples.
  const ex::ListOpsGenerator validation_gen(task, 0);
  const ex::ListOpsGenerator train_gen(task, o.seed);
  const auto validation =
      validation_gen.examples(ex::ListOpsGenerator::kValidation, 0, o.eval_size);
  const std::vector<Batch> eval_batches = validation_batches(validation, o.batch, multiple);
  const auto [majority_label, majority_share] = majority_class(validation);
  const auto train_sample = train_gen.examples(ex::ListOpsGenerator::kTrain, 0, o.eval_size);
  const auto [train_majority_label, train_majority_share] = majority_class(train_sample);
  double mean_length = 0;
  for (const auto& e : validation) mean_length += static_cast<double>(e.tokens.size());
  mean_length /= static_cast<double>(validation.size());

  const std::string out_dir = ex::prepare_out_dir(o.out_dir, std::string(), "runs/listops");
  ex::MetricsLog log(out_dir + "/metrics.jsonl");
  std::printf("train_listops: %s\n", o.title().c_str());
  std::printf(
      "  %lld parameters, chunk %lld, %lld hash round(s), batch %lld, lr %g (%s, warmup %lld), "
      "%lld steps, %d thread(s), GEMM %s, march %s\n",
      static_cast<long long>(model.parameters().size()), static_cast<long long>(o.chunk),
      static_cast<long long>(o.hashes), static_cast<long long>(o.batch), o.lr, o.schedule.c_str(),
      static_cast<long long>(o.warmup), static_cast<long long>(o.steps), threads,
      reformer::gemm_backend_name(), reformer::examples::build_march());
  std::printf("  validation: %lld examples, mean length %.0f tokens\n",
              static_cast<long long>(validation.size()), mean_length);
  std::printf(
      "  majority-class baseline: %.2f%% (class %d) on the validation split, %.2f%% (class %d) on "
      "the first %lld training examples\n",
      100.0 * majority_share, majority_label, 100.0 * train_majority_share, train_majority_label,
      static_cast<long long>(train_sample.size()));
  std::printf("  output: %s/metrics.jsonl\n", out_dir.c_str());
  std::fflush(stdout);
  log.write({{"event", "config"},
             {"title", o.title()},
             {"run", ex::run_settings_json(option_table(), o, "train_listops")},
             {"model", nlohmann::json(config)},
             {"threads", threads},
             {"majority_class", majority_label},
             {"majority_baseline", majority_share},
             {"validation_mean_length", mean_length}});

  ex::install_interrupt_handler();
  ex::Progress progress(0, o.steps, ex::progress_mode(o.progress));
  TrainBatches batches(train_gen, o.batch, o.pool, multiple, o.seed);
  std::int64_t step = 0, tokens = 0;
  double loss_sum = 0.0, best_accuracy = 0.0;
  std::int64_t loss_count = 0;
  std::string eval_text;
  Evaluation last;
  bool interrupted = false;
  while (step < o.steps) {
    const Batch b = batches.at(step);
    model.zero_grad();
    const double loss =
        model.train_step(b.tokens, b.batch, b.mask, b.labels, static_cast<std::uint64_t>(step));
    REFORMER_REQUIRE(std::isfinite(loss), reformer::Error, "train_listops", "the loss at step ",
                     step, " is ", loss, " (lower --lr)");
    const double norm = o.clip > 0 ? reformer::clip_grad_norm(model.parameters(), o.clip)
                                   : reformer::global_grad_norm(model.parameters());
    const double lr = schedule.lr(step);
    opt.step(model.parameters(), lr);
    ++step;
    tokens += b.real_tokens;
    loss_sum += loss;
    ++loss_count;
    log.write({{"event", "train"},
               {"step", step},
               {"elapsed_s", progress.elapsed()},
               {"loss", loss},
               {"lr", lr},
               {"grad_norm", norm},
               {"length", b.length},
               {"tokens", tokens}});
    interrupted = ex::interrupt_requested();
    if (step == o.steps || step % o.eval_every == 0 || interrupted) {
      last = evaluate(model, eval_batches);
      best_accuracy = std::max(best_accuracy, last.accuracy);
      log.write({{"event", "eval"},
                 {"step", step},
                 {"elapsed_s", progress.elapsed()},
                 {"eval_acc", last.accuracy},
                 {"eval_loss", last.loss}});
      progress.message(ex::format("step %lld: validation accuracy %.2f%%, loss %.4f, elapsed %s",
                                  static_cast<long long>(step), 100.0 * last.accuracy, last.loss,
                                  ex::format_duration(progress.elapsed()).c_str()));
      eval_text = ex::format("val acc %.1f%%", 100.0 * last.accuracy);
    }
    if (progress.due(step) || step == o.steps) {
      progress.update(step, tokens,
                      ex::format("loss %.4f", loss_sum / static_cast<double>(loss_count)) +
                          (eval_text.empty() ? "" : "  " + eval_text));
      loss_sum = 0.0;
      loss_count = 0;
    }
    if (interrupted) break;
  }
  progress.end_line();
  log.write({{"event", "done"},
             {"step", step},
             {"elapsed_s", progress.elapsed()},
             {"interrupted", interrupted},
             {"eval_acc", last.accuracy},
             {"best_eval_acc", best_accuracy},
             {"majority_baseline", majority_share}});
  std::printf(
      "Validation accuracy %.2f%% after %lld steps (best %.2f%%; majority class %.2f%%), %s.\n",
      100.0 * last.accuracy, static_cast<long long>(step), 100.0 * best_accuracy,
      100.0 * majority_share, ex::format_duration(progress.elapsed()).c_str());
  std::printf(
      "Metrics: %s/metrics.jsonl (plot: /usr/bin/python3 scripts/plot_metrics.py "
      "%s/metrics.jsonl)\n",
      out_dir.c_str(), out_dir.c_str());
  return interrupted ? ex::kExitInterrupted : ex::kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  return ex::run_with_options("train_listops", kDescription, option_table(), argc, argv, run);
}
