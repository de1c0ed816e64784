#pragma once
// The ranks of a training run. Built with REFORMER_WITH_MPI (examples/CMakeLists.txt: when MPI
// is found), the programs are data-parallel under `mpirun -np N` (docs/DESIGN.md 6, "Data-parallel
// training") and one rank when started directly (an MPI singleton); built without it, always one
// rank.
//
//   - every rank trains on its B/N sequences of the step's global batch (a pure function of
//     the step, so any rank count sees the same data) and the gradients are summed in rank order
//     (reformer/distributed/mpi.hpp);
//   - rank 0 alone prints (the others' standard output goes to /dev/null), writes the metrics
//     log and the checkpoints; every rank reads the checkpoint it resumes from;
//   - the ranks agree on stopping: Ctrl-C on any rank stops all of them after the same step;
//   - an error on one rank during a run ends every rank (MPI_Abort), so none waits forever.
#include "common/batch.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/types.hpp"
#include "reformer/model/reformer_lm.hpp"
#include "reformer/model/tape.hpp"
#include "reformer/ops/tokens.hpp"

#include <cstdint>

#include <cstdio>
#include <string>

#if defined(REFORMER_WITH_MPI)
#include "reformer/distributed/mpi.hpp"

#include <memory>
#endif

namespace reformer::examples {

/// This process's place in the run; one per program (ranks()).
class Ranks {
 public:
  Ranks() {
#if defined(REFORMER_WITH_MPI)
    env_ = std::make_unique<distributed::Environment>(nullptr, nullptr);
    comm_ = std::make_unique<distributed::Communicator>();
    if (comm_->rank() != 0 && std::freopen("/dev/null", "w", stdout) == nullptr) {
      raise<IoError>("Ranks", "cannot silence the standard output of rank ", comm_->rank());
    }
#endif
  }
  Ranks(const Ranks&) = delete;
  Ranks& operator=(const Ranks&) = delete;
  ~Ranks() {
#if defined(REFORMER_WITH_MPI)
    // Left in the middle of a run (an error on this rank): the others may be waiting for it.
    if (in_run_ && size() > 1) {
      std::fflush(stdout);
      std::fflush(stderr);
      distributed::Environment::abort(1);
    }
    comm_.reset();
    env_.reset();
#endif
  }

  int rank() const {
#if defined(REFORMER_WITH_MPI)
    return comm_->rank();
#else
    return 0;
#endif
  }
  int size() const {
#if defined(REFORMER_WITH_MPI)
    return comm_->size();
#else
    return 1;
#endif
  }
  bool is_root() const { return rank() == 0; }

#if defined(REFORMER_WITH_MPI)
  const distributed::Communicator& comm() const { return *comm_; }
#endif

  /// Between begin_run and end_run the ranks exchange data every step; leaving that stretch
  /// through an error ends every rank (see the destructor).
  void begin_run() { in_run_ = true; }
  void end_run() { in_run_ = false; }

  /// True on every rank when `flag` is true on any (collective when there are several ranks).
  bool any(bool flag) const {
#if defined(REFORMER_WITH_MPI)
    if (size() > 1) return comm_->any(flag);
#endif
    return flag;
  }

  /// RankMismatch on every rank unless every rank passes the same `text` (collective).
  void require_same(const std::string& what, const std::string& text) const {
#if defined(REFORMER_WITH_MPI)
    if (size() > 1) distributed::require_same(*comm_, what, text);
#else
    (void)what;
    (void)text;
#endif
  }

  /// This rank's sequences of the global batch `b` (all of them with one rank). An error on
  /// every rank unless the rank count divides the batch.
  TokenBatch shard(const TokenBatch& b) const {
    if (size() == 1) return b;
    REFORMER_REQUIRE(b.batch % size() == 0, InvalidArgument, "Ranks::shard", "--batch ", b.batch,
                     " cannot be split evenly over ", size(),
                     " ranks (use a multiple of the rank count)");
    const Index per_rank = b.batch / size(), first = per_rank * rank(), T = b.length;
    TokenBatch out;
    out.batch = per_rank;
    out.length = T;
    out.tokens.assign(b.tokens.begin() + first * T, b.tokens.begin() + (first + per_rank) * T);
    out.targets.assign(b.targets.begin() + first * T, b.targets.begin() + (first + per_rank) * T);
    return out;
  }

 private:
#if defined(REFORMER_WITH_MPI)
  std::unique_ptr<distributed::Environment> env_;
  std::unique_ptr<distributed::Communicator> comm_;
#endif
  bool in_run_ = false;
};

/// One training step's forward and backward pass on this rank's shard, the gradients summed over
/// the ranks (distributed::DataParallel); with one rank, the model's own passes.
template <class S>
class StepExchange {
 public:
  explicit StepExchange(const Ranks& r)
#if defined(REFORMER_WITH_MPI)
      : dp_(r.comm())
#endif
  {
    (void)r;
  }

  /// Rank 0's parameter values on every rank.
  void broadcast_parameters(Parameters<S>& params) {
#if defined(REFORMER_WITH_MPI)
    if (dp_.size() > 1) dp_.broadcast_parameters(params);
#else
    (void)params;
#endif
  }

  /// Fills the gradients (zero on entry) of the mean loss over every rank's counted targets;
  /// returns that mean loss.
  double forward_backward(ReformerLM<S>& model, Tape<S>& tape, const TokenBatch& shard,
                          std::int64_t step) {
    const TokenSpan tokens(shard.tokens), targets(shard.targets);
#if defined(REFORMER_WITH_MPI)
    if (dp_.size() > 1) {
      return dp_
          .forward_backward(model, tape, tokens, shard.batch, static_cast<std::uint64_t>(step),
                            targets)
          .mean_loss();
    }
#endif
    const double loss =
        model.forward_loss(tokens, shard.batch, tape, static_cast<std::uint64_t>(step), targets);
    model.backward(tape);
    return loss;
  }

 private:
#if defined(REFORMER_WITH_MPI)
  distributed::DataParallel<S> dp_;
#endif
};

/// The program's Ranks, made (and MPI started) on first use; MPI ends at exit.
inline Ranks& ranks() {
  static Ranks instance;
  return instance;
}

}  // namespace reformer::examples
