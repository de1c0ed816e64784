#pragma once
// The training loop shared by the example programs:
//
//   for step s = opt.step_count() .. total-1:
//     batch_s = batch(s)                   a pure function of s: a resumed run sees the same data
//     shard   = this rank's B/N sequences of batch_s (common/ranks.hpp; all of them on one rank)
//     loss    = model.forward_loss(shard, tape, s)         LSH rotations / dropout keyed by s
//     model.backward(tape);  gradients summed over the ranks in rank order
//               (a non-finite loss stops the run here; one far above ln V is warned about)
//     norm = clip_grad_norm(clip);  opt.step(lr = schedule(s))
//     log {"event":"train", ...};  update the progress line
//     every eval_every steps and at the end: evaluate() -> log, message, maybe stop early
//     every checkpoint_every steps, at the end, and on Ctrl-C: save()
//
// Everything that decides the numbers is a function of the step, so an interrupted and resumed
// run is bit-identical to an uninterrupted one (with the same number of ranks; with another, it
// agrees to rounding). Every rank runs the loop and evaluates; rank 0 alone writes.
#include "common/batch.hpp"
#include "common/interrupt.hpp"
#include "common/loss_checks.hpp"
#include "common/metrics_log.hpp"
#include "common/progress.hpp"
#include "common/ranks.hpp"
#include "reformer/model/clip.hpp"
#include "reformer/model/optimizer.hpp"
#include "reformer/model/reformer_lm.hpp"
#include "reformer/model/schedule.hpp"
#include "reformer/model/tape.hpp"
#include "reformer/ops/tokens.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <string>

namespace reformer::examples {

struct LoopSettings {
  std::int64_t total_steps = 0;       ///< train until the optimizer has made this many updates
  double clip = 1.0;                  ///< global gradient-norm clipping (0: off)
  LrSchedule schedule;                ///< lr of update s
  std::int64_t eval_every = 0;        ///< evaluate every this many steps (0: only at the end)
  std::int64_t checkpoint_every = 0;  ///< save every this many steps (0: only at the end)
  double prior_elapsed = 0.0;         ///< wall time of the earlier runs of a resumed run
};

/// What an evaluation reports.
struct EvalOutcome {
  nlohmann::json record = nlohmann::json::object();  ///< fields of the "eval" log record
  std::string summary;                               ///< one line for the user
  std::string progress;  ///< short text for the progress line ("held-out acc 93.1%")
  bool stop = false;     ///< end training now (target reached)
};

/// How a training run ended.
struct LoopResult {
  std::int64_t step = 0;  ///< updates made in total
  bool stopped_early = false;
  bool interrupted = false;
  double elapsed = 0.0;  ///< wall time including earlier runs
  EvalOutcome last_eval;
};

/// Runs the loop (see the header comment). `batch(s)` returns a TokenBatch, `evaluate(s)` an
/// EvalOutcome, `save(s, elapsed)` writes a checkpoint and returns its path.
template <class S, class BatchFn, class EvalFn, class SaveFn>
LoopResult train_loop(ReformerLM<S>& model, Adam<S>& opt, const LoopSettings& settings,
                      Progress& progress, MetricsLog& log, BatchFn&& batch, EvalFn&& evaluate,
                      SaveFn&& save) {
  LoopResult result;
  Tape<S> tape;
  std::int64_t s = opt.step_count();
  const std::int64_t first = s;
  std::int64_t tokens = 0;
  double loss_sum = 0.0;  // train losses since the progress line was last drawn
  std::int64_t loss_count = 0;
  std::string eval_text;
  DivergenceWatch watch(model.config().vocab_size);
  auto elapsed = [&] { return settings.prior_elapsed + progress.elapsed(); };
  auto checkpoint = [&](const char* why) {
    const std::string path = save(s, elapsed());
    log.write({{"event", "checkpoint"}, {"step", s}, {"elapsed_s", elapsed()}, {"path", path}});
    progress.message(format("step %lld: %s checkpoint saved to %s", static_cast<long long>(s), why,
                            path.c_str()));
  };

  StepExchange<S> exchange(ranks());
  while (s < settings.total_steps) {
    const TokenBatch b = batch(s);
    model.zero_grad();
    const double loss = exchange.forward_backward(model, tape, ranks().shard(b), s);
    require_finite_loss(loss, s);  // before the optimizer touches the parameters
    const std::string divergence = watch.check(loss, s + 1);
    if (!divergence.empty()) progress.message(divergence);
    const double norm = settings.clip > 0 ? clip_grad_norm(model.parameters(), settings.clip)
                                          : global_grad_norm(model.parameters());
    const double lr = settings.schedule.lr(s);
    opt.step(model.parameters(), lr);
    ++s;
    tokens += b.batch * b.length;
    loss_sum += loss;
    ++loss_count;
    log.write({{"event", "train"},
               {"step", s},
               {"elapsed_s", elapsed()},
               {"loss", loss},
               {"lr", lr},
               {"grad_norm", norm},
               {"tokens", s * b.batch * b.length}});

    const bool last = s == settings.total_steps;
    if (last || (settings.eval_every > 0 && s % settings.eval_every == 0)) {
      EvalOutcome e = evaluate(s);
      e.record["event"] = "eval";
      e.record["step"] = s;
      e.record["elapsed_s"] = elapsed();
      log.write(e.record);
      progress.message(e.summary);
      eval_text = e.progress;
      result.last_eval = e;
      if (e.stop) {
        result.stopped_early = !last;
        break;
      }
    }
    if (progress.due(s)) {  // the mean train loss since the last line
      progress.update(s, tokens,
                      format("loss %.4f", loss_sum / static_cast<double>(loss_count)) +
                          (eval_text.empty() ? "" : "  " + eval_text));
      loss_sum = 0.0;
      loss_count = 0;
    }
    if (ranks().any(interrupt_requested())) {  // Ctrl-C on any rank stops all after step s
      progress.end_line();
      result.interrupted = true;
      break;
    }
    if (!last && settings.checkpoint_every > 0 && s % settings.checkpoint_every == 0) {
      checkpoint("periodic");
    }
  }
  progress.end_line();
  if (s > first || result.interrupted) {
    checkpoint(result.interrupted ? "interrupted:" : "final");
  }
  result.step = s;
  result.elapsed = elapsed();
  return result;
}

}  // namespace reformer::examples
