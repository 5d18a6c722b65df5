"""Confidence intervals: for success rates (Wilson) and for means of per-episode figures (Student t)."""

from __future__ import annotations

import math


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion; (0, 1) when there are no trials.

    Unlike the normal approximation it stays inside [0, 1] and is honest at 0/N and N/N, which is
    where small robot evaluations usually land.
    """
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # at 0/N and N/N the bound equals p analytically; rounding must not put it a hair past p
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))



def _t_within(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer df: the closed forms of Abramowitz & Stegun 26.7.3-4."""
    theta = math.atan(t / math.sqrt(df))
    c2, total, term = math.cos(theta) ** 2, 1.0, 1.0
    if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), (df-3)/2 terms
        for k in range(1, (df - 1) // 2):
            term *= c2 * 2 * k / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + (math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0))
    for k in range(1, df // 2):  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), (df-2)/2 terms
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return math.sin(theta) * total


def t_quantile(confidence: float, df: int) -> float:
    """t such that P(|T| <= t) = confidence (1.96 as df grows; 12.71 at df=1 for 95%), by bisection."""
    lo, hi = 0.0, 1.0
    while _t_within(hi, df) < confidence:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_within(mid, df) < confidence else (lo, mid)
    return (lo + hi) / 2


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval for the mean of per-episode values (returns, max rewards); None with fewer
    than two values, where the spread is unknown."""
    values = [float(v) for v in values]
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sem = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    half = t_quantile(confidence, n - 1) * sem
    return mean - half, mean + half
