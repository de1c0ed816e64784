#pragma once
// The GEMM reference of every benchmark program: fp32 products of the shapes the model uses,
// computed the way the library computes them (reformer::parallel_product /
// linear_weight_grads: Eigen's product, or OpenBLAS when built with REFORMER_GEMM=OPENBLAS, split
// over the library's threads). Every GFLOP/s figure of the same run can then be read as a
// fraction of what this machine's matrix multiply reaches; the plots and the README use the best
// of these shapes as "the GEMM reference".
//
//   gemm/<name>/<M>x<K>x<N>:   out (M x N) = W (M x K, row-major [out, in]) * X (K x N)
//     proj     256 x  256 x N    attention projections (W_q, W_k, W_v, W_qk, W_o)
//     ffn_in  1024 x  256 x N    feed-forward W1
//     ffn_out  256 x 1024 x N    feed-forward W2
//     wgrad    256 x  256, reduction over N tokens: dW += dy x^T (weight gradients)
//     square  1024 x 1024 x 1024 the machine's square GEMM
//     chunks   the attention chunk kernel's forward products (layers/chunk_attention.hpp), one
//              pair per (head, round, chunk) of 64 queries against a 128-key window:
//                st = k^T q   (128 x 64 x 64),   o = v st   (64 x 128 x 64)
//              N / 64 chunks x 4 heads x 2 rounds pairs (the LSH sublayer's at N tokens) split
//              over the threads, operands in cache; named by one pair's shape, 64x128x64.
//              As the kernel computes them (ops/small_product.hpp, k transposed first).
//     chunks_eigen  the same pairs as Eigen's GEMM products (st = k.transpose() * q, o = v * st)
// N = 4096 tokens (all columns of one product, as in the unchunked layers).
#include "counters.hpp"
#include "memory.hpp"

#include <benchmark/benchmark.h>
#include <reformer/core/types.hpp>
#include <reformer/ops/linear.hpp>
#include <reformer/ops/parallel.hpp>
#include <reformer/ops/small_product.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace reformer_bench {

using reformer::Index;

inline void gemm_product(benchmark::State& state, Index m, Index k, Index n) {
  PeakMeter peak;
  reformer::RowMajorMatrix<float> w = reformer::RowMajorMatrix<float>::Random(m, k);
  reformer::Matrix<float> x = reformer::Matrix<float>::Random(k, n);
  reformer::Matrix<float> out(m, n);
  const WallClock clock = time_iterations(state, [&] {
    reformer::parallel_product(out, w, x, false);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  });
  report(state, clock, double(n), 2.0 * double(m) * double(k) * double(n), peak);
}

inline void gemm_weight_grad(benchmark::State& state, Index m, Index k, Index n) {
  PeakMeter peak;
  reformer::Matrix<float> dy = reformer::Matrix<float>::Random(m, n);
  reformer::Matrix<float> x = reformer::Matrix<float>::Random(k, n);
  reformer::RowMajorMatrix<float> dw = reformer::RowMajorMatrix<float>::Zero(m, k);
  const WallClock clock = time_iterations(state, [&] {
    reformer::linear_weight_grads<float>(dy, x, dw);
    benchmark::DoNotOptimize(dw.data());
    benchmark::ClobberMemory();
  });
  report(state, clock, double(n), 2.0 * double(m) * double(k) * double(n), peak);
}

// The chunk kernel's two forward products for N tokens: N / 64 x 4 x 2 (chunk, head, round)
// pairs of products, in kChunkBlocks blocks run in parallel. As in the LSH sublayer, where each
// work item gathers its chunks into its own small workspace, a block keeps its operands in cache:
// it repeats its products on one (q, k, v) set of its own. With `eigen`, Eigen's GEMM computes
// them; else the kernel's small products (k transposed into kt first, as the kernel does).
//   q: Dh x Cq,  k, v: Dh x Ck,  st = k^T q: Ck x Cq,  o = v st: Dh x Cq   (Dh = Cq = 64, Ck = 128)
inline void gemm_chunk_pairs(benchmark::State& state, Index n, bool eigen) {
  constexpr Index dh = 64, cq = 64, ck = 128, kChunkBlocks = 16;
  const Index pairs_per_block = n / cq * 4 * 2 / kChunkBlocks;
  PeakMeter peak;
  std::vector<reformer::Matrix<float>> q, k, v, kt, st, o;
  for (Index b = 0; b < kChunkBlocks; ++b) {
    q.push_back(reformer::Matrix<float>::Random(dh, cq));
    k.push_back(reformer::Matrix<float>::Random(dh, ck));
    v.push_back(reformer::Matrix<float>::Random(dh, ck));
    kt.emplace_back(ck, dh);
    st.emplace_back(ck, cq);
    o.emplace_back(dh, cq);
  }
  const double flops_per_pair = 2.0 * double(ck * cq * dh) + 2.0 * double(dh * cq * ck);
  const double flops = flops_per_pair * double(pairs_per_block * kChunkBlocks);
  const WallClock clock = time_iterations(state, [&] {
    reformer::parallel_items(kChunkBlocks, flops, [&](Index b) {
      const auto u = static_cast<std::size_t>(b);
      for (Index i = 0; i < pairs_per_block; ++i) {
        if (eigen) {
          st[u].noalias() = k[u].transpose() * q[u];
          o[u].noalias() = v[u] * st[u];
        } else {
          reformer::transpose_small<float>(k[u], kt[u]);
          reformer::small_product<float>(kt[u], q[u], st[u], false);
          reformer::small_product<float>(v[u], st[u], o[u], false);
        }
        benchmark::DoNotOptimize(o[u].data());
      }
    });
    benchmark::ClobberMemory();
  });
  report(state, clock, double(n), flops, peak);
}

