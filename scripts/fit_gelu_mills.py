#!/usr/bin/env python3
"""Coefficients of the Mills-ratio polynomial behind the vectorised GELU (ops/detail/activation_packets.hpp).

For u >= 0 the upper normal tail is Q(u) = phi(u) M(u), phi(u) = exp(-u^2/2)/sqrt(2 pi), with the
Mills ratio M(u) = Q(u)/phi(u). With s = (u - k)/(u + k), the kernel evaluates
    M(u) = h(s) / (u + k),   h(s) = M(u) (u + k) ~ polynomial in s on [-1, (L - k)/(L + k)],
where L is the clamp of u beyond which Q underflows. This script prints the Chebyshev fit of h
(coefficients of s^n, highest degree first) for float and double; it needs mpmath.

    python3 scripts/fit_gelu_mills.py
"""
import mpmath as mp

mp.mp.dps = 40


def mills(u):
    return mp.erfc(u / mp.sqrt(2)) / 2 / (mp.exp(-u * u / 2) / mp.sqrt(2 * mp.pi))


def fit(k, clamp, terms):
    k = mp.mpf(k)
    s_max = (clamp - k) / (clamp + k)

    def h(s):
        u = k * (1 + s) / (1 - s)
        return mills(u) * (u + k)

    coeffs, err = mp.chebyfit(h, [-1, s_max], terms, error=True)
    return coeffs, err / min(h(-1), h(s_max)), s_max


for name, k, clamp, terms, digits in [("float", 4, 15.0, 11, 10), ("double", 4, 40.0, 24, 21)]:
    coeffs, rel, s_max = fit(k, clamp, terms)
    print(f"{name}: k = {k}, u clamp = {clamp}, s in [-1, {mp.nstr(s_max, 17)}], "
          f"degree {terms - 1}, max relative error of h = {mp.nstr(rel, 3)}")
    print(",\n".join(mp.nstr(c, digits, min_fixed=0, max_fixed=0) for c in coeffs))
