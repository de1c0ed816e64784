#pragma once
// Data-parallel training on MPI (docs/DESIGN.md 6, "Data-parallel training"). Optional: only code
// that includes this header needs MPI (CMake: link reformer::mpi).
//
//   Environment env(&argc, &argv);       MPI_Init / MPI_Finalize (RAII)
//   Communicator comm;                   a duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN
//   require_same(comm, "config", text);  every rank compares a hash of its configuration
//   DataParallel<float> dp(comm);
//   dp.broadcast_parameters(params);     rank 0's initial values everywhere
//   per step, on this rank's sequences batch_shard(B, rank, N) of the global batch:
//   dp.forward_backward(model, tape, tokens, B / N, step)
//       = forward_loss; backward with grad_scale = local count / global count of the counted
//         targets; allreduce_gradients: the sum over the ranks, in rank order, the same bits on
//         every rank and in every run. Returns the loss and token totals over the ranks.
//   dp.forward_backward_grouped(..., G): the same bits for ANY rank count (one included), at
//       the cost of one gradient copy per group of G sequences (docs/DESIGN.md)
//
// Determinism: MPI's own reductions may add in any order (and differently for different
// message sizes or process placements). Here MPI only moves data: the gradient is cut into
// buckets and each bucket into N fixed segments; rank i receives segment i of every rank
// (MPI_Alltoallv), adds the N copies in rank order 0, 1, ..., N-1, and all ranks then gather
// every summed segment (MPI_Allgatherv). Each rank sends and receives 2 (N-1)/N of the
// gradient's bytes per step, as in a ring all-reduce.
//
// The sum runs after the backward pass, not overlapped with it: overlap would need a hook in the
// reversible stack's backward and could save at most the sum's share of the step, measured small
// by benchmarks/data_parallel.cpp (docs/DESIGN.md). Against one process training the same
// global batch the result differs by rounding only (the weight gradients' block sums associate
// differently); with dropout the ranks draw masks keyed by their own columns.
//
// Errors: every MPI call's return code is checked (the communicator returns errors instead of
// aborting) and turned into a reformer::Error naming the call.
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/types.hpp"
#include "reformer/model/reformer_lm.hpp"
#include "reformer/model/tape.hpp"
#include "reformer/ops/tokens.hpp"

#include <mpi.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

namespace reformer::distributed {

/// Throws reformer::Error naming `call` and MPI's message unless `rc` is MPI_SUCCESS.
inline void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(rc, text, &length) != MPI_SUCCESS) length = 0;
  raise<Error>(call, "failed with error code ", rc,
               length > 0 ? ": " + std::string(text, static_cast<std::size_t>(length)) : "");
}

/// The ranks do not fit together: their configurations differ, or the rank count does not fit the
/// batch. Raised on every rank at the same point, so a program may end normally (MPI_Finalize)
/// after it; after any other error, end with Environment::abort so no rank waits forever.
class RankMismatch : public ConfigError {
 public:
  using ConfigError::ConfigError;
};

/// MPI_Init on construction (unless MPI is already initialised) and MPI_Finalize on
/// destruction (when this object initialised it). One per program, in main().
class Environment {
 public:
  Environment(int* argc, char*** argv) {
    int initialised = 0;
    check_mpi(MPI_Initialized(&initialised), "MPI_Initialized");
    if (!initialised) {
      check_mpi(MPI_Init(argc, argv), "MPI_Init");
      owner_ = true;
    }
  }
  Environment(const Environment&) = delete;
  Environment& operator=(const Environment&) = delete;
  ~Environment() {
    if (owner_) MPI_Finalize();
  }

  /// Ends every rank of the job at once with exit code `code` (MPI_Abort): the way out after an
  /// error that the other ranks may not have seen, so that none of them waits forever.
  [[noreturn]] static void abort(int code) {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::abort();  // MPI_Abort does not return; this only satisfies [[noreturn]]
  }

 private:
  bool owner_ = false;
};

