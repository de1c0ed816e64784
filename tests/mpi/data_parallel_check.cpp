// Data-parallel training checks, run under mpirun by tests/mpi/CMakeLists.txt.
//
// Trains a small model (2 layers: local + LSH attention, T = 32, vocabulary 24) for --steps
// steps on a global batch of --batch random sequences (batch s is a pure function of the step),
// each rank on its own B/N sequences, with DataParallel<float>. Rank 0 prints
//   result: loss <hex of the final loss> params <hash of every parameter bit>
//   loss: <final loss, 17 digits>
// Options:
//   --reference          rank 0 also trains a one-process model on the whole batch and fails
//                        unless the final losses agree within --tolerance (relative)
//   --expect-loss X      fail unless the final loss is within --tolerance of X (relative)
//   --save P / --load P  write a checkpoint at the end / start from one (any rank count)
//   --seed-offset-rank R rank R uses another seed (a configuration mismatch)
//   --die-rank R --die-step K   rank R exits abruptly at step K (a rank that dies)
//   --group G            forward_backward_grouped with groups of G sequences (the same bits for
//                        any rank count)
//   --mpi-error          broadcast from a root that does not exist: the reformer::Error must
//                        name MPI_Bcast (then exit 0)
#include "reformer/core/error.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/distributed/mpi.hpp"
#include "reformer/io/checkpoint.hpp"
#include "reformer/io/config_json.hpp"
#include "reformer/model/clip.hpp"
#include "reformer/model/config.hpp"
#include "reformer/model/optimizer.hpp"
#include "reformer/model/reformer_lm.hpp"
#include "reformer/model/tape.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

using reformer::Index;
namespace dist = reformer::distributed;

struct Options {
  std::int64_t steps = 50;
  Index batch = 4;
  bool reference = false;
  double tolerance = 1e-6;
  double expect_loss = std::nan("");
  std::string save, load;
  int seed_offset_rank = -1;
  int die_rank = -1;
  std::int64_t die_step = -1;
  bool mpi_error = false;
  Index group = 0;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      REFORMER_REQUIRE(i + 1 < argc, reformer::InvalidArgument, "data_parallel_check", a,
                       " needs a value");
      return argv[++i];
    };
    if (a == "--steps")
      o.steps = std::stoll(value());
    else if (a == "--batch")
      o.batch = std::stoll(value());
    else if (a == "--reference")
      o.reference = true;
    else if (a == "--tolerance")
      o.tolerance = std::stod(value());
    else if (a == "--expect-loss")
      o.expect_loss = std::stod(value());
    else if (a == "--save")
      o.save = value();
    else if (a == "--load")
      o.load = value();
    else if (a == "--seed-offset-rank")
      o.seed_offset_rank = std::stoi(value());
    else if (a == "--die-rank")
      o.die_rank = std::stoi(value());
    else if (a == "--die-step")
      o.die_step = std::stoll(value());
    else if (a == "--mpi-error")
      o.mpi_error = true;
    else if (a == "--group")
      o.group = std::stoll(value());
    else
      reformer::raise("data_parallel_check", "unknown option '", a, "'");
  }
  return o;
}

constexpr Index kLength = 32;

reformer::ReformerConfig small_config(std::uint64_t seed) {
  reformer::ReformerConfig c;
  c.vocab_size = 24;
  c.hidden_size = 32;
  c.num_attention_heads = 2;
  c.attention_head_size = 0;
  c.feed_forward_size = 64;
  c.attn_layers = {"local", "lsh"};
  c.lsh_attn_chunk_length = 8;
  c.local_attn_chunk_length = 8;
  c.num_buckets = {4};
  c.hidden_dropout_prob = 0.0;  // masks are keyed by the column in the rank's own batch
  c.local_attention_probs_dropout_prob = 0.0;
  c.axial_pos_embds = false;
  c.max_position_embeddings = kLength;
  c.chunk_size_feed_forward = 16;
  c.chunk_size_lm_head = 16;
  c.seed = seed;
  return c;
}

/// Sequences [first, first + count) of the global batch of step `step`.
std::vector<reformer::Token> batch_tokens(std::int64_t step, Index first, Index count) {
  const reformer::Rng rng = reformer::Rng(7).derive(static_cast<std::uint64_t>(step));
  std::vector<reformer::Token> tokens(static_cast<std::size_t>(count * kLength));
  for (Index i = 0; i < count * kLength; ++i) {
    const auto draw = static_cast<std::uint64_t>(first * kLength + i);
    tokens[static_cast<std::size_t>(i)] = static_cast<reformer::Token>(rng.below(draw, 24));
  }
  return tokens;
}

std::uint64_t parameter_hash(const reformer::Parameters<float>& p) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (Index i = 0; i < p.size(); ++i) {
    std::uint32_t bits = 0;
    std::memcpy(&bits, p.values().data() + i, sizeof bits);
    h = (h ^ bits) * 0x100000001b3ull;
  }
  return h;
}

