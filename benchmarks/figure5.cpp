// The Reformer paper's Figure 5 (right) on this CPU: seconds per training step while the
// number of tokens per step stays fixed at 32,768 and the sequence length grows, T / batch from
// 1024 / 32 to 32768 / 1, for a 1-layer model with dense attention and with LSH attention of
// R = 1, 2, 4, 8 hash rounds. Dense attention's cost per step grows with T (its T^2 per
// sequence times 32768 / T sequences); LSH attention's should stay flat.
//
// Model (common/model.hpp) with one layer: "full" (dense) or "lsh"; D = 256, H = 4, Dh = 64,
// F = 1024, C = 64, V = 256, float, dropout 0. A step is forward_loss + backward.
//
// Families (argument T; batch = tokens / T):
//   figure5/dense, figure5/lsh_r1, figure5/lsh_r2, figure5/lsh_r4, figure5/lsh_r8
//   gemm/...   the GEMM reference
// Dense attention works in query panels (FullAttention never holds a T x T matrix), so every
// point fits in memory; at T = 32768 its step takes about half a minute.
//
// Run:  figure5 --benchmark_out=figure5.json --benchmark_out_format=json [--tokens=32768]
#include "common/counters.hpp"
#include "common/gemm_reference.hpp"
#include "common/model.hpp"
#include "common/options.hpp"

#include <benchmark/benchmark.h>
#include <reformer/reformer.hpp>

#include <algorithm>
#include <string>

namespace {

using reformer::Index;
using reformer_bench::ModelSpec;
using reformer_bench::Options;

void step(benchmark::State& state, const std::string& kind, Index hashes, Index tokens,
          const Options& o) {
  const Index t = state.range(0);
  if (tokens % t != 0) {
    state.SkipWithError("tokens per step is not a multiple of T");
    return;
  }
  const Index batch = tokens / t;
  ModelSpec m;
  m.layers = {kind};
  m.length = t;
  m.batch = batch;
  m.hashes = hashes;
  reformer_bench::model_step(state, m, o);
  state.counters["batch"] = double(batch);
  state.counters["seconds_per_step"] = state.counters["tokens/s"].value > 0
                                           ? double(tokens) / state.counters["tokens/s"].value
                                           : 0.0;
}

void register_all(const Options& o) {
  const Index tokens = o.get("tokens");
  const Index lo = o.lo(1024), hi = o.hi(std::min<Index>(32768, tokens), tokens);
  struct Variant {
    const char* name;
    const char* kind;
    Index hashes;
  };
  const Variant variants[] = {{"dense", "full", 1},
                              {"lsh_r1", "lsh", 1},
                              {"lsh_r2", "lsh", 2},
                              {"lsh_r4", "lsh", 4},
                              {"lsh_r8", "lsh", 8}};
  for (const Variant& v : variants) {
    const std::string name = std::string("figure5/") + v.name;
    const std::string kind = v.kind;
    const Index hashes = v.hashes;
    benchmark::RegisterBenchmark(name.c_str(),
                                 [=](benchmark::State& st) { step(st, kind, hashes, tokens, o); })
        ->RangeMultiplier(2)
        ->Range(lo, hi)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  if (o.gemm) reformer_bench::register_gemm_reference();
}

}  // namespace

int main(int argc, char** argv) {
  return reformer_bench::run_main(argc, argv, register_all, {{"tokens", 32768}},
                                  "  --tokens=N     tokens per step (default 32768)");
}