/// MPI datatype of a scalar.
template <class T>
MPI_Datatype mpi_type() {
  if constexpr (std::is_same_v<T, float>) return MPI_FLOAT;
  if constexpr (std::is_same_v<T, double>) return MPI_DOUBLE;
  if constexpr (std::is_same_v<T, std::int64_t>) return MPI_INT64_T;
  if constexpr (std::is_same_v<T, std::uint64_t>) return MPI_UINT64_T;
  if constexpr (std::is_same_v<T, std::int32_t>) return MPI_INT32_T;
  static_assert(std::is_arithmetic_v<T>, "mpi_type: unsupported type");
  return MPI_BYTE;
}

/// A duplicate of MPI_COMM_WORLD (or of `base`) whose errors are returned, not fatal. Move-only;
/// frees its communicator.
class Communicator {
 public:
  explicit Communicator(MPI_Comm base = MPI_COMM_WORLD) {
    check_mpi(MPI_Comm_dup(base, &comm_), "MPI_Comm_dup");
    check_mpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  Communicator(Communicator&& o) noexcept : comm_(o.comm_), rank_(o.rank_), size_(o.size_) {
    o.comm_ = MPI_COMM_NULL;
  }
  Communicator& operator=(Communicator&&) = delete;
  ~Communicator() {
    int finalised = 0;
    MPI_Finalized(&finalised);
    if (comm_ != MPI_COMM_NULL && !finalised) MPI_Comm_free(&comm_);
  }

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm get() const { return comm_; }

  void barrier() const { check_mpi(MPI_Barrier(comm_), "MPI_Barrier"); }

  /// `n` values of `data` on `root` copied to every rank.
  template <class T>
  void broadcast(T* data, Index n, int root = 0) const {
    for (Index done = 0; done < n;) {  // MPI counts are int
      const int count = static_cast<int>(std::min<Index>(n - done, kMaxCount));
      check_mpi(MPI_Bcast(data + done, count, mpi_type<T>(), root, comm_), "MPI_Bcast");
      done += count;
    }
  }

  /// Every rank's `value`, in rank order.
  template <class T>
  std::vector<T> allgather(const T& value) const {
    static_assert(std::is_trivially_copyable_v<T>, "allgather: trivially copyable values only");
    std::vector<T> all(static_cast<std::size_t>(size_));
    check_mpi(MPI_Allgather(&value, sizeof(T), MPI_BYTE, all.data(), sizeof(T), MPI_BYTE, comm_),
              "MPI_Allgather");
    return all;
  }

  /// Every rank's `values` (the same length on every rank), rank 0's first.
  template <class T>
  std::vector<T> allgather(const std::vector<T>& values) const {
    static_assert(std::is_trivially_copyable_v<T>, "allgather: trivially copyable values only");
    const int bytes = static_cast<int>(values.size() * sizeof(T));
    std::vector<T> all(values.size() * static_cast<std::size_t>(size_));
    check_mpi(MPI_Allgather(values.data(), bytes, MPI_BYTE, all.data(), bytes, MPI_BYTE, comm_),
              "MPI_Allgather");
    return all;
  }

  /// The sum of every rank's `value`, added in rank order (the same bits on every rank).
  template <class T>
  T sum(const T& value) const {
    const std::vector<T> all = allgather(value);
    T total = all[0];
    for (std::size_t r = 1; r < all.size(); ++r) total += all[r];
    return total;
  }

  /// True on every rank when `flag` is true on any.
  bool any(bool flag) const {
    int local = flag ? 1 : 0, global = 0;
    check_mpi(MPI_Allreduce(&local, &global, 1, MPI_INT, MPI_MAX, comm_), "MPI_Allreduce");
    return global != 0;
  }

  static constexpr Index kMaxCount = Index{1} << 30;

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
};

/// 64-bit FNV-1a hash of `text` (a configuration's canonical text).
inline std::uint64_t fnv1a_hash(const std::string& text) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

/// Throws RankMismatch on every rank, naming the ranks whose `what` differs from rank 0's,
/// unless every rank passes the same `text` (compared by hash). Collective.
inline void require_same(const Communicator& comm, const std::string& what,
                         const std::string& text) {
  const std::vector<std::uint64_t> hashes = comm.allgather(fnv1a_hash(text));
  std::string differing;
  for (std::size_t r = 1; r < hashes.size(); ++r) {
    if (hashes[r] != hashes[0]) differing += (differing.empty() ? "" : ", ") + std::to_string(r);
  }
  REFORMER_REQUIRE(differing.empty(), RankMismatch, "distributed::require_same", "the ", what,
                   " of rank(s) ", differing, " differs from rank 0's (", comm.size(),
                   " ranks; every rank must be started with the same settings)");
}

/// The sequences [begin, end) of a global batch of `global_batch` that rank `rank` of `ranks`
/// trains on. RankMismatch (on every rank alike) unless the ranks divide the batch evenly.
struct Shard {
  Index begin = 0, end = 0;
  Index size() const { return end - begin; }
};
inline Shard batch_shard(Index global_batch, int rank, int ranks) {
  REFORMER_REQUIRE(ranks >= 1 && rank >= 0 && rank < ranks, InvalidArgument,
                   "distributed::batch_shard", "rank ", rank, " of ", ranks, " ranks");
  REFORMER_REQUIRE(global_batch % ranks == 0, RankMismatch, "distributed::batch_shard",
                   "the global batch of ", global_batch, " sequences cannot be split evenly over ",
                   ranks, " ranks (use a batch that is a multiple of the rank count)");
  const Index per_rank = global_batch / ranks;
  return {per_rank * rank, per_rank * (rank + 1)};
}

/// Deterministic in-place sum over the ranks of `n` values at `data` (see the header comment),
/// `bucket` values at a time. `buffer` is scratch space reused between calls.
template <class S>
void allreduce_sum_ordered(const Communicator& comm, S* data, Index n, Index bucket,
                           std::vector<S>& buffer) {
  REFORMER_REQUIRE(n >= 0 && bucket >= 1, InvalidArgument, "distributed::allreduce_sum_ordered",
                   "n = ", n, ", bucket = ", bucket, " (need n >= 0, bucket >= 1)");
  const int ranks = comm.size();
  if (ranks == 1 || n == 0) return;
  const Index step = std::min<Index>(bucket, Communicator::kMaxCount);
  std::vector<int> send_counts(ranks), send_offsets(ranks), recv_counts(ranks), recv_offsets(ranks);
  buffer.resize(static_cast<std::size_t>(std::min(step, n)));
  for (Index first = 0; first < n; first += step) {
    const Index len = std::min(step, n - first);
    S* chunk = data + first;
    // Segment i of this bucket: [len*i/N, len*(i+1)/N), summed by rank i.
    auto seg_begin = [&](int i) { return static_cast<int>(len * i / ranks); };
    const int mine = comm.rank();
    const int my_len = seg_begin(mine + 1) - seg_begin(mine);
    for (int i = 0; i < ranks; ++i) {
      send_counts[i] = seg_begin(i + 1) - seg_begin(i);
      send_offsets[i] = seg_begin(i);
      recv_counts[i] = my_len;
      recv_offsets[i] = my_len * i;  // rank i's copy of my segment
    }
    buffer.resize(static_cast<std::size_t>(my_len) * static_cast<std::size_t>(ranks));
    check_mpi(
        MPI_Alltoallv(chunk, send_counts.data(), send_offsets.data(), mpi_type<S>(), buffer.data(),
                      recv_counts.data(), recv_offsets.data(), mpi_type<S>(), comm.get()),
        "MPI_Alltoallv");
    // My segment: the ranks' copies added in rank order.
    S* out = chunk + seg_begin(mine);
    for (int j = 0; j < my_len; ++j) out[j] = buffer[static_cast<std::size_t>(j)];
    for (int i = 1; i < ranks; ++i) {
      const S* part = buffer.data() + static_cast<std::size_t>(my_len) * i;
      for (int j = 0; j < my_len; ++j) out[j] += part[j];
    }
    for (int i = 0; i < ranks; ++i) recv_counts[i] = send_counts[i];
    check_mpi(MPI_Allgatherv(MPI_IN_PLACE, 0, mpi_type<S>(), chunk, recv_counts.data(),
                             send_offsets.data(), mpi_type<S>(), comm.get()),
              "MPI_Allgatherv");
  }
}

/// Writes to `out` (n values) the sum of every rank's `k` vectors `groups` (k x n, vector j at
/// j * n), added in global order: rank 0's vectors 0..k-1, then rank 1's, ... The same bits for
/// any split of the same sequence of vectors over the ranks (one rank holding all of them
/// included). Collective; `send` and `recv` are scratch space reused between calls.
template <class S>
void sum_groups_ordered(const Communicator& comm, const S* groups, Index k, Index n, Index bucket,
                        S* out, std::vector<S>& send, std::vector<S>& recv) {
  REFORMER_REQUIRE(k >= 1 && n >= 0 && bucket >= 1, InvalidArgument,
                   "distributed::sum_groups_ordered", "k = ", k, ", n = ", n, ", bucket = ", bucket,
                   " (need k >= 1, n >= 0, bucket >= 1)");
  const int ranks = comm.size(), mine = comm.rank();
  const Index step = std::max<Index>(1, std::min<Index>(bucket, Communicator::kMaxCount / k));
  std::vector<int> send_counts(ranks), send_offsets(ranks), recv_counts(ranks), recv_offsets(ranks),
      seg_counts(ranks), seg_offsets(ranks);
  for (Index first = 0; first < n; first += step) {
    const Index len = std::min(step, n - first);
    auto seg_begin = [&](int i) { return len * i / ranks; };
    // Pack: for each destination i, segment i of every one of my vectors.
    send.resize(static_cast<std::size_t>(k * len));
    Index pos = 0;
    for (int i = 0; i < ranks; ++i) {
      const Index b = seg_begin(i), e = seg_begin(i + 1);
      send_offsets[i] = static_cast<int>(pos);
      send_counts[i] = static_cast<int>(k * (e - b));
      seg_offsets[i] = static_cast<int>(b);
      seg_counts[i] = static_cast<int>(e - b);
      for (Index j = 0; j < k; ++j) {
        std::copy(groups + j * n + first + b, groups + j * n + first + e, send.data() + pos);
        pos += e - b;
      }
    }
    const Index my_len = seg_begin(mine + 1) - seg_begin(mine);
    const S* parts = send.data();  // one rank: its own vectors, in order
    if (ranks > 1) {
      recv.resize(static_cast<std::size_t>(ranks * k * my_len));
      for (int i = 0; i < ranks; ++i) {
        recv_counts[i] = static_cast<int>(k * my_len);
        recv_offsets[i] = static_cast<int>(i * k * my_len);
      }
      check_mpi(MPI_Alltoallv(send.data(), send_counts.data(), send_offsets.data(), mpi_type<S>(),
                              recv.data(), recv_counts.data(), recv_offsets.data(), mpi_type<S>(),
                              comm.get()),
                "MPI_Alltoallv");
      parts = recv.data();
    }
    // My segment: rank 0's vectors in order, then rank 1's, ...
    S* o = out + first + seg_begin(mine);
    for (Index idx = 0; idx < ranks * k; ++idx) {
      const S* part = parts + idx * my_len;
      if (idx == 0) {
        std::copy(part, part + my_len, o);
      } else {
        for (Index j = 0; j < my_len; ++j) o[j] += part[j];
      }
    }
    if (ranks > 1) {
      check_mpi(MPI_Allgatherv(MPI_IN_PLACE, 0, mpi_type<S>(), out + first, seg_counts.data(),
                               seg_offsets.data(), mpi_type<S>(), comm.get()),
                "MPI_Allgatherv");
    }
  }
}

/// What one step's data-parallel exchange moved and cost (per rank).
struct ExchangeStats {
  std::int64_t bytes_sent = 0;  ///< gradient bytes this rank sent in the last allreduce
  double seconds = 0.0;         ///< wall time of the last allreduce_gradients
};

/// Per-step statistics of a rank, summed over the ranks in rank order.
struct StepTotals {
  double loss_sum = 0.0;       ///< sum of the per-token losses (mean loss * count)
  std::int64_t tokens = 0;     ///< counted targets
  std::int64_t correct = 0;    ///< correct predictions (when measured)
  std::int64_t interrupt = 0;  ///< ranks that were asked to stop

