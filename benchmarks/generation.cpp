// Text generation with the 6-layer model: incremental decoding with per-layer caches
// (reformer::Generator, model/generator.hpp) against recomputing the whole context for every
// token, as a function of the prompt (context) length.
//
// Model (common/model.hpp): layers alternating (lsh, local), D = 256, H = 4, Dh = 64, F = 1024,
// R = 2, C = 64, V = 256, float, dropout 0; the position table and the LSH bucket layout are
// sized for P + --margin tokens.
//
// Families (argument P, the prompt length; 1K, 4K, 16K, 64K by default, --tmin / --tmax):
//   generation/cached/P      time per generated token: Generator::append (one column through
//                            the embeddings, the six blocks with their caches and the head),
//                            after a prefill of P tokens; the timed tokens grow the context from
//                            P to at most P + --margin (then an untimed prefill starts again)
//   generation/recompute/P   time per generated token without a cache: ReformerLM::logits on
//                            the last P tokens (P <= --recompute_max, default 4096)
//   generation/prefill/P     Generator::prefill of P tokens: one forward pass filling the caches
// Counters: tokens/s; for cached and prefill also cache_bytes_per_token_lsh (one LSH layer's
// cache, per token of context), cache_bytes_local (one local layer's, independent of P) and
// activation_bytes_per_token (a D x T activation matrix of one forward pass, per token).
//
// Run:  generation --benchmark_out=generation.json --benchmark_out_format=json [--threads=N]
#include "common/counters.hpp"
#include "common/model.hpp"
#include "common/options.hpp"

#include <benchmark/benchmark.h>
#include <reformer/reformer.hpp>

#include <chrono>
#include <cstdint>
#include <vector>

namespace {

using reformer::Index;
using reformer::Token;
using reformer_bench::ModelSpec;
using reformer_bench::Options;

std::vector<Token> byte_tokens(Index n) {
  std::vector<Token> t(static_cast<std::size_t>(n));
  const reformer::Rng rng(5);
  for (Index i = 0; i < n; ++i)
    t[static_cast<std::size_t>(i)] =
        static_cast<Token>(rng.uniform(static_cast<std::uint64_t>(i)) * 256.0) & 255;
  return t;
}

reformer::ReformerConfig generation_config(Index context, const Options& o) {
  ModelSpec m;
  m.layers = {"lsh", "local", "lsh", "local", "lsh", "local"};
  m.length = context;
  return reformer_bench::model_config(m, o);
}

void report_cache(benchmark::State& st, const reformer::Generator<float>& gen) {
  using C = benchmark::Counter;
  const double len = static_cast<double>(gen.length());
  st.counters["cache_bytes_per_token_lsh"] = C(static_cast<double>(gen.cache_bytes(0)) / len);
  st.counters["cache_bytes_local"] =
      C(static_cast<double>(gen.cache_bytes(1)), C::kDefaults, C::kIs1024);
  st.counters["activation_bytes_per_token"] = C(256.0 * sizeof(float));
  st.counters["context"] = C(len);
}

void cached(benchmark::State& st, const Options& o) {
  const Index p = st.range(0), margin = o.get("margin");
  const reformer::ReformerLM<float> model(generation_config(p + margin, o));
  reformer::Generator<float> gen(model, p + margin);
  const std::vector<Token> tokens = byte_tokens(p + margin);
  gen.prefill(reformer::TokenSpan(tokens.data(), p));
  Index next = p;
  for (auto _ : st) {
    if (next == p + margin) {  // the context is full: start again (untimed)
      gen.prefill(reformer::TokenSpan(tokens.data(), p));
      next = p;
    }
    const auto t0 = std::chrono::steady_clock::now();
    gen.append(tokens[static_cast<std::size_t>(next++)]);
    benchmark::DoNotOptimize(gen.next_logits().data());
    st.SetIterationTime(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  st.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(st.iterations()), benchmark::Counter::kIsRate);
  report_cache(st, gen);
  st.counters["threads"] = reformer::num_threads();
}

void recompute(benchmark::State& st, const Options& o) {
  const Index p = st.range(0);
  const reformer::ReformerLM<float> model(generation_config(p + o.get("margin"), o));
  const reformer::Generator<float> gen(model, p + o.get("margin"));  // the same bucket layout
  const std::vector<Token> tokens = byte_tokens(p);
  for (auto _ : st) {
    const auto t0 = std::chrono::steady_clock::now();
    const reformer::Matrix<float> logits = gen.reference_model().logits(tokens, 1);
    benchmark::DoNotOptimize(logits.data());
    st.SetIterationTime(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  st.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(st.iterations()), benchmark::Counter::kIsRate);
  st.counters["threads"] = reformer::num_threads();
}

void prefill(benchmark::State& st, const Options& o) {
  const Index p = st.range(0);
  const reformer::ReformerLM<float> model(generation_config(p + o.get("margin"), o));
  reformer::Generator<float> gen(model, p + o.get("margin"));
  const std::vector<Token> tokens = byte_tokens(p);
  for (auto _ : st) {
    const auto t0 = std::chrono::steady_clock::now();
    gen.prefill(tokens);
    st.SetIterationTime(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  st.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(st.iterations() * p), benchmark::Counter::kIsRate);
  report_cache(st, gen);
  st.counters["threads"] = reformer::num_threads();
}

void register_all(const Options& o) {
  const Index lo = o.lo(1024), hi = o.hi(Index{1} << 16, Index{1} << 16);
  const Index recompute_max = o.get("recompute_max");
  auto family = [&](const char* name, void (*fn)(benchmark::State&, const Options&), Index top) {
    auto* b = benchmark::RegisterBenchmark(name, [o, fn](benchmark::State& st) { fn(st, o); });
    for (Index p = lo; p <= top; p *= 4) b->Arg(p);
    b->UseManualTime()->Unit(benchmark::kMillisecond);
  };
  family("generation/cached", cached, hi);
  family("generation/recompute", recompute, std::min(hi, recompute_max));
  family("generation/prefill", prefill, hi);
}

}  // namespace

int main(int argc, char** argv) {
  return reformer_bench::run_main(argc, argv, register_all,
                                  {{"margin", 512}, {"recompute_max", 4096}},
                                  "  --margin=N          tokens generated after the prompt "
                                  "before starting again (default 512)\n"
                                  "  --recompute_max=P   longest prompt of the recompute family "
                                  "(default 4096)");
}
