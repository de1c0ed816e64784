// Data-parallel training steps on MPI (reformer/distributed/mpi.hpp, docs/DESIGN.md 6,
// "Data-parallel training").
//
//   mpirun -np 2 data_parallel --threads=1      2 ranks x 1 thread
//   data_parallel --threads=2                   1 rank x 2 threads (the same global batch)
//
// Model: model_step/L6 (common/model.hpp: 6 layers alternating LSH and local attention, D = 256,
// F = 1024, R = 2), float. Each benchmark runs one training step of a global batch of
// --global_batch sequences of T tokens (default 2; each rank trains global_batch / N of them):
// forward, backward and the rank-ordered gradient sum; no optimizer update. --group=G times
// forward_backward_grouped instead (the same bits for any rank count). Every rank runs the
// same fixed number of iterations (--iterations, default 3; collectives need every rank in
// step) after one untimed step, each timed from a barrier to a barrier, so the time is the
// slowest rank's. Counters:
//   tokens_per_s          global tokens per second
//   allreduce_fraction    share of the step spent in the gradient sum (rank 0's)
//   allreduce_ms          time of the gradient sum (rank 0's)
//   bytes_per_step        gradient bytes each rank sends per step (2 (N-1)/N of the store)
// Only rank 0 reports (and writes --benchmark_out).
#include "common/model.hpp"
#include "common/options.hpp"

#include <benchmark/benchmark.h>
#include <reformer/distributed/mpi.hpp>
#include <reformer/reformer.hpp>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

namespace {

using reformer::Index;
using reformer_bench::ModelSpec;
using reformer_bench::Options;
namespace dist = reformer::distributed;

const dist::Communicator* g_comm = nullptr;

std::vector<std::string> alternating(Index layers) {
  std::vector<std::string> kinds;
  for (Index l = 0; l < layers; ++l) kinds.push_back(l % 2 == 0 ? "lsh" : "local");
  return kinds;
}

void data_parallel_step(benchmark::State& st, const Options& o, Index length) {
  const dist::Communicator& comm = *g_comm;
  ModelSpec m;
  m.layers = alternating(6);
  m.length = length;
  reformer::ReformerLM<float> model(reformer_bench::model_config(m, o));
  dist::DataParallel<float> dp(comm);
  dp.broadcast_parameters(model.parameters());
  const Index global_batch = o.get("global_batch");
  const dist::Shard shard = dist::batch_shard(global_batch, comm.rank(), comm.size());
  std::vector<reformer::Token> tokens(static_cast<std::size_t>(shard.size() * length));
  const reformer::Rng rng(5);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<reformer::Token>(
        rng.below(static_cast<std::uint64_t>(shard.begin * length) + i, 256));
  }
  reformer::Tape<float> tape;
  const Index group = o.get("group");
  // One untimed step: the first exchange sets up MPI's shared-memory channels and the buffers'
  // pages.
  model.zero_grad();
  dp.forward_backward(model, tape, tokens, shard.size(), 0);
  double allreduce_s = 0.0, step_s = 0.0;
  std::uint64_t step = 1;
  for (auto _ : st) {
    comm.barrier();
    const double start = MPI_Wtime();
    model.zero_grad();
    if (group > 0) {
      dp.forward_backward_grouped(model, tape, tokens, shard.size(), step++, group);
    } else {
      dp.forward_backward(model, tape, tokens, shard.size(), step++);
    }
    comm.barrier();
    const double seconds = MPI_Wtime() - start;
    st.SetIterationTime(seconds);
    step_s += seconds;
    allreduce_s += dp.last_exchange().seconds;
  }
  const double iters = static_cast<double>(st.iterations());
  st.counters["tokens_per_s"] =
      benchmark::Counter(static_cast<double>(global_batch * length) * iters / step_s);
  st.counters["allreduce_fraction"] = allreduce_s / step_s;
  st.counters["allreduce_ms"] = 1e3 * allreduce_s / iters;
  st.counters["bytes_per_step"] = static_cast<double>(dp.last_exchange().bytes_sent);
  st.counters["ranks"] = comm.size();
  st.counters["parameters"] = static_cast<double>(model.parameters().size());
}

/// Rank 0 reports; the others run the same benchmarks silently.
class SilentReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace

int main(int argc, char** argv) {
  dist::Environment env(&argc, &argv);
  try {
    const dist::Communicator comm;
    g_comm = &comm;
    Options o = reformer_bench::parse_options(
        argc, argv, {{"global_batch", 2}, {"iterations", 3}, {"group", 0}},
        "  --global_batch=B  sequences per step over all ranks (default 2)\n"
        "  --iterations=N    timed steps per benchmark (default 3)\n"
        "  --group=G         forward_backward_grouped with groups of G sequences (default 0: "
        "off)");
    // Rank 0 alone writes the output file.
    std::vector<char*> args(argv, argv + argc);
    if (comm.rank() != 0) {
      std::vector<char*> kept;
      for (char* a : args) {
        if (std::string(a).rfind("--benchmark_out", 0) != 0) kept.push_back(a);
      }
      args = kept;
    }
    int n = static_cast<int>(args.size());
    benchmark::Initialize(&n, args.data());
    reformer_bench::apply_options(o);
    benchmark::AddCustomContext("mpi_ranks", std::to_string(comm.size()));
    const Index lo = o.lo(4096), hi = o.hi(16384, 16384);
    benchmark::RegisterBenchmark(
        "data_parallel/L6", [o](benchmark::State& st) { data_parallel_step(st, o, st.range(0)); })
        ->RangeMultiplier(4)
        ->Range(lo, hi)
        ->Iterations(o.get("iterations"))
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
    if (comm.rank() == 0) {
      benchmark::RunSpecifiedBenchmarks();
    } else {
      SilentReporter silent;
      benchmark::RunSpecifiedBenchmarks(&silent);
    }
    benchmark::Shutdown();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "data_parallel: %s\n", e.what());
    dist::Environment::abort(1);
  }
}
