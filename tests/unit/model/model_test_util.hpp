#pragma once
// Helpers of the model test suite: a toy sublayer for the reversible block, random matrices,
// the gradient-check metric (finite differences come from support/finite_differences.hpp).
#include "reformer/core/context.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"

#include "support/finite_differences.hpp"

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <string>

namespace reformer::test {

/// A toy sublayer f(x) = tanh(W x + b) (D x D weight) honouring the sublayer contract, so the
/// reversible block is tested independently of the attention and feed-forward layers.
template <class S>
class TanhSublayer {
 public:
  TanhSublayer(Index d, Parameters<S>& params, const std::string& prefix)
      : d_(d), w_(params.add(prefix + "weight", {d, d})), b_(params.add(prefix + "bias", {d})) {}

  void init(Parameters<S>& params, const Rng& rng, double std) const {
    auto w = params.value_vector(w_);
    for (Index i = 0; i < w.size(); ++i) w[i] = static_cast<S>(std * rng.normal(i));
    auto b = params.value_vector(b_);
    for (Index i = 0; i < b.size(); ++i) b[i] = static_cast<S>(0.1 * rng.derive(1).normal(i));
  }

  void forward(const Parameters<S>& p, ConstMatrixRef<S> x, MatrixRef<S> y, const Context&) const {
    y.noalias() = p.value(w_) * x;
    y.colwise() += p.value_vector(b_);
    y = y.array().tanh().matrix();
  }

  // y = tanh(z), z = W x + b  =>  dz = dy .* (1 - y^2), dx += W^T dz, dW += dz x^T, db += sum dz;
  // the contract's in-place form: y_sub -= f(x).
  void backward(Parameters<S>& p, ConstMatrixRef<S> x, ConstMatrixRef<S> dy, MatrixRef<S> dx,
                MatrixRef<S> y_sub, const Context& ctx) const {
    Matrix<S> fx(x.rows(), x.cols());
    forward(p, x, fx, ctx);
    const Matrix<S> dz = dy.cwiseProduct((S(1) - fx.array().square()).matrix());
    dx.noalias() += p.value(w_).transpose() * dz;
    p.grad(w_).noalias() += dz * x.transpose();
    p.grad_vector(b_) += dz.rowwise().sum();
    y_sub -= fx;
  }

 private:
  Index d_;
  SlotId w_, b_;
};

/// A matrix of standard normal draws.
template <class S>
Matrix<S> random_matrix(Index rows, Index cols, std::uint64_t seed, double scale = 1.0) {
  Matrix<S> m(rows, cols);
  const Rng rng(seed);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<S>(scale * rng.normal(i));
  return m;
}

/// |g - g_fd| / |g + g_fd| over whole vectors (the quality bar's gradient-check metric).
template <class A, class B>
double gradient_error(const Eigen::MatrixBase<A>& g, const Eigen::MatrixBase<B>& g_fd) {
  const double denom = (g + g_fd).norm();
  return denom == 0.0 ? 0.0 : (g - g_fd).norm() / denom;
}

}  // namespace reformer::test

#include "reformer/core/error.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/model/config.hpp"
#include "reformer/ops/tokens.hpp"
#include "support/config.hpp"

#include <functional>
#include <vector>

namespace reformer::test {

/// The message of the InvalidArgument `fn` throws ("no InvalidArgument" when it throws none).
inline std::string message_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "no InvalidArgument";
}

/// Restores the library's thread count when the scope ends.
class ThreadCountGuard {
 public:
  ThreadCountGuard() : saved_(num_threads()) {}
  ~ThreadCountGuard() { set_num_threads(saved_); }
  ThreadCountGuard(const ThreadCountGuard&) = delete;
  ThreadCountGuard& operator=(const ThreadCountGuard&) = delete;

 private:
  int saved_;
};

/// A tiny model mixing the three layer kinds: R = 2 hash rounds, chunk lengths 4 (LSH) and 3
/// (local), and axial positions covering 12 tokens, so T = 10 is a multiple of neither chunk.
inline ReformerConfig tiny_config() {
  ReformerConfig c = SmallConfig()
                         .vocab(11)
                         .heads(2, 3)
                         .feed_forward(10, "gelu")
                         .layers({"lsh", "local", "full"})
                         .chunk_lengths(4, 3)
                         .lsh_hashing({4}, /*rounds=*/2)
                         .axial_positions({3, 4}, {3, 5})
                         .seed(1234);
  c.chunk_size_feed_forward = 3;
  c.chunk_size_lm_head = 7;
  c.initializer_range = 0.3;
  c.axial_norm_std = 0.3;
  return c;
}

/// `batch * length` token ids drawn uniformly from [0, vocab).
inline std::vector<Token> random_tokens(Index batch, Index length, Index vocab,
                                        std::uint64_t seed) {
  std::vector<Token> t(static_cast<std::size_t>(batch * length));
  const Rng rng(seed);
  for (std::size_t i = 0; i < t.size(); ++i) {
    t[i] = static_cast<Token>(rng.below(i, static_cast<std::uint64_t>(vocab)));
  }
  return t;
}

}  // namespace reformer::test