  StepTotals& operator+=(const StepTotals& o) {
    loss_sum += o.loss_sum;
    tokens += o.tokens;
    correct += o.correct;
    interrupt += o.interrupt;
    return *this;
  }
  double mean_loss() const { return tokens > 0 ? loss_sum / static_cast<double>(tokens) : 0.0; }
};

/// Data parallelism over a model's flat parameter store (core/parameters.hpp). Keeps a reference
/// to `comm`, which must outlive it.
template <class S>
class DataParallel {
 public:
  /// Buckets of `bucket_elements` gradient values (default 4 Mi values: 16 MiB of float).
  explicit DataParallel(const Communicator& comm, Index bucket_elements = Index{1} << 22)
      : comm_(comm), bucket_(bucket_elements) {
    REFORMER_REQUIRE(bucket_elements >= 1, InvalidArgument, "DataParallel",
                     "bucket_elements = ", bucket_elements, " must be >= 1");
  }

  const Communicator& comm() const { return comm_; }
  int rank() const { return comm_.rank(); }
  int size() const { return comm_.size(); }

  /// Rank 0's parameter values on every rank (collective). RankMismatch on every rank when
  /// the stores differ in size.
  void broadcast_parameters(Parameters<S>& params) const {
    require_same(comm_, "parameter count", std::to_string(params.size()));
    comm_.broadcast(params.values().data(), params.size(), 0);
  }

