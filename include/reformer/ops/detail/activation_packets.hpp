#pragma once
// Vectorised kernels of the smooth feed-forward activations, written on Eigen's packet math so
// the same code runs on AVX-512 / AVX2 / SSE / NEON packets of float or double (and on plain
// scalars when Eigen does not vectorise). Each kernel maps one packet of x to one packet of
// results and is a pure function of each lane: an element's result does not depend on its
// position, on the matrix shape or on the thread that computes it.
//
// GELU, exact erf form. With u = |x| and the upper normal tail Q(u) = 1 - Phi(u):
//   Q(u)   = phi(u) M(u)                     phi(u) = exp(-u^2/2) / sqrt(2 pi)
//   M(u)   = h(s) / (u + k),  s = (u - k) / (u + k) in [-1, 1)     (M: the Mills ratio)
// h is a Chebyshev fit of M(u) (u + k) on u in [0, L] (scripts/fit_gelu_mills.py): degree 23
// for double, 10 for float, k = 4, fit error < 5e-18 (double) / 4e-9 (float) relative. Then
//   gelu(x)  = x (1 - Q(u))                  x >= 0
//            = -u Q(u)                       x < 0
//   gelu'(x) = 1 - phi(u) (M(u) - u)         x >= 0
//            = phi(u) (M(u) - u)             x < 0
// so no branch subtracts nearly equal numbers and the far negative tail keeps its relative
// accuracy. u^2 is split exactly into u2 + lo with an FMA, and exp(-u^2/2) is computed as
// exp(-u2/4)^2 (1 - lo/2), which keeps Eigen's exp inside its unclamped range.
//
// No kernel computes on subnormal numbers, which x86 runs through microcode (8-24x the cost of
// an element, docs/benchmarks.md). Beyond the point U where the smallest piece (Q(u) for GELU,
// exp(-|w|) for the sigmoid) would fall below the smallest normal number (U = 12.9 float / 37.5
// double for u; 87 / 708 for |w|), the pieces are computed at U and the results are the limits: x
// and 1 for large x; -0 and -0 (GELU) or -0 and 0 (the sigmoid-based kernels) for large -x. The
// exact results there are below 2^-115 (float) / 2^-1000 (double) in magnitude.
//
// gelu_new (tanh form) and silu are x sigmoid(w) with w = 2 sqrt(2/pi) (x + 0.044715 x^3)
// resp. w = x (0.5 (1 + tanh(z)) = sigmoid(2 z)); sigmoid and 1 - sigmoid both come from
// e = exp(-|w|/2)^2 without cancellation. x is clamped to +-B (beyond which sigmoid is exactly
// 0 or 1) so that +-inf and huge inputs give the limits instead of inf * 0.
//
// Special values, all kernels: NaN -> NaN; +inf -> (inf, 1); -inf -> (-0, 0) for (value,
// derivative); -0 -> -0.
#include "reformer/core/types.hpp"
#include "reformer/ops/detail/exp_packet.hpp"
#include "reformer/ops/detail/packets.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <type_traits>

