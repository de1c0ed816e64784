#pragma once
// Helpers of the dense-layer tests: deterministic random inputs, layer builders, and the
// sublayer gradient check (input and every parameter slot).
#include "reformer/core/context.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/core/types.hpp"
#include "reformer/layers/feed_forward.hpp"
#include "reformer/layers/full_attention.hpp"
#include "reformer/testing/gradcheck.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

namespace reformer::test {

/// rows x cols matrix of normal(0, scale) draws, a pure function of `seed`.
template <class S = double>
Matrix<S> random_matrix(Index rows, Index cols, std::uint64_t seed, double scale = 1.0) {
  const Rng rng(seed);
  Matrix<S> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) {
    m.data()[i] = static_cast<S>(scale * rng.normal(static_cast<std::uint64_t>(i)));
  }
  return m;
}

/// Fills every parameter with normal(0, scale) draws (biases and LayerNorm included, so their
/// gradients are exercised away from the 1/0 initialisation).
template <class S>
void randomise(Parameters<S>& params, std::uint64_t seed, double scale = 0.5) {
  const Rng rng(seed);
  for (Index i = 0; i < params.size(); ++i) {
    params.values()[i] = static_cast<S>(scale * rng.normal(static_cast<std::uint64_t>(i)));
  }
}

struct AttentionSetup {
  Index hidden = 6, heads = 2, head_size = 3;
  bool causal = true;
  double output_dropout = 0.0, probs_dropout = 0.0;
};

template <class S>
FullAttentionLayerConfig<S> attention_config(const AttentionSetup& s) {
  FullAttentionLayerConfig<S> cfg;
  cfg.hidden_size = s.hidden;
  cfg.core.num_heads = s.heads;
  cfg.core.head_size = s.head_size;
  cfg.core.causal = s.causal;
  cfg.core.dropout = s.probs_dropout;
  cfg.output_dropout = s.output_dropout;
  return cfg;
}

struct FeedForwardSetup {
  Index hidden = 5, ff = 7;
  Activation activation = Activation::kGelu;
  double dropout = 0.0;
  Index chunk = 0;
};

inline FeedForwardConfig feed_forward_config(const FeedForwardSetup& s) {
  FeedForwardConfig cfg;
  cfg.hidden_size = s.hidden;
  cfg.feed_forward_size = s.ff;
  cfg.activation = s.activation;
  cfg.dropout = s.dropout;
  cfg.chunk_size = s.chunk;
  return cfg;
}

/// A layer in double under test: built from `cfg` (slots under `prefix`), every parameter
/// drawn by randomise(params, seed), and an input x of hidden_size x `cols` normal draws from
/// `x_seed`.
template <class Layer>
struct DenseCase {
  Parameters<double> params;
  Layer layer;
  Matrix<double> x;

  DenseCase(const typename Layer::Config& cfg, std::uint64_t seed, Index cols, std::uint64_t x_seed,
            const std::string& prefix = "")
      : layer(cfg, params, prefix), x(random_matrix(layer.hidden_size(), cols, x_seed)) {
    randomise(params, seed);
  }
};

inline Context training_context(Index batch, std::uint64_t step = 3) {
  Context ctx;
  ctx.batch = batch;
  ctx.training = true;
  ctx.seed = 11;
  ctx.step = step;
  ctx.layer = 2;
  return ctx;
}

/// f(x) through forward().
template <class Layer, class S>
Matrix<S> run_forward(const Layer& layer, const Parameters<S>& params, const Matrix<S>& x,
                      const Context& ctx) {
  Matrix<S> y(x.rows(), x.cols());
  layer.forward(params, x, y, ctx);
  return y;
}

/// Results of one backward() call with fresh (zeroed) parameter gradients.
template <class S>
struct BackwardResult {
  Matrix<S> dx, fx;
  Vector<S> grads;
};