  /// Replaces every rank's gradient by the sum over the ranks, added in rank order
  /// (collective; bitwise identical on every rank and from run to run).
  void allreduce_gradients(Parameters<S>& params) {
    const double start = MPI_Wtime();
    const Index n = params.size();
    allreduce_sum_ordered(comm_, params.grads().data(), n, bucket_, buffer_);
    const int ranks = comm_.size();
    // Each rank sends everything but its own segment twice: (N-1)/N of the store, twice.
    stats_.bytes_sent = ranks > 1 ? 2 * static_cast<std::int64_t>(sizeof(S)) * (n - n / ranks) : 0;
    stats_.seconds = MPI_Wtime() - start;
  }

  /// One data-parallel training step's forward and backward pass: this rank's `batch` sequences
  /// (`tokens`, optional `targets` as in ReformerLM::forward_loss) at RNG step `step`, the
  /// gradient of the mean loss over ALL ranks' counted targets summed into every rank's
  /// parameters().grads() (which must be zero on entry). Returns the loss and token totals over
  /// the ranks. Collective.
  StepTotals forward_backward(ReformerLM<S>& model, Tape<S>& tape, TokenSpan tokens, Index batch,
                              std::uint64_t step, TokenSpan targets = {}) {
    const double local_mean = model.forward_loss(tokens, batch, tape, step, targets);
    StepTotals local;
    local.tokens = tape.loss_count;
    local.loss_sum = local_mean * static_cast<double>(tape.loss_count);
    const StepTotals total = comm_.sum(local);
    // d(global mean)/d(local sum) = 1 / total tokens; backward divides by the local count.
    const double scale = total.tokens > 0
                             ? static_cast<double>(local.tokens) / static_cast<double>(total.tokens)
                             : 0.0;
    model.backward(tape, scale);
    allreduce_gradients(model.parameters());
    return total;
  }