namespace reformer::detail {

/// The Mills-ratio polynomial h(s) of the GELU kernel (coefficients of s^n, highest first).
template <class S>
struct MillsPolynomial;

template <>
struct MillsPolynomial<float> {
  static constexpr float kShift = 4.0f;    // k
  static constexpr float kNormal = 12.9f;  // U: Q(U) = 2.3e-38, just above the smallest normal
  static constexpr int kTerms = 11;
  static constexpr float kCoeff[kTerms] = {-1.292332145e-4f, -5.810331212e-4f, 4.287703259e-4f,
                                           4.123953209e-3f,  -8.746421343e-3f, -1.891318277e-2f,
                                           1.513941642e-1f,  -4.675395178e-1f, 9.704094728e-1f,
                                           -1.523770954f,    1.893219064f};
};

template <>
struct MillsPolynomial<double> {
  static constexpr double kShift = 4.0;    // k
  static constexpr double kNormal = 37.5;  // U: Q(U) = 4.6e-308, just above the smallest normal
  static constexpr int kTerms = 24;
  static constexpr double kCoeff[kTerms] = {
      -1.81170943151918010695e-9, -6.29507839120766020242e-9, 4.8069491742526906527e-9,
      4.90991514480143915937e-8,  3.32406289869201772753e-8,  -2.13990639065689508799e-7,
      -3.8834473055309762105e-7,  6.81253926159499651254e-7,  2.56057217165102120582e-6,
      -1.57839796567984527163e-6, -1.48396308245829328577e-5, 1.79641560806717675426e-6,
      8.80946502721936315087e-5,  -4.7832958965161230886e-6,  -5.79269096015852452041e-4,
      3.34244624122159155956e-4,  4.08785565628378037726e-3,  -8.72229527517489398393e-3,
      -1.89004508600395094353e-2, 1.51391762312493154899e-1,  -4.67540962998384718288e-1,
      9.70409554867587387504e-1,  -1.5237709108199829523,     1.89321906330848536495};
};

/// Clamps of x for the sigmoid-based kernels, beyond which the sigmoid is exactly 0 or 1 (so
/// that +-inf gives the limits), and the largest |w| whose exp(-|w|) is a normal number.
template <class S>
struct SigmoidClamp;
template <>
struct SigmoidClamp<float> {
  static constexpr float kSilu = 110.0f;    // exp(-110) underflows to 0 in float
  static constexpr float kGeluNew = 16.0f;  // w(16) = 318
  static constexpr float kNormal = 87.0f;   // exp(-87) = 1.6e-38
};
template <>
struct SigmoidClamp<double> {
  static constexpr double kSilu = 750.0;    // exp(-750) underflows to 0 in double
  static constexpr double kGeluNew = 30.0;  // w(30) = 1974
  static constexpr double kNormal = 708.0;  // exp(-708) = 3.3e-308
};

namespace packet {
namespace ei = Eigen::internal;

template <class P>
P constant(double c) {
  using S = typename ei::unpacket_traits<P>::type;
  return ei::pset1<P>(static_cast<S>(c));
}

/// exp(x) for x <= 0, with x taken as at most -2^-30 (float) / -2^-60 (double): exp rounds to
/// exactly 1 there either way, and the powers of a smaller |x| in exp's polynomial would be
/// subnormal.
template <class P>
P exp_kernel(const P& x) {
  using S = typename ei::unpacket_traits<P>::type;
  constexpr double kSmallest = std::is_same_v<S, float> ? 0x1p-30 : 0x1p-60;
  return exp_nonpositive(ei::pmin(x, constant<P>(-kSmallest)));
}

/// NaN lanes of x are passed through unchanged; other lanes take r.
template <class P>
P keep_nan(const P& x, const P& r) {
  return ei::pselect(ei::pcmp_eq(x, x), r, x);
}

/// The pieces of GELU at uc = min(|x|, U): uc, phi(uc), the Mills ratio M(uc), and the lanes
/// beyond U (`far`: all bits set), whose results are the limits.
template <class P>
struct NormalTail {
  P uc, phi, mills, far;
};

template <class P>
NormalTail<P> normal_tail(const P& x) {
  using S = typename ei::unpacket_traits<P>::type;
  using C = MillsPolynomial<S>;
  NormalTail<P> t;
  const P u = ei::pabs(x);
  t.far = ei::pcmp_lt(ei::pset1<P>(C::kNormal), u);
  t.uc = ei::pmin(u, ei::pset1<P>(C::kNormal));
  // exp(-u^2/2) with u^2 = u2 + lo exactly (lo = 0 without FMA hardware); e lo / 2, which can
  // be subnormal, stays inside the FMA.
  const P u2 = ei::pmul(t.uc, t.uc);
  const P lo = ei::pmadd(t.uc, t.uc, ei::pnegate(u2));
  const P half = exp_kernel(ei::pmul(u2, constant<P>(-0.25)));
  P e = ei::pmul(half, half);
  e = ei::pmadd(e, ei::pmul(lo, constant<P>(-0.5)), e);
  t.phi = ei::pmul(e, constant<P>(0.39894228040143267793994605993438));  // 1/sqrt(2 pi)
  // M(u) = h(s) / (u + k), s = (u - k) / (u + k).
  const P k = ei::pset1<P>(C::kShift);
  const P r = ei::pdiv(ei::pset1<P>(S(1)), ei::padd(t.uc, k));
  const P s = ei::pmul(ei::psub(t.uc, k), r);
  P h = ei::pset1<P>(C::kCoeff[0]);
  for (int i = 1; i < C::kTerms; ++i) h = ei::pmadd(h, s, ei::pset1<P>(C::kCoeff[i]));
  t.mills = ei::pmul(h, r);
  return t;
}

/// gelu(x) = x Phi(x), from the normal tail t of x.
template <class P>
P gelu_value(const P& x, const NormalTail<P>& t) {
  const P q = ei::pmul(t.phi, t.mills);  // Q(u); beyond U, 1 - q rounds to 1
  const P neg = ei::pcmp_lt(x, ei::pzero(x));
  const P below = ei::pselect(t.far, constant<P>(-0.0), ei::pnegate(ei::pmul(t.uc, q)));
  const P r = ei::pselect(neg, below, ei::pmul(x, ei::psub(constant<P>(1.0), q)));
  return keep_nan(x, r);
}

/// gelu'(x) = Phi(x) + x phi(x), from the normal tail t of x.
template <class P>
P gelu_derivative(const P& x, const NormalTail<P>& t) {
  const P w = ei::pselect(t.far, constant<P>(-0.0), ei::pmul(t.phi, ei::psub(t.mills, t.uc)));
  const P neg = ei::pcmp_lt(x, ei::pzero(x));
  return keep_nan(x, ei::pselect(neg, w, ei::psub(constant<P>(1.0), w)));
}

template <class P>
P gelu(const P& x) {
  return gelu_value(x, normal_tail(x));
}

template <class P>
P gelu_grad(const P& x) {
  return gelu_derivative(x, normal_tail(x));
}

/// value = gelu(x) and grad = gelu'(x) from one normal_tail evaluation.
template <class P>
void gelu_with_grad(const P& x, P& value, P& grad) {
  const NormalTail<P> t = normal_tail(x);
  value = gelu_value(x, t);
  grad = gelu_derivative(x, t);
}

/// sigmoid(w) and 1 - sigmoid(w), each to a few ulp relative; beyond |w| = kNormal the
/// smaller one is 0.
template <class P>
void sigmoid_pair(const P& w, P& s, P& sc) {
  using S = typename ei::unpacket_traits<P>::type;
  const P a = ei::pabs(w);
  const P bound = ei::pset1<P>(SigmoidClamp<S>::kNormal);
  const P half = exp_kernel(ei::pmul(ei::pmin(a, bound), constant<P>(-0.5)));
  const P e = ei::pselect(ei::pcmp_lt(bound, a), ei::pzero(a), ei::pmul(half, half));  // exp(-|w|)
  const P r = ei::pdiv(constant<P>(1.0), ei::padd(constant<P>(1.0), e));
  const P er = ei::pmul(e, r);
  const P neg = ei::pcmp_lt(w, ei::pzero(w));
  s = ei::pselect(neg, er, r);
  sc = ei::pselect(neg, r, er);
}

template <class P>
P clamp(const P& x, double bound) {
  return ei::pmin(ei::pmax(x, constant<P>(-bound)), constant<P>(bound));
}

/// x for the value x sigmoid(.): x itself above 0 (so +inf stays inf), the clamp below.
template <class P>
P factor(const P& x, const P& xc) {
  return ei::pselect(ei::pcmp_lt(x, ei::pzero(x)), xc, x);
}

/// x clamped to the kernel's bound (xc) and the sigmoid pair (s, sc) of its argument.
template <class P>
struct SigmoidOf {
  P xc, s, sc;
};

/// x sigmoid(w): the value of silu and gelu_new.
template <class P>
P sigmoid_value(const P& x, const SigmoidOf<P>& g) {
  return keep_nan(x, ei::pmul(factor(x, g.xc), g.s));
}

/// silu: w = x.
template <class P>
SigmoidOf<P> silu_sigmoid(const P& x) {
  using S = typename ei::unpacket_traits<P>::type;
  SigmoidOf<P> g;
  g.xc = clamp(x, SigmoidClamp<S>::kSilu);
  sigmoid_pair(g.xc, g.s, g.sc);
  return g;
}

/// silu'(x) = s (1 + x (1 - s)), s = sigmoid(x).
template <class P>
P silu_derivative(const P& x, const SigmoidOf<P>& g) {
  return keep_nan(x, ei::pmadd(ei::pmul(g.s, g.xc), g.sc, g.s));
}

/// silu(x) = x sigmoid(x).
template <class P>
P silu(const P& x) {
  return sigmoid_value(x, silu_sigmoid(x));
}

template <class P>
P silu_grad(const P& x) {
  return silu_derivative(x, silu_sigmoid(x));
}

/// value = silu(x) and grad = silu'(x) from one sigmoid evaluation.
template <class P>
void silu_with_grad(const P& x, P& value, P& grad) {
  const SigmoidOf<P> g = silu_sigmoid(x);
  value = sigmoid_value(x, g);
  grad = silu_derivative(x, g);
}

inline constexpr double kGeluNewTwoC = 1.5957691216057307117597842397375;  // 2 sqrt(2/pi)
inline constexpr double kGeluNewA = 0.044715;

/// gelu_new: w = 2 sqrt(2/pi) (x + 0.044715 x^3), so gelu_new(x) = x sigmoid(w).
template <class P>
SigmoidOf<P> gelu_new_sigmoid(const P& x) {
  using S = typename ei::unpacket_traits<P>::type;
  SigmoidOf<P> g;
  g.xc = clamp(x, SigmoidClamp<S>::kGeluNew);
  const P w = ei::pmul(g.xc, ei::pmadd(ei::pmul(g.xc, g.xc), constant<P>(kGeluNewTwoC * kGeluNewA),
                                       constant<P>(kGeluNewTwoC)));
  sigmoid_pair(w, g.s, g.sc);
  return g;
}

/// gelu_new'(x) = s (1 + x (1 - s) w'(x)),  w'(x) = 2 sqrt(2/pi) (1 + 3 * 0.044715 x^2).
template <class P>
P gelu_new_derivative(const P& x, const SigmoidOf<P>& g) {
  const P dw = ei::pmadd(ei::pmul(g.xc, g.xc), constant<P>(kGeluNewTwoC * (3 * kGeluNewA)),
                         constant<P>(kGeluNewTwoC));  // w'(x)
  return keep_nan(x, ei::pmadd(ei::pmul(ei::pmul(g.s, g.xc), g.sc), dw, g.s));
}

/// gelu_new(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
template <class P>
P gelu_new(const P& x) {
  return sigmoid_value(x, gelu_new_sigmoid(x));
}

template <class P>
P gelu_new_grad(const P& x) {
  return gelu_new_derivative(x, gelu_new_sigmoid(x));
}

/// value = gelu_new(x) and grad = gelu_new'(x) from one sigmoid evaluation.
template <class P>
void gelu_new_with_grad(const P& x, P& value, P& grad) {
  const SigmoidOf<P> g = gelu_new_sigmoid(x);
  value = sigmoid_value(x, g);
  grad = gelu_new_derivative(x, g);
}
}  // namespace packet

// Every packet goes through one compiled copy of the packet code. The loops over whole packets
// (map_whole_packets*) are neither inlined nor cloned (REFORMER_SINGLE_COPY), and the last
// partial packet is copied into a zero-padded buffer that runs through the same loop. Copies
// of the packet code compiled separately (a loop body and a tail, or one inlined copy per
// caller) need not agree bitwise: the compiler may contract a multiply and an add into an FMA
// in one copy and not in another, which was seen to change the last bits of the tail's
// elements. With one copy, an element's result depends on its input alone, whatever its
// position, the matrix's stride or the caller.
#if defined(__GNUC__) && !defined(__clang__)
#define REFORMER_SINGLE_COPY __attribute__((noipa))
#else
#define REFORMER_SINGLE_COPY __attribute__((noinline))
#endif

/// y[j] = f(x[j]) for the `packets` whole packets at x and y. y may equal x.
template <class S, class F>
REFORMER_SINGLE_COPY void map_whole_packets(const S* x, S* y, Index packets, F f) {
  namespace ei = Eigen::internal;
  using P = Packet<S>;
  constexpr Index k = kPacketSize<S>;
  for (Index i = 0; i < packets * k; i += k) ei::pstoreu(y + i, f(ei::ploadu<P>(x + i)));
}

/// dx[j] = f'(x[j]) dy[j] for whole packets. dx may equal dy.
template <class S, class F>
REFORMER_SINGLE_COPY void map_whole_packets_grad(const S* x, const S* dy, S* dx, Index packets,
                                                 F fprime) {
  namespace ei = Eigen::internal;
  using P = Packet<S>;
  constexpr Index k = kPacketSize<S>;
  for (Index i = 0; i < packets * k; i += k) {
    ei::pstoreu(dx + i, ei::pmul(fprime(ei::ploadu<P>(x + i)), ei::ploadu<P>(dy + i)));
  }
}

/// y[j] = f(x[j]), d[j] = f'(x[j]) for whole packets (f(p, value, grad) gives both). Either y
/// or d (not both) may equal x.
template <class S, class F>
REFORMER_SINGLE_COPY void map_whole_packets_with_grad(const S* x, S* y, S* d, Index packets, F f) {
  namespace ei = Eigen::internal;
  using P = Packet<S>;
  constexpr Index k = kPacketSize<S>;
  P value, grad;
  for (Index i = 0; i < packets * k; i += k) {
    f(ei::ploadu<P>(x + i), value, grad);
    ei::pstoreu(y + i, value);
    ei::pstoreu(d + i, grad);
  }
}

/// y[i] = f(x[i]) for i < n, one packet at a time (the last partial packet zero-padded). y may
/// equal x.
template <class S, class F>
void map_packets(const S* x, S* y, Index n, F f) {
  constexpr Index k = kPacketSize<S>;
  const Index whole = n / k, i = whole * k;
  map_whole_packets<S>(x, y, whole, f);
  if (i < n) {
    S xb[k] = {};
    S yb[k];
    std::copy(x + i, x + n, xb);
    map_whole_packets<S>(xb, yb, 1, f);
    std::copy(yb, yb + (n - i), y + i);
  }
}

/// dx[i] = f'(x[i]) dy[i] for i < n, as map_packets. dx may equal dy.
template <class S, class F>
void map_packets_grad(const S* x, const S* dy, S* dx, Index n, F fprime) {
  constexpr Index k = kPacketSize<S>;
  const Index whole = n / k, i = whole * k;
  map_whole_packets_grad<S>(x, dy, dx, whole, fprime);
  if (i < n) {
    S xb[k] = {};
    S dyb[k] = {};
    S dxb[k];
    std::copy(x + i, x + n, xb);
    std::copy(dy + i, dy + n, dyb);
    map_whole_packets_grad<S>(xb, dyb, dxb, 1, fprime);
    std::copy(dxb, dxb + (n - i), dx + i);
  }
}

/// y[i] = f(x[i]) and d[i] = f'(x[i]) for i < n, where f(p, value, grad) gives both for one
/// packet; as map_packets. Either y or d (not both) may equal x.
template <class S, class F>
void map_packets_with_grad(const S* x, S* y, S* d, Index n, F f) {
  constexpr Index k = kPacketSize<S>;
  const Index whole = n / k, i = whole * k;
  map_whole_packets_with_grad<S>(x, y, d, whole, f);
  if (i < n) {
    S xb[k] = {};
    S yb[k], db[k];
    std::copy(x + i, x + n, xb);
    map_whole_packets_with_grad<S>(xb, yb, db, 1, f);
    std::copy(yb, yb + (n - i), y + i);
    std::copy(db, db + (n - i), d + i);
  }
}

/// y = f(x) element-wise over column-major matrices of the same shape (strided columns
/// allowed; a single pass when both are contiguous).
template <class S, class F>
void map_elementwise(ConstMatrixRef<S> x, MatrixRef<S> y, F f) {
  if (x.outerStride() == x.rows() && y.outerStride() == y.rows()) {
    map_packets<S>(x.data(), y.data(), x.size(), f);
    return;
  }
  for (Index c = 0; c < x.cols(); ++c)
    map_packets<S>(&x.coeffRef(0, c), &y.coeffRef(0, c), x.rows(), f);
}

/// dx = f'(x) .* dy element-wise, as map_elementwise.
template <class S, class F>
void map_elementwise_grad(ConstMatrixRef<S> x, ConstMatrixRef<S> dy, MatrixRef<S> dx, F fprime) {
  if (x.outerStride() == x.rows() && dy.outerStride() == dy.rows() &&
      dx.outerStride() == dx.rows()) {
    map_packets_grad<S>(x.data(), dy.data(), dx.data(), x.size(), fprime);
    return;
  }
  for (Index c = 0; c < x.cols(); ++c) {
    map_packets_grad<S>(&x.coeffRef(0, c), &dy.coeffRef(0, c), &dx.coeffRef(0, c), x.rows(),
                        fprime);
  }
}

/// y = f(x) and d = f'(x) element-wise, as map_elementwise (f as in map_packets_with_grad).
template <class S, class F>
void map_elementwise_with_grad(ConstMatrixRef<S> x, MatrixRef<S> y, MatrixRef<S> d, F f) {
  if (x.outerStride() == x.rows() && y.outerStride() == y.rows() && d.outerStride() == d.rows()) {
    map_packets_with_grad<S>(x.data(), y.data(), d.data(), x.size(), f);
    return;
  }
  for (Index c = 0; c < x.cols(); ++c) {
    map_packets_with_grad<S>(&x.coeffRef(0, c), &y.coeffRef(0, c), &d.coeffRef(0, c), x.rows(), f);
  }
}

}  // namespace reformer::detail
