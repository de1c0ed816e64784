#pragma once
// Logsumexp and softmax along columns or rows of a matrix, and their backward passes.
//
//   *_cols: one distribution per COLUMN (reduce over the rows of each column):
//           lse(n) = log sum_i exp(x(i, n)),      p(i, n) = exp(x(i, n) - lse(n))
//           x, p: M x N;  lse: N
//   *_rows: one distribution per ROW (reduce over the columns of each row):
//           lse(m) = log sum_j exp(x(m, j)),      p(m, j) = exp(x(m, j) - lse(m))
//           x, p: M x N;  lse: M
//
// Stability: the maximum is subtracted before exponentiating, so masked entries such as -1e9
// get probability exactly 0 (exponent arguments below log of the smallest normal number, about
// -708 in double and -87 in float, are flushed to 0 on every instruction set). Entries equal to
// -inf are allowed; a slice that is entirely -inf is an empty distribution: its lse is -inf and its
// probabilities are 0 (so its gradients are 0).
//
// Backward:
//   softmax:   p = softmax(x)   → dx = p .* (dy - sum(p .* dy))   (from the output p)
//   logsumexp: l = lse(x)       → dx = softmax(x) * dl = exp(x - l) * dl
// All outputs are overwritten; p may alias x and dx may alias dy.
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"
#include "reformer/ops/detail/exp_packet.hpp"
#include "reformer/ops/detail/packets.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

namespace reformer {

namespace detail {

/// exp(v) of a packet with v <= 88, every result below the smallest normal number flushed to
/// exactly 0 without passing its argument to exp (see exp_shifted_flushed_sum).
template <class S>
class FlushedExp {
 public:
  using P = Packet<S>;
  FlushedExp()
      : smallest_normal_(Eigen::internal::pset1<P>(std::numeric_limits<S>::min())),
        underflow_(Eigen::internal::pset1<P>(log_smallest_normal())) {}

  P operator()(const P& v) const {
    namespace ei = Eigen::internal;
    const P tiny = ei::pcmp_lt(v, underflow_);                  // exp(v) < smallest normal
    const P e = packet::exp_nonpositive(ei::pandnot(v, tiny));  // exp(+0) in those lanes
    return ei::pandnot(e, ei::por(tiny, ei::pcmp_lt(e, smallest_normal_)));  // -> +0
  }