  /// As forward_backward, bitwise identical for ANY number of ranks (one included) that splits
  /// the same global batch: every group of `group` consecutive sequences gets its own forward
  /// and backward pass and gradient copy, and the groups' gradients are added in global order
  /// (sum_groups_ordered). Costs per rank k = batch / group gradient copies of memory and
  /// (k + 1) / 2 times the traffic of forward_backward, and k passes of `group` sequences
  /// instead of one of `batch`. Dropout masks are keyed by the column within the group, so they
  /// too are the same for any rank count. The gradients need not be zero on entry.
  StepTotals forward_backward_grouped(ReformerLM<S>& model, Tape<S>& tape, TokenSpan tokens,
                                      Index batch, std::uint64_t step, Index group,
                                      TokenSpan targets = {}) {
    const char* where = "DataParallel::forward_backward_grouped";
    REFORMER_REQUIRE(batch >= 1 && tokens.size() % batch == 0, InvalidArgument, where,
                     "tokens.size() = ", tokens.size(), " is not a multiple of batch = ", batch);
    REFORMER_REQUIRE(group >= 1 && batch % group == 0, RankMismatch, where, "group = ", group,
                     " must divide this rank's batch of ", batch, " sequences");
    REFORMER_REQUIRE(targets.empty() || targets.size() == tokens.size(), InvalidArgument, where,
                     "targets.size() = ", targets.size(),
                     " must equal tokens.size() = ", tokens.size());
    const Index t = tokens.size() / batch, k = batch / group, span = group * t;
    // The counted targets of each group, known before its forward pass.
    std::vector<std::int64_t> counts(static_cast<std::size_t>(k), 0);
    for (Index j = 0; j < k; ++j) {
      if (targets.empty()) {
        counts[static_cast<std::size_t>(j)] = group * (t - 1);
      } else {
        for (Index i = j * span; i < (j + 1) * span; ++i) {
          counts[static_cast<std::size_t>(j)] += targets[i] >= 0 ? 1 : 0;
        }
      }
    }
    std::int64_t local_tokens = 0;
    for (std::int64_t c : counts) local_tokens += c;
    const std::int64_t total_tokens = comm_.sum(local_tokens);

    Parameters<S>& params = model.parameters();
    const Index n = params.size();
    group_grads_.resize(static_cast<std::size_t>(k * n));
    std::vector<double> loss_sums(static_cast<std::size_t>(k));
    for (Index j = 0; j < k; ++j) {
      const std::int64_t c = counts[static_cast<std::size_t>(j)];
      params.zero_grad();
      const TokenSpan group_targets =
          targets.empty() ? TokenSpan() : TokenSpan(targets.data() + j * span, span);
      const double mean = model.forward_loss(TokenSpan(tokens.data() + j * span, span), group, tape,
                                             step, group_targets);
      model.backward(tape, total_tokens > 0
                               ? static_cast<double>(c) / static_cast<double>(total_tokens)
                               : 0.0);
      std::copy(params.grads().data(), params.grads().data() + n,
                group_grads_.data() + static_cast<std::size_t>(j * n));
      loss_sums[static_cast<std::size_t>(j)] = mean * static_cast<double>(c);
    }
    const double start_sum = MPI_Wtime();
    sum_groups_ordered(comm_, group_grads_.data(), k, n, bucket_, params.grads().data(), buffer_,
                       recv_);
    const int ranks = comm_.size();
    stats_.bytes_sent =
        ranks > 1 ? static_cast<std::int64_t>(sizeof(S)) * (k + 1) * (n - n / ranks) : 0;
    stats_.seconds = MPI_Wtime() - start_sum;

    StepTotals total;
    total.tokens = total_tokens;
    const std::vector<double> all = comm_.allgather(loss_sums);  // global group order
    for (double v : all) total.loss_sum += v;
    return total;
  }

  /// The last allreduce's bytes and time.
  const ExchangeStats& last_exchange() const { return stats_; }

 private:
  const Communicator& comm_;
  Index bucket_;
  std::vector<S> buffer_, recv_;
  std::vector<S> group_grads_;  // forward_backward_grouped: one gradient copy per group
  ExchangeStats stats_;
};

}  // namespace reformer::distributed
