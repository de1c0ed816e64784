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
// N = 4096 tokens (all columns of one product, as in the unchunked layers).
#include "counters.hpp"
#include "memory.hpp"

#include <benchmark/benchmark.h>
#include <reformer/core/types.hpp>
#include <reformer/ops/linear.hpp>

#include <string>

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
}

}  // namespace reformer_bench