/// The GEMM reference measured between another benchmark's iterations: the products proj,
/// ffn_in and ffn_out at N columns (as gemm/...), each timed in back-to-back calls. On a shared
/// host the machine's speed drifts by 10-20% within minutes, so a step's GFLOP/s divided by the
/// gemm/ family's, measured minutes apart, moves by as much; divided by these products', run
/// next to every step, it does not.
class AdjacentGemm {
 public:
  explicit AdjacentGemm(Index n) {
    const Index dims[][2] = {{256, 256}, {1024, 256}, {256, 1024}};  // M x K
    for (const auto& d : dims) {
      Shape s;
      s.w = reformer::RowMajorMatrix<float>::Random(d[0], d[1]);
      s.x = reformer::Matrix<float>::Random(d[1], n);
      s.out = reformer::Matrix<float>::Zero(d[0], n);
      s.flops = 2.0 * double(d[0]) * double(d[1]) * double(n);
      shapes_.push_back(std::move(s));
    }
    for (Shape& s : shapes_) reformer::parallel_product(s.out, s.w, s.x, false);  // warm-up
  }

  /// Times each product kTimedCalls times, after an untimed call (the step before it has
  /// evicted the operands and the packing buffers from the caches).
  void run() {
    for (Shape& s : shapes_) {
      reformer::parallel_product(s.out, s.w, s.x, false);
      for (int call = 0; call < kTimedCalls; ++call) {
        WallClock clock;
        clock.start();
        reformer::parallel_product(s.out, s.w, s.x, false);
        benchmark::DoNotOptimize(s.out.data());
        benchmark::ClobberMemory();
        clock.stop();
        s.seconds += clock.seconds();
        s.calls += 1;
      }
    }
  }

  /// GFLOP/s of the fastest shape over every run so far (NaN before the first).
  double best_gflops() const {
    double best = std::numeric_limits<double>::quiet_NaN();
    for (const Shape& s : shapes_) {
      if (s.calls == 0 || s.seconds <= 0) continue;
      const double rate = s.flops * double(s.calls) / s.seconds / 1e9;
      if (std::isnan(best) || rate > best) best = rate;
    }
    return best;
  }

 private:
  static constexpr int kTimedCalls = 3;
  struct Shape {
    reformer::RowMajorMatrix<float> w;
    reformer::Matrix<float> x, out;
    double flops = 0, seconds = 0;
    int calls = 0;
  };
  std::vector<Shape> shapes_;
};

/// Registers the gemm/... family (see the header comment).
inline void register_gemm_reference(Index n = 4096) {
  struct Shape {
    const char* name;
    Index m, k, n;
    bool weight_grad;
  };
  const Shape shapes[] = {{"proj", 256, 256, n, false},
                          {"ffn_in", 1024, 256, n, false},
                          {"ffn_out", 256, 1024, n, false},
                          {"wgrad", 256, 256, n, true},
                          {"square", 1024, 1024, 1024, false}};
  for (const Shape& s : shapes) {
    const std::string name = std::string("gemm/") + s.name + "/" + std::to_string(s.m) + "x" +
                             std::to_string(s.k) + "x" + std::to_string(s.n);
    benchmark::RegisterBenchmark(name.c_str(),
                                 [s](benchmark::State& st) {
                                   if (s.weight_grad) {
                                     gemm_weight_grad(st, s.m, s.k, s.n);
                                   } else {
                                     gemm_product(st, s.m, s.k, s.n);
                                   }
                                 })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  for (const bool eigen : {false, true}) {
    const std::string name = eigen ? "gemm/chunks_eigen/64x128x64" : "gemm/chunks/64x128x64";
    benchmark::RegisterBenchmark(
        name.c_str(), [n, eigen](benchmark::State& st) { gemm_chunk_pairs(st, n, eigen); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
}

}  // namespace reformer_bench
