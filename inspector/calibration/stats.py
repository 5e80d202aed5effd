"""Exact (Clopper-Pearson) binomial confidence bounds in numpy: the line PC has no scipy.

The bounds are quantiles of the beta distribution. The regularized incomplete beta function comes from its
continued fraction (modified Lentz), and its inverse from Newton steps kept inside a bisection bracket, all
vectorized so that a whole curve of bounds (one per possible miss count) costs one call.
"""

from __future__ import annotations

import math

import numpy as np

_TINY = 1e-300
_EPS = 1e-15


def _lgamma(x: np.ndarray) -> np.ndarray:
    return np.array([math.lgamma(float(v)) for v in x.ravel()], np.float64).reshape(x.shape)


def _betacf(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The continued fraction of I_x(a, b); converges fast for x < (a + 1) / (a + b + 2)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 - qab * x / qap
    d = 1.0 / np.where(np.abs(d) < _TINY, _TINY, d)
    h = d.copy()
    # Terms needed grow like sqrt(max(a, b)); the cap is generous and the loop stops once every element converged.
    limit = int(50 + 10 * math.sqrt(float(np.max(np.maximum(a, b), initial=1.0))))
    for m in range(1, limit + 1):
        m2 = 2.0 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / np.where(np.abs(d) < _TINY, _TINY, d)
        c = 1.0 + aa / c
        c = np.where(np.abs(c) < _TINY, _TINY, c)
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / np.where(np.abs(d) < _TINY, _TINY, d)
        c = 1.0 + aa / c
        c = np.where(np.abs(c) < _TINY, _TINY, c)
        delta = d * c
        h *= delta
        if np.all(np.abs(delta - 1.0) < _EPS):
            break
    return h


def _log_front(a: np.ndarray, b: np.ndarray, x: np.ndarray, lbeta: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return a * np.log(x) + b * np.log1p(-x) - lbeta


def betainc(a: np.ndarray, b: np.ndarray, x: np.ndarray, lbeta: np.ndarray | None = None) -> np.ndarray:
    """Regularized incomplete beta I_x(a, b), elementwise; a, b > 0 and 0 <= x <= 1."""
    a, b, x = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (a, b, x)))
    if lbeta is None:
        lbeta = _lgamma(a) + _lgamma(b) - _lgamma(a + b)
    inner = (x > 0.0) & (x < 1.0)
    xs = np.where(inner, x, 0.5)
    front = np.exp(_log_front(a, b, xs, lbeta))
    direct = xs < (a + 1.0) / (a + b + 2.0)
    # Use the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges slowly.
    aa, bb, xx = np.where(direct, a, b), np.where(direct, b, a), np.where(direct, xs, 1.0 - xs)
    frac = front * _betacf(aa, bb, xx) / aa
    value = np.where(direct, frac, 1.0 - frac)
    return np.clip(np.where(inner, value, np.where(x >= 1.0, 1.0, 0.0)), 0.0, 1.0)


def beta_ppf(p: np.ndarray | float, a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """The p-quantile of Beta(a, b), elementwise: the x with I_x(a, b) = p."""
    p, a, b = (np.array(v, np.float64) for v in np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (p, a, b))))
    lbeta = _lgamma(a) + _lgamma(b) - _lgamma(a + b)
    lo, hi = np.zeros_like(p), np.ones_like(p)
    x = np.clip(a / (a + b), 1e-12, 1.0 - 1e-12)  # start at the mean
    for _ in range(200):
        f = betainc(a, b, x, lbeta) - p
        lo = np.where(f < 0.0, x, lo)
        hi = np.where(f >= 0.0, x, hi)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            pdf = np.exp((a - 1.0) * np.log(x) + (b - 1.0) * np.log1p(-x) - lbeta)
            step = x - f / pdf
        # A Newton step that leaves the bracket (or is not finite) falls back to bisection.
        bad = ~np.isfinite(step) | (step <= lo) | (step >= hi)
        new = np.where(bad, 0.5 * (lo + hi), step)
        if np.all(np.abs(new - x) <= 1e-15 * np.maximum(1.0, np.abs(x))) or np.all(hi - lo <= 1e-16):
            x = new
            break
        x = new
    return np.where(p <= 0.0, 0.0, np.where(p >= 1.0, 1.0, x))


def lower_bound(successes: np.ndarray | int, n: np.ndarray | int, confidence: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower confidence bound on a proportion: P(p >= bound) >= confidence."""
    k, n = np.broadcast_arrays(np.asarray(successes, np.float64), np.asarray(n, np.float64))
    safe_k = np.maximum(k, 1.0)
    bound = beta_ppf(1.0 - confidence, safe_k, np.maximum(n - k + 1.0, 1.0))
    return np.where(k <= 0.0, 0.0, bound)


def upper_bound(successes: np.ndarray | int, n: np.ndarray | int, confidence: float) -> np.ndarray:
    """One-sided Clopper-Pearson upper confidence bound on a proportion: P(p <= bound) >= confidence."""
    k, n = np.broadcast_arrays(np.asarray(successes, np.float64), np.asarray(n, np.float64))
    bound = beta_ppf(confidence, k + 1.0, np.maximum(n - k, 1.0))
    return np.where(k >= n, 1.0, bound)


def required_samples(target: float, confidence: float) -> int:
    """NG samples needed, all caught, for the lower bound on recall to reach `target`: (1 - c)^(1/n) >= target."""
    if target <= 0.0:
        return 1
    n = max(1, math.ceil(math.log(1.0 - confidence) / math.log(target) - 1e-9))
    while (1.0 - confidence) ** (1.0 / n) < target:
        n += 1
    return n