template <class Layer, class S>
BackwardResult<S> run_backward(const Layer& layer, Parameters<S>& params, const Matrix<S>& x,
                               const Matrix<S>& dy, const Context& ctx) {
  BackwardResult<S> r;
  r.dx.resize(x.rows(), x.cols());
  r.fx.resize(x.rows(), x.cols());
  params.zero_grad();
  backward_out_of_place(layer, params, x, dy, r.dx, r.fx, ctx);
  r.grads = params.grads();
  return r;
}

/// max |f(x) in training - f(x) in inference|: how much the dropout of `ctx` changes the output.
template <class Layer, class S>
double dropout_effect(const Layer& layer, const Parameters<S>& params, const Matrix<S>& x,
                      const Context& ctx) {
  Context eval = ctx;
  eval.training = false;
  return static_cast<double>(
      (run_forward(layer, params, x, ctx) - run_forward(layer, params, x, eval))
          .cwiseAbs()
          .maxCoeff());
}

/// forward() and backward() of one pass with `threads` worker threads (restored afterwards).
template <class S>
struct ThreadedRun {
  Matrix<S> y;
  BackwardResult<S> back;
};

template <class Layer, class S>
ThreadedRun<S> run_with_threads(int threads, const Layer& layer, Parameters<S>& params,
                                const Matrix<S>& x, const Matrix<S>& dy, const Context& ctx) {
  const int before = num_threads();
  set_num_threads(threads);
  ThreadedRun<S> run;
  run.y = run_forward(layer, params, x, ctx);
  run.back = run_backward(layer, params, x, dy, ctx);
  set_num_threads(before);
  return run;
}

/// Relative errors of a float layer against the same layer in double (same parameters, same
/// input): forward output, input gradient and parameter gradients.
struct FloatErrors {
  double y = 0.0, dx = 0.0, grads = 0.0;
};

template <class LayerF, class LayerD>
FloatErrors float_vs_double(const LayerF& lf, Parameters<float>& pf, const LayerD& ld,
                            Parameters<double>& pd, const Matrix<double>& x,
                            const Matrix<double>& dy, const Context& ctx) {
  const Matrix<float> xf = x.cast<float>();
  const Matrix<float> dyf = dy.cast<float>();
  const Matrix<float> yf = run_forward(lf, pf, xf, ctx);
  const BackwardResult<double> rd = run_backward(ld, pd, x, dy, ctx);
  const BackwardResult<float> rf = run_backward(lf, pf, xf, dyf, ctx);
  FloatErrors e;
  e.y = relative_error(yf.cast<double>(), run_forward(ld, pd, x, ctx));
  e.dx = relative_error(rf.dx.cast<double>(), rd.dx);
  e.grads = relative_error(rf.grads.cast<double>(), rd.grads);
  return e;
}

/// Finite-difference check (testing/gradcheck.hpp) of a sublayer's backward(): the gradient
/// w.r.t. the input x and w.r.t. every parameter slot, relative error < tol.
template <class Layer>
void expect_sublayer_gradients(const Layer& layer, Parameters<double>& params, Matrix<double> x,
                               const Context& ctx, double tol = 1e-6, Index max_coords = 0) {
  testing::GradCheckOptions opts;
  opts.tolerance = tol;
  opts.max_coords = max_coords;  // 0: every coordinate
  auto forward = [&] { return run_forward(layer, params, x, ctx); };
  Matrix<double> dx(x.rows(), x.cols()), fx(x.rows(), x.cols());
  auto backward = [&](const Matrix<double>& w) {
    params.zero_grad();
    backward_out_of_place(layer, params, x, w, dx, fx, ctx);
  };
  testing::GradientChecker check(forward, backward, opts);  // runs backward once
  EXPECT_TRUE(check(x, dx, "x")) << check.last();
  for (SlotId id = 0; id < params.num_slots(); ++id) {
    EXPECT_TRUE(check(params.value(id), params.grad(id), params.slot(id).name)) << check.last();
  }
}

}  // namespace reformer::test