 private:
  static S log_smallest_normal() {
    static const S value = std::log(std::numeric_limits<S>::min());
    return value;
  }
  P smallest_normal_, underflow_;
};

/// x[i] = exp(x[i] - shift) for i < n, with every result below the smallest normal number
/// flushed to exactly 0 (the arguments below log(smallest normal): about -87 in float, -708 in
/// double); returns the sum of the results. Eigen's vectorised exp clamps very negative
/// arguments and returns a tiny subnormal on some instruction sets (SSE/AVX2), so without the
/// flush masked entries such as -1e9 or -inf would not vanish exactly. Those arguments are not
/// passed to exp at all: computing a subnormal is microcoded on x86 (masked scores made the
/// pass three times slower).
/// x[i] - shift must not exceed 88 (the callers shift by the maximum or the log-sum-exp): the
/// exp is packet::exp_nonpositive (ops/detail/exp_packet.hpp), bitwise Eigen's packet exp there.
/// One pass of that packet exp over every element (the tail too, through a padded packet),
/// so an element's value does not depend on its index or on the alignment of x; the sum adds
/// the packets in order, then their lanes, then the tail's elements in order: the same
/// rounding for the same n wherever x lies.
template <class S>
S exp_shifted_flushed_sum(S* x, Index n, S shift) {
  namespace ei = Eigen::internal;
  using P = Packet<S>;
  constexpr Index k = kPacketSize<S>;
  const P sh = ei::pset1<P>(shift);
  const FlushedExp<S> exp_flushed;
  auto flushed_exp = [&](const P& in) { return exp_flushed(ei::psub(in, sh)); };
  P acc = ei::pzero(sh);
  Index i = 0;
  for (; i + k <= n; i += k) {
    const P e = flushed_exp(ei::ploadu<P>(x + i));
    ei::pstoreu(x + i, e);
    acc = ei::padd(acc, e);
  }
  S sum = ei::predux(acc);
  if (i < n) {
    S buf[k];
    std::fill(buf, buf + k, shift);
    std::copy(x + i, x + n, buf);
    ei::pstoreu(buf, flushed_exp(ei::ploadu<P>(buf)));
    for (Index l = 0; l < n - i; ++l) {
      x[i + l] = buf[l];
      sum += buf[l];
    }
  }
  return sum;
}

/// dst = exp(a), flushed as exp_shifted_flushed_sum (which computes it, after dst = a).
/// `a` is an array expression and may read dst; dst is a vector or a contiguous array.
template <class Dst, class Arg>
void assign_exp(Dst&& dst, const Arg& a) {
  using S = typename std::decay_t<Dst>::Scalar;
  dst = a;
  if (dst.size() == 0) return;
  REFORMER_ASSERT(dst.innerStride() == 1);
  exp_shifted_flushed_sum<S>(&dst.coeffRef(0), dst.size(), S(0));
}

template <class S, class Slice>
S slice_logsumexp(const Slice& v) {
  const S m = v.maxCoeff();
  if (m == -std::numeric_limits<S>::infinity()) return m;
  return m + std::log((v.array() - m).exp().sum());
}

inline void check_softmax_pair(const char* where, const char* name, Index rows, Index cols,
                               const char* ref_name, Index ref_rows, Index ref_cols) {
  if (rows != ref_rows || cols != ref_cols) {
    raise(where, name, " has shape ", rows, " x ", cols, ", expected the shape of ", ref_name,
          " = ", ref_rows, " x ", ref_cols);
  }
}

inline void check_nonempty(const char* where, Index rows, Index cols) {
  REFORMER_REQUIRE(rows > 0 && cols > 0, InvalidArgument, where, "x has shape ", rows, " x ", cols,
                   ", expected a non-empty matrix");
}

/// Shapes of a logsumexp backward: x and dx M x N (non-empty), lse and dlse `reduced` entries.
template <class S>
void check_logsumexp_backward(const char* where, const ConstMatrixRef<S>& x,
                              const ConstVectorRef<S>& lse, const ConstVectorRef<S>& dlse,
                              const MatrixRef<S>& dx, Index reduced) {
  check_nonempty(where, x.rows(), x.cols());
  check_shape(where, "lse", lse.rows(), lse.cols(), reduced, 1);
  check_shape(where, "dlse", dlse.rows(), dlse.cols(), reduced, 1);
  check_softmax_pair(where, "dx", dx.rows(), dx.cols(), "x", x.rows(), x.cols());
}

/// Shapes of a softmax backward: p (the forward output) non-empty, dy and dx shaped like p.
template <class S>
void check_softmax_backward(const char* where, const ConstMatrixRef<S>& p,
                            const ConstMatrixRef<S>& dy, const MatrixRef<S>& dx) {
  check_nonempty(where, p.rows(), p.cols());
  check_softmax_pair(where, "dy", dy.rows(), dy.cols(), "p", p.rows(), p.cols());
  check_softmax_pair(where, "dx", dx.rows(), dx.cols(), "p", p.rows(), p.cols());
}
}  // namespace detail

// ---------------------------------------------------------------- column-wise (per column)

/// lse(n) = log sum_i exp(x(i, n)).  x: M x N, lse: N.
template <class S>
void logsumexp_cols(ConstMatrixRef<S> x, VectorRef<S> lse) {
  detail::check_nonempty("logsumexp_cols", x.rows(), x.cols());
  check_shape("logsumexp_cols", "lse", lse.rows(), lse.cols(), x.cols(), 1);
  for (Index n = 0; n < x.cols(); ++n) lse(n) = detail::slice_logsumexp<S>(x.col(n));
}

/// dx(i, n) = exp(x(i, n) - lse(n)) * dlse(n).  x, dx: M x N; lse, dlse: N (lse from forward).
template <class S>
void logsumexp_cols_backward(ConstMatrixRef<S> x, ConstVectorRef<S> lse, ConstVectorRef<S> dlse,
                             MatrixRef<S> dx) {
  detail::check_logsumexp_backward<S>("logsumexp_cols_backward", x, lse, dlse, dx, x.cols());
  for (Index n = 0; n < x.cols(); ++n) {
    if (lse(n) == -std::numeric_limits<S>::infinity()) {
      dx.col(n).setZero();
    } else {
      detail::assign_exp(dx.col(n).array(), x.col(n).array() - lse(n));
      dx.col(n) *= dlse(n);
    }
  }
}

/// p(:, n) = softmax(x(:, n)).  x, p: M x N (p may alias x).
template <class S>
void softmax_cols(ConstMatrixRef<S> x, MatrixRef<S> p) {
  detail::check_nonempty("softmax_cols", x.rows(), x.cols());
  detail::check_softmax_pair("softmax_cols", "p", p.rows(), p.cols(), "x", x.rows(), x.cols());
  for (Index n = 0; n < x.cols(); ++n) {
    const S lse = detail::slice_logsumexp<S>(x.col(n));
    if (lse == -std::numeric_limits<S>::infinity()) {
      p.col(n).setZero();
    } else {
      detail::assign_exp(p.col(n).array(), x.col(n).array() - lse);
    }
  }
}

/// dx(:, n) = p(:, n) .* (dy(:, n) - p(:, n) . dy(:, n)).  p (forward output), dy, dx: M x N.
template <class S>
void softmax_cols_backward(ConstMatrixRef<S> p, ConstMatrixRef<S> dy, MatrixRef<S> dx) {
  detail::check_softmax_backward<S>("softmax_cols_backward", p, dy, dx);
  for (Index n = 0; n < p.cols(); ++n) {
    const S s = p.col(n).dot(dy.col(n));
    dx.col(n) = p.col(n).cwiseProduct(dy.col(n)) - s * p.col(n);
  }
}

// ---------------------------------------------------------------- row-wise (per row)

/// lse(m) = log sum_j exp(x(m, j)).  x: M x N, lse: M.
template <class S>
void logsumexp_rows(ConstMatrixRef<S> x, VectorRef<S> lse) {
  detail::check_nonempty("logsumexp_rows", x.rows(), x.cols());
  check_shape("logsumexp_rows", "lse", lse.rows(), lse.cols(), x.rows(), 1);
  // Column-major friendly: running max, then a sum of exponentials, column by column.
  constexpr S kNegInf = -std::numeric_limits<S>::infinity();
  const Vector<S> m = x.rowwise().maxCoeff();  // M
  const Vector<S> shift = (m.array() == kNegInf).select(S(0), m.array()).matrix();
  Vector<S> sum = Vector<S>::Zero(x.rows());
  for (Index j = 0; j < x.cols(); ++j) sum.array() += (x.col(j) - shift).array().exp();
  lse = (m.array() == kNegInf).select(kNegInf, shift.array() + sum.array().log()).matrix();
}

/// dx(m, j) = exp(x(m, j) - lse(m)) * dlse(m).  x, dx: M x N; lse, dlse: M (lse from forward).
template <class S>
void logsumexp_rows_backward(ConstMatrixRef<S> x, ConstVectorRef<S> lse, ConstVectorRef<S> dlse,
                             MatrixRef<S> dx) {
  detail::check_logsumexp_backward<S>("logsumexp_rows_backward", x, lse, dlse, dx, x.rows());
  constexpr S kNegInf = -std::numeric_limits<S>::infinity();
  // An empty row (lse = -inf) has x = -inf throughout: shifting by 0 gives exp(-inf) = 0.
  const Vector<S> shift = (lse.array() == kNegInf).select(S(0), lse.array()).matrix();
  for (Index j = 0; j < x.cols(); ++j) {
    detail::assign_exp(dx.col(j).array(), (x.col(j) - shift).array());
    dx.col(j).array() *= dlse.array();
  }
}

/// p(m, :) = softmax(x(m, :)).  x, p: M x N (p may alias x).
template <class S>
void softmax_rows(ConstMatrixRef<S> x, MatrixRef<S> p) {
  detail::check_nonempty("softmax_rows", x.rows(), x.cols());
  detail::check_softmax_pair("softmax_rows", "p", p.rows(), p.cols(), "x", x.rows(), x.cols());
  Vector<S> lse(x.rows());
  logsumexp_rows<S>(x, lse);
  constexpr S kNegInf = -std::numeric_limits<S>::infinity();
  const Vector<S> shift = (lse.array() == kNegInf).select(S(0), lse.array()).matrix();
  for (Index j = 0; j < x.cols(); ++j) {
    detail::assign_exp(p.col(j).array(), (x.col(j) - shift).array());
  }
}

/// dx(m, :) = p(m, :) .* (dy(m, :) - p(m, :) . dy(m, :)).  p (forward output), dy, dx: M x N.
template <class S>
void softmax_rows_backward(ConstMatrixRef<S> p, ConstMatrixRef<S> dy, MatrixRef<S> dx) {
  detail::check_softmax_backward<S>("softmax_rows_backward", p, dy, dx);
  const Vector<S> s = p.cwiseProduct(dy).rowwise().sum();  // M
  for (Index j = 0; j < p.cols(); ++j) {
    dx.col(j) = (p.col(j).array() * (dy.col(j) - s).array()).matrix();
  }
}

}  // namespace reformer
