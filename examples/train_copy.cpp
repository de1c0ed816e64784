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
#include "common/cli.hpp"
#include "common/copy_task.hpp"
#include "common/interrupt.hpp"
#include "common/option_table.hpp"
#include "common/run_setup.hpp"
#include "common/training_run.hpp"
#include "reformer/core/gemm_backend.hpp"
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
#include <string>
#include <vector>

namespace {

using reformer::Index;
using Scalar = float;
using Model = reformer::ReformerLM<Scalar>;
namespace ex = reformer::examples;

/// Held-out sequences come from a fixed key, independent of --seed, so runs are comparable.
constexpr std::uint64_t kHeldOutSeed = 0x4E1D0u;

/// What --help says the program does.
constexpr const char* kDescription =
    "Train a Reformer on the duplication task of Kitaev et al. (2020): sequences 0 w 0 w, "
    "accuracy on the second copy, then evaluate the weights with 1/2/4/8 hash rounds and full "
    "attention (Table 2).";

/// The settings of train_copy (TrainSettings plus the task's and the Table-2 evaluation's).
struct Settings : ex::TrainSettings {
  Index symbols = 128;
  bool paper = false;
  Index eval_size = 256;
  double target = 0.99;
  bool table2 = true;

  Settings() {
    length = 1024;
    attention = "lsh";
    hashes = 4;
    layers = 1;
    d_model = 256;
    d_ff = 256;
    heads = 4;
    chunk = 32;
    dropout = 0.0;
    steps = 2000;
    batch = 16;
    warmup = 50;
    schedule = "constant";
    eval_every = 50;
    checkpoint_every = 0;
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

/// Every option of train_copy, declared once.
void declare_options(ex::OptionTable<Settings>& t) {
  using S = Settings;
  const auto run = ex::OptionScope::kRun;
  const auto invocation = ex::OptionScope::kInvocation;
  t.flag("--paper", &S::paper,
         "The paper's setting: --length 1024 --layers 1 --d-model 256 --d-ff 256 "
         "--heads 4 (explicit flags still win)",
         run)
      .group("Task")
      .option("--length,-T", &S::length, "Sequence length T (even; |w| = T/2 - 1)", run,
              ex::even_in_range(4, 1 << 20))
      .option("--symbols,-N", &S::symbols, "Number of symbols N (0 separates the copies)", run,
              CLI::Range(Index{3}, Index{1} << 24))
      .group("Model")
      .option("--attention", &S::attention,
              "Attention: lsh, full (dense shared-QK) or local (chunked)", run,
              CLI::IsMember({"lsh", "full", "local"}));
  ex::add_model_options(t);
  ex::add_training_options(t, "Maximum training steps (stops earlier at --target)",
                           "Sequences per step");
  ex::add_run_options(t, "runs/copy");
  t.option("--eval-size", &S::eval_size, "Held-out sequences", invocation,
           CLI::Range(Index{1}, Index{1} << 20))
      .option("--target", &S::target,
              "Stop when the held-out accuracy reaches this (0 = never stop early)", invocation,
              CLI::Range(0.0, 1.0))
      .flag("!--no-table2", &S::table2,
            "Skip the evaluation with 1/2/4/8 hash rounds and full attention after training",
            invocation);
}

const ex::OptionTable<Settings>& option_table() { return ex::declared_once(declare_options); }

/// The run settings saved in checkpoints and logged.
nlohmann::json run_json(const Settings& o) {
  return ex::run_settings_json(option_table(), o, "train_copy");
}

/// The model configuration of a run. "full" is dense shared-QK attention (an LSH layer whose
/// chunk covers the whole sequence, docs/DESIGN.md 1.2), so its weights also run with LSH.
reformer::ReformerConfig model_config(const Settings& o) {
  reformer::ReformerConfig c = ex::base_config(o, o.symbols);
  const bool local = o.attention == "local";
  c.attn_layers.assign(static_cast<std::size_t>(o.layers), local ? "local" : "lsh");
  c.num_hashes = o.attention == "lsh" ? o.hashes : 1;
  c.lsh_attn_chunk_length = o.attention == "full" ? o.length : o.chunk;
  c.lsh_attention_probs_dropout_prob = o.dropout;
  return c;
}

/// One evaluation setting of the Table-2 row.
struct EvalSetting {
  std::string name;
  reformer::ReformerConfig config;
};

/// The Table-2 settings for the trained config: LSH-1/2/4/8 and full attention for LSH and
/// full training (shared QK), local and full (separate Q/K/V) for local training.
std::vector<EvalSetting> table2_settings(const Settings& o,
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

/// Every parameter of `dst` from the parameter of `src` with the same name and shape.
void copy_parameters(const reformer::Parameters<Scalar>& src, reformer::Parameters<Scalar>& dst) {
  for (reformer::SlotId id = 0; id < dst.num_slots(); ++id) {
    const reformer::ParamSlot& slot = dst.slot(id);
    const auto from = src.find(slot.name);
    REFORMER_REQUIRE(from.has_value() && src.slot(*from).shape == slot.shape,
                     reformer::InvalidArgument, "copy_parameters", "parameter '", slot.name,
                     "' has no source of its shape");
    dst.value_vector(id) = src.value_vector(*from);
  }
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

int run(const CLI::App& app, Settings o) {
  // ---- settings ---------------------------------------------------------------------------
  const auto resume = ex::resume_settings(app, option_table(), o, "train_copy");
  if (!resume && o.paper) {
    if (app.count("--length") == 0) o.length = 1024;
    if (app.count("--layers") == 0) o.layers = 1;
    if (app.count("--d-model") == 0) o.d_model = 256;
    if (app.count("--d-ff") == 0) o.d_ff = 256;
    if (app.count("--heads") == 0) o.heads = 4;
  }
  ex::require_heads_divide(o);
  const reformer::ReformerConfig config = resume ? resume->config() : model_config(o);
  config.validate();
  const int threads = ex::apply_threads(o.threads);

  // ---- model, optimizer, data ---------------------------------------------------------------
  ex::TrainingRun<Scalar> tr(o, config, resume, "runs/copy");
  const Model& model = tr.model;
  const ex::CopyTask task(o.length, o.symbols);
  const reformer::Rng train_rng = reformer::Rng(o.seed).derive(reformer::stream::kData).derive(0);
  const ex::TokenBatch held_out =
      task.sample(reformer::Rng(kHeldOutSeed).derive(reformer::stream::kData), o.eval_size);
  const Index eval_batch = std::max<Index>(1, std::min<Index>(o.eval_size, 16384 / o.length));

  std::printf("train_copy: %s\n", o.title().c_str());
  std::printf(
      "  %lld parameters, %s attention, chunk %lld, batch %lld, lr %g (%s, warmup %lld), "
      "%d thread(s), GEMM %s, march %s\n",
      static_cast<long long>(model.parameters().size()), o.attention.c_str(),
      static_cast<long long>(config.lsh_attn_chunk_length), static_cast<long long>(o.batch), o.lr,
      o.schedule.c_str(), static_cast<long long>(o.warmup), threads, reformer::gemm_backend_name(),
      reformer::examples::build_march());
  if (o.attention == "lsh" && o.length / o.chunk < 4) {
    std::printf("  note: T / chunk = %lld LSH chunks per round; the paper's task has >= 4\n",
                static_cast<long long>(o.length / o.chunk));
  }
  tr.print_output();
  tr.log_config(o.title(), run_json(o), threads);

  // ---- training -----------------------------------------------------------------------------
  o.may_stop_early = o.target > 0;  // the progress line's ETA is then an upper bound
  double reached_at = -1.0;
  std::int64_t reached_step = -1;
  const auto result = tr.train(
      o, run_json(o),
      [&](std::int64_t step) {
        return task.sample(train_rng.derive(static_cast<std::uint64_t>(step)), o.batch);
      },
      [&](std::int64_t step) {
        const HeldOutResult r = evaluate(model, held_out, eval_batch);
        ex::EvalOutcome e;
        e.record = {{"eval_loss", r.loss},
                    {"eval_acc", r.acc.token_accuracy()},
                    {"eval_seq_acc", r.acc.sequence_accuracy()}};
        const double elapsed = tr.elapsed();
        e.summary = ex::format(
            "step %lld: held-out accuracy %.2f%% (sequences fully right %.1f%%), loss %.4f, "
            "elapsed %s",
            static_cast<long long>(step), 100.0 * r.acc.token_accuracy(),
            100.0 * r.acc.sequence_accuracy(), r.loss, ex::format_duration(elapsed).c_str());
        e.progress = ex::format("held-out acc %.1f%%", 100.0 * r.acc.token_accuracy());
        if (o.target > 0 && r.acc.token_accuracy() >= o.target) {
          e.stop = true;
          reached_at = elapsed;
          reached_step = step;
        }
        return e;
      });

  const double final_acc = result.last_eval.record.value("eval_acc", 0.0);
  if (tr.finish(
          result,
          {{"target", o.target}, {"target_reached", reached_step >= 0}, {"eval_acc", final_acc}})) {
    return ex::kExitInterrupted;
  }
  if (reached_step >= 0) {
    std::printf(
        "Reached the target: %.2f%% held-out accuracy >= %.2f%% at step %lld after %s "
        "(stopped early).\n",
        100.0 * final_acc, 100.0 * o.target, static_cast<long long>(reached_step),
        ex::format_duration(reached_at).c_str());
  } else if (o.target > 0) {
    std::printf(
        "Did not reach the target %.2f%% in %lld steps (final held-out accuracy "
        "%.2f%%, %s).\n",
        100.0 * o.target, static_cast<long long>(result.step), 100.0 * final_acc,
        ex::format_duration(result.elapsed).c_str());
  }

  // ---- Table 2: the same weights with other attention settings ------------------------------
  if (o.table2) {
    const auto settings = table2_settings(o, config);
    std::vector<std::string> names;
    std::vector<double> accs;
    nlohmann::json record = {{"event", "table2"}, {"step", result.step}};
    for (const auto& setting : settings) {
      Model eval_model(setting.config);
      // Every setting keeps the trained parameter names (an LSH layer's query_key serves the
      // dense shared-QK attention too; local and full layers share query/key/value names).
      copy_parameters(model.parameters(), eval_model.parameters());
      const HeldOutResult r = evaluate(eval_model, held_out, eval_batch);
      names.push_back(setting.name);
      accs.push_back(r.acc.token_accuracy());
      record[setting.name] = r.acc.token_accuracy();
      if (ex::interrupt_requested()) break;
    }
    tr.log.write(record);
    const std::string train_name =
        o.attention == "lsh" ? "LSH-" + std::to_string(o.hashes) : o.attention;
    std::printf("\nHeld-out accuracy of the trained weights (as the paper's Table 2):\n");
    std::printf("  %-10s", "train\\eval");
    for (const auto& n : names) std::printf(" %8s", n.c_str());
    std::printf("\n  %-10s", train_name.c_str());
    for (double a : accs) std::printf(" %7.1f%%", 100.0 * a);
    std::printf("\n");
  }
  std::printf("\nMetrics: %s\n", tr.metrics_hint().c_str());
  return ex::kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  return ex::run_with_options("train_copy", kDescription, option_table(), argc, argv, run);
}
