"""Small statistics for the ablation reports: mean ± sample std and paired t-intervals (no scipy).

    >>> paired_verdict([0.97, 0.96, 0.95], [0.95, 0.95, 0.95])        # EA-6 vs SA, same seeds
    {'n': 3, 'mean': 0.01, 'lo': -0.0148..., 'hi': 0.0348..., 'verdict': 'tied', ...}

:func:`paired_verdict` takes the per-seed values of a backend and of its reference on the same
seeds, forms the differences d_s = a_s - b_s (or b_s - a_s when lower is better, so a positive
difference always means "a is better"), and returns their mean with the 95% Student-t interval
``mean ± t_{0.975, n-1} s / sqrt(n)`` and a verdict: **ahead** (interval above 0), **tied**
(contains 0), **behind** (below 0); with fewer than 2 pairs there is no interval (``n/a``).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

__all__ = ["mean_std", "t_cdf", "t_quantile", "paired_verdict", "VERDICTS"]

VERDICTS = ("ahead", "tied", "behind", "n/a")


def mean_std(xs: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    n = len(xs)
    if n == 0:
        raise ValueError("mean_std of no values")
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return m, sd


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of :func:`t_cdf` (bisection; |error| < 1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-10:
            break
    return 0.5 * (lo + hi)


def paired_verdict(a: Sequence[float], b: Sequence[float], higher_is_better: bool = True,
                   level: float = 0.95) -> Dict[str, Optional[float]]:
    """Paired comparison of ``a`` against ``b`` (same seeds, same order).

    Returns ``dict(n, mean, std, lo, hi, t, verdict)``: the mean difference (positive = ``a``
    better), its ``level`` Student-t interval and the verdict (ahead / tied / behind / n/a).
    """
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds: {len(a)} vs {len(b)} values")
    d = [(x - y) if higher_is_better else (y - x) for x, y in zip(a, b)]
    n = len(d)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "lo": None, "hi": None, "t": None, "verdict": "n/a"}
    m, sd = mean_std(d)
    if n < 2:
        return {"n": n, "mean": m, "std": None, "lo": None, "hi": None, "t": None, "verdict": "n/a"}
    q = t_quantile(0.5 + level / 2.0, n - 1)
    half = q * sd / math.sqrt(n)
    lo, hi = m - half, m + half
    verdict = "ahead" if lo > 0 else "behind" if hi < 0 else "tied"
    return {"n": n, "mean": m, "std": sd, "lo": lo, "hi": hi, "t": q, "verdict": verdict}