/// Trains `model` from the optimizer's step to o.steps on this rank's shard; returns the last
/// step's global mean loss.
double train(const Options& o, dist::DataParallel<float>& dp, reformer::ReformerLM<float>& model,
             reformer::Adam<float>& opt) {
  const dist::Shard shard = dist::batch_shard(o.batch, dp.rank(), dp.size());
  reformer::Tape<float> tape;
  double loss = 0.0;
  for (std::int64_t s = opt.step_count(); s < o.steps; ++s) {
    if (dp.rank() == o.die_rank && s == o.die_step) {
      std::fprintf(stderr, "rank %d: exiting abruptly at step %lld\n", dp.rank(),
                   static_cast<long long>(s));
      std::_Exit(3);
    }
    const std::vector<reformer::Token> tokens = batch_tokens(s, shard.begin, shard.size());
    model.zero_grad();
    const auto step = static_cast<std::uint64_t>(s);
    loss =
        (o.group > 0 ? dp.forward_backward_grouped(model, tape, tokens, shard.size(), step, o.group)
                     : dp.forward_backward(model, tape, tokens, shard.size(), step))
            .mean_loss();
    reformer::clip_grad_norm(model.parameters(), 1.0);
    opt.step(model.parameters(), 3e-3);
  }
  return loss;
}

/// The one-process run of the same global batch: the oracle of the data-parallel run.
double train_alone(const Options& o, std::uint64_t seed) {
  reformer::ReformerLM<float> model(small_config(seed));
  reformer::Adam<float> opt(model.parameters(), reformer::AdamOptions::adam(3e-3));
  reformer::Tape<float> tape;
  double loss = 0.0;
  for (std::int64_t s = 0; s < o.steps; ++s) {
    const std::vector<reformer::Token> tokens = batch_tokens(s, 0, o.batch);
    model.zero_grad();
    loss = model.forward_loss(tokens, o.batch, tape, static_cast<std::uint64_t>(s));
    model.backward(tape);
    reformer::clip_grad_norm(model.parameters(), 1.0);
    opt.step(model.parameters(), 3e-3);
  }
  return loss;
}

/// 0 when an MPI failure surfaces as a reformer::Error naming the call.
int check_mpi_error(const dist::Communicator& comm) {
  float value = 1.0f;
  try {
    comm.broadcast(&value, 1, comm.size());  // no such root
  } catch (const reformer::Error& e) {
    const bool named = std::strstr(e.what(), "MPI_Bcast") != nullptr;
    std::printf("rank %d: caught: %s\n", comm.rank(), e.what());
    return named ? 0 : 1;
  }
  std::printf("rank %d: no error from a broadcast from root %d\n", comm.rank(), comm.size());
  return 1;
}

int run(const Options& o, const dist::Communicator& comm) {
  if (o.mpi_error) return check_mpi_error(comm);
  const std::uint64_t seed = comm.rank() == o.seed_offset_rank ? 43 : 42;
  const reformer::ReformerConfig config = small_config(seed);
  nlohmann::json settings = {{"model", config}, {"batch", o.batch}, {"steps", o.steps}};
  dist::require_same(comm, "configuration", settings.dump());

  dist::DataParallel<float> dp(comm, /*bucket_elements=*/5000);  // several buckets
  reformer::ReformerLM<float> model(config);
  reformer::Adam<float> opt(model.parameters(), reformer::AdamOptions::adam(3e-3));
  if (!o.load.empty()) reformer::io::Checkpoint::open(o.load).restore(model, opt);
  dp.broadcast_parameters(model.parameters());

  const double loss = train(o, dp, model, opt);
  int failed = 0;
  if (comm.rank() == 0) {
    if (!o.save.empty()) reformer::io::Checkpoint::save(o.save, model, opt);
    std::printf("result: loss %a params %016llx\nloss: %.17g\n", loss,
                static_cast<unsigned long long>(parameter_hash(model.parameters())), loss);
    auto compare = [&](const char* what, double expected) {
      const double rel = std::abs(loss - expected) / std::abs(expected);
      std::printf("%s: %.17g, relative difference %.3g (tolerance %.3g)\n", what, expected, rel,
                  o.tolerance);
      if (!(rel <= o.tolerance)) failed = 1;
    };
    if (o.reference) compare("one-process loss", train_alone(o, seed));
    if (!std::isnan(o.expect_loss)) compare("expected loss", o.expect_loss);
  }
  // Every rank's parameters must be the same bits.
  const std::vector<std::uint64_t> hashes = comm.allgather(parameter_hash(model.parameters()));
  for (std::uint64_t h : hashes) {
    if (h != hashes[0]) {
      std::printf("rank %d: the ranks' parameters differ\n", comm.rank());
      failed = 1;
    }
  }
  comm.broadcast(&failed, 1, 0);
  return failed;
}

}  // namespace

int main(int argc, char** argv) {
  dist::Environment env(&argc, &argv);
  int rank = 0;
  try {
    const dist::Communicator comm;
    rank = comm.rank();
    const int code = run(parse(argc, argv), comm);
    std::fflush(stdout);
    return code;
  } catch (const dist::RankMismatch& e) {  // every rank raised it: end normally
    std::fprintf(stderr, "rank %d: error: %s\n", rank, e.what());
    std::fflush(stderr);
    return 2;
  } catch (const reformer::Error& e) {  // maybe this rank alone: end every rank
    std::fprintf(stderr, "rank %d: error: %s\n", rank, e.what());
    std::fflush(stderr);
    dist::Environment::abort(2);
  }
}
