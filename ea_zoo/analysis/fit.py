"""Curve fits for the sweeps: log-log slopes (scaling exponents) and straight lines."""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

__all__ = ["loglog_slope", "tail_slope", "linear_fit"]


def _clean(xs: Sequence[float], ys: Sequence[float]):
    pts = [(float(x), float(y)) for x, y in zip(xs, ys)
           if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))
           and float(x) > 0 and float(y) > 0]
    return [p[0] for p in pts], [p[1] for p in pts]


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
    """Least-squares slope of log(y) on log(x): y ~ x^slope. None with < 2 usable points.

    Points with y <= 0 or non-finite are dropped. A constant y gives slope 0.
    """
    xs, ys = _clean(xs, ys)
    if len(xs) < 2:
        return None
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    if sxx == 0:
        return None
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx


def tail_slope(xs: Sequence[float], ys: Sequence[float], min_points: int = 2) -> Optional[float]:
    """Asymptotic exponent: the log-log slope over the largest ``ceil(n/2) + 1`` sizes.

    Lower-order terms (e.g. the O(L D) part of an O(L^2 D + L D) cost) bend the curve at
    small sizes; fitting the upper half of the sweep measures the leading term. When every
    y is 0 for all x (nothing grows, e.g. a state that is empty), returns 0.0.
    """
    pairs = sorted((float(x), y) for x, y in zip(xs, ys) if x is not None and y is not None)
    if pairs and all(y == 0 for _, y in pairs):
        return 0.0
    n = len(pairs)
    if n < 2:
        return None
    k = max(min_points, min(n, math.ceil(n / 2) + 1))
    tail = pairs[-k:]
    return loglog_slope([p[0] for p in tail], [p[1] for p in tail])


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> Dict[str, float]:
    """Least squares y = a + b x: returns ``intercept``, ``slope`` and ``r2`` (NaN if undefined)."""
    pts = [(float(x), float(y)) for x, y in zip(xs, ys)
           if x is not None and y is not None and math.isfinite(float(y))]
    nan = float("nan")
    if len(pts) < 2:
        return {"intercept": nan, "slope": nan, "r2": nan}
    n = len(pts)
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return {"intercept": nan, "slope": nan, "r2": nan}
    b = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
    a = my - b * mx
    ss_tot = sum((p[1] - my) ** 2 for p in pts)
    ss_res = sum((p[1] - a - b * p[0]) ** 2 for p in pts)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else nan)
    return {"intercept": a, "slope": b, "r2": r2}
