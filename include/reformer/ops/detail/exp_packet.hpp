#pragma once
// exp of a packet of non-positive arguments, for the kernels that only need exp(x) with x <= 0
// (the softmax's shifted scores, exp(-u^2/4) of the GELU, exp(-|w|/2) of the sigmoid).
//
// Eigen's pexp for float reduces x = m ln 2 + r (m = floor(x log2(e) + 1/2)), evaluates the
// Cephes polynomial of exp(r) and scales by 2^m with a general ldexp that splits 2^m into four
// factors so that no intermediate overflows for any m. With x <= 0 the scale 2^m is a normal
// float down to m = -126 (x >= -87.6), so a single multiplication by 2^m, built from its
// exponent bits, gives exactly the same product: the result is bitwise Eigen's pexp there. About
// a third fewer instructions per packet.
//
//   x in [-87.6, 88]:  bitwise Eigen's pexp (m in [-126, 127]: both round only in the last
//                      multiplication, which is exact unless the result is subnormal, and then
//                      both round the same exact product)
//   x < -87.6:         exp(x) is below the smallest normal float, and so are both results
//                      (0 from x = -87.7 down, m < -126); the callers flush or square them to 0
//   x > 88:            not supported (inf from x = 88.03, where pexp is finite up to 88.72); the
//                      callers' arguments are shifted by a maximum and are <= 0 up to rounding
//   NaN:               NaN
// This applies to the float packets whose exp is Eigen's generic one (SSE, AVX / AVX2, NEON).
// AVX-512 has its own float exp in Eigen, which already scales by 2^m in one multiplication (with
// a different reduction): there, as for double packets and for scalars when Eigen does not
// vectorise, exp_nonpositive is Eigen's pexp itself.
// tests/unit/ops/exp_packet_test.cpp checks all of this against pexp.
#include <Eigen/Core>
#include <type_traits>

namespace reformer::detail::packet {

/// exp(x) for x <= 0 (see the file comment).
template <class P>
P exp_nonpositive(const P& x) {
  namespace ei = Eigen::internal;
  using S = typename ei::unpacket_traits<P>::type;
  constexpr int kLanes = ei::unpacket_traits<P>::size;
  if constexpr (!std::is_same_v<S, float> || kLanes == 1 || kLanes == 16) {
    return ei::pexp(x);  // double, scalars, and AVX-512, whose own float exp scales this way
  } else {
    // The reduction and the polynomial of Eigen's pexp for float (Cephes expf).
    const P xc = ei::pmax(ei::pmin(x, ei::pset1<P>(88.723f)), ei::pset1<P>(-88.723f));
    const P m = ei::pfloor(ei::pmadd(xc, ei::pset1<P>(1.44269504088896341f), ei::pset1<P>(0.5f)));
    P r = ei::pmadd(m, ei::pset1<P>(-0.693359375f), xc);  // r = x - m ln 2, in two parts
    r = ei::pmadd(m, ei::pset1<P>(2.12194440e-4f), r);
    const P r2 = ei::pmul(r, r);
    const P r3 = ei::pmul(r2, r);
    P y = ei::pmadd(ei::pset1<P>(1.9875691500e-4f), r, ei::pset1<P>(1.3981999507e-3f));
    P y1 = ei::pmadd(ei::pset1<P>(4.1665795894e-2f), r, ei::pset1<P>(1.6666665459e-1f));
    const P y2 = ei::padd(r, ei::pset1<P>(1.0f));
    y = ei::pmadd(y, r, ei::pset1<P>(8.3334519073e-3f));
    y1 = ei::pmadd(y1, r, ei::pset1<P>(5.0000001201e-1f));
    y = ei::pmadd(y, r3, y1);
    y = ei::pmadd(y, r2, y2);  // exp(r)
    // exp(x) = exp(r) 2^m, with 2^m from its biased exponent m + 127 (0, i.e. a zero scale,
    // for m < -126).
    return ei::pmax(ei::pldexp_fast_impl<P>::run(y, m), x);
  }
}

}  // namespace reformer::detail::packet
