#pragma once
// Scalar oracles of the feed-forward activations, for tests and benchmarks (the library's own
// forward and backward passes use the vectorised kernels of ops/detail/activation_packets.hpp).
//
// formula::   the activations exactly as Hugging Face writes them, one std:: call per element:
//   gelu(x)      = 0.5 x (1 + erf(x / sqrt 2))           gelu'(x)     = Phi(x) + x phi(x)
//   gelu_new(x)  = 0.5 x (1 + tanh(z)),                  z = sqrt(2/pi) (x + 0.044715 x^3)
//   silu(x)      = x / (1 + exp(-x))                     (HF "silu" = "swish")
// accurate::  the same functions written without cancellation (erfc for the normal tail,
//   sigmoid and 1 - sigmoid from exp(-|w|)); evaluated in long double they are the ground truth
//   of the error tests. Each derivative also reports the sum of the absolute values of its terms
//   (its condition scale), the denominator of a meaningful relative error near its zero.
#include <cmath>

namespace reformer::testing {

namespace formula {
template <class S>
S gelu(S x) {
  const S inv_sqrt2 = S(0.70710678118654752440084436210485L);
  return S(0.5) * x * (S(1) + std::erf(x * inv_sqrt2));
}
template <class S>
S gelu_grad(S x) {
  const S inv_sqrt2 = S(0.70710678118654752440084436210485L);
  const S inv_sqrt2pi = S(0.39894228040143267793994605993438L);
  return S(0.5) * (S(1) + std::erf(x * inv_sqrt2)) + x * inv_sqrt2pi * std::exp(S(-0.5) * x * x);
}
template <class S>
S gelu_new(S x) {
  const S c = S(0.79788456080286535587989211986876L);  // sqrt(2/pi)
  return S(0.5) * x * (S(1) + std::tanh(c * (x + S(0.044715) * x * x * x)));
}
template <class S>
S gelu_new_grad(S x) {
  const S c = S(0.79788456080286535587989211986876L);
  const S t = std::tanh(c * (x + S(0.044715) * x * x * x));
  return S(0.5) * (S(1) + t) + S(0.5) * x * (S(1) - t * t) * c * (S(1) + S(3 * 0.044715) * x * x);
}
template <class S>
S silu(S x) {
  return x / (S(1) + std::exp(-x));
}
template <class S>
S silu_grad(S x) {
  const S s = S(1) / (S(1) + std::exp(-x));
  return s * (S(1) + x * (S(1) - s));
}
}  // namespace formula

namespace accurate {
/// A derivative and the sum of the absolute values of its terms.
template <class S>
struct Grad {
  S value;
  S scale;
};

template <class S>
S normal_cdf(S x) {
  return S(0.5) * std::erfc(-x * S(0.70710678118654752440084436210485L));
}
template <class S>
S normal_pdf(S x) {
  return S(0.39894228040143267793994605993438L) * std::exp(S(-0.5) * x * x);
}
/// sigmoid(w) and 1 - sigmoid(w).
template <class S>
void sigmoid_pair(S w, S& s, S& sc) {
  const S e = std::exp(-std::fabs(w));
  const S r = S(1) / (S(1) + e);
  s = w < 0 ? e * r : r;
  sc = w < 0 ? r : e * r;
}

template <class S>
S gelu(S x) {
  return x * normal_cdf(x);
}
template <class S>
Grad<S> gelu_grad(S x) {
  const S a = normal_cdf(x), b = x * normal_pdf(x);
  return {a + b, std::fabs(a) + std::fabs(b)};
}
template <class S>
S gelu_new_arg(S x) {
  return S(1.5957691216057307117597842397375L) * (x + S(0.044715L) * x * x * x);
}
template <class S>
S gelu_new(S x) {
  S s, sc;
  sigmoid_pair(gelu_new_arg(x), s, sc);
  return x * s;
}
template <class S>
Grad<S> gelu_new_grad(S x) {
  S s, sc;
  sigmoid_pair(gelu_new_arg(x), s, sc);
  const S b =
      x * s * sc * S(1.5957691216057307117597842397375L) * (S(1) + S(3) * S(0.044715L) * x * x);
  return {s + b, std::fabs(s) + std::fabs(b)};
}
template <class S>
S silu(S x) {
  S s, sc;
  sigmoid_pair(x, s, sc);
  return x * s;
}
template <class S>
Grad<S> silu_grad(S x) {
  S s, sc;
  sigmoid_pair(x, s, sc);
  const S b = x * s * sc;
  return {s + b, std::fabs(s) + std::fabs(b)};
}
}  // namespace accurate

}  // namespace reformer::testing
