"""Confidence intervals for benchmark scores: percentile bootstrap, alone and paired.

Per-item scores ``x_1 .. x_n`` (1/0 pass, or a reward) of one model on one benchmark:

* :func:`bootstrap_ci`: the mean ``x̄`` and the percentile-bootstrap interval
  ``[q_{α/2}, q_{1-α/2}]`` of the means of ``B`` resamples of the items with replacement
  (Efron & Tibshirani 1993, "An Introduction to the Bootstrap", ch. 13).
* :func:`paired_bootstrap`: two models scored on the *same* items, ``d_i = a_i - b_i``; the mean
  difference with its percentile interval over resampled items (both models see the same
  resample, so item difficulty cancels: a much tighter interval than two independent ones), and
  the two-sided bootstrap p-value ``2 * min(P*(d̄* <= 0), P*(d̄* >= 0))`` (capped at 1).

Every resample is drawn from ``numpy.random.default_rng(seed)``: the same inputs and seed give
the same interval. NaN items (an item a model could not be scored on) are an error: pair and
filter first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from toolrl_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate with its ``level`` confidence interval over ``n`` items."""

    estimate: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """``"61.5 [55.0, 68.0]"`` (scaled, e.g. to percent)."""
        e, lo, hi = (scale * v for v in (self.estimate, self.low, self.high))
        return f"{e:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


@dataclasses.dataclass(frozen=True)
class PairedDifference(Interval):
    """Mean of ``a - b`` on common items, its interval, and the bootstrap p-value of ``a = b``."""

    p_value: float = 1.0


def _scores(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(values, np.float64).reshape(-1)
    if x.size == 0:
        raise DataError(f"{what}: no items to bootstrap")
    if not np.isfinite(x).all():
        raise DataError(f"{what}: scores must be finite (pair or filter unscored items first)")
    return x


def _resampled_means(x: np.ndarray, num_resamples: int, seed: int) -> np.ndarray:
    """``[num_resamples]`` means of ``x`` resampled with replacement (chunked: bounded memory)."""
    rng = np.random.default_rng(seed)
    n = x.size
    out = np.empty(num_resamples, np.float64)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, num_resamples, chunk):
        stop = min(num_resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = x[idx].mean(axis=1)
    return out


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, level: float = 0.95,
                 num_resamples: int = 2000, seed: int = 0) -> Interval:
    """Mean of ``values`` and its percentile-bootstrap ``level`` interval."""
    if not 0.0 < level < 1.0:
        raise DataError(f"level: must be in (0, 1), got {level}")
    x = _scores(values, "bootstrap_ci")
    means = _resampled_means(x, num_resamples, seed)
    alpha = 1.0 - level
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Interval(float(x.mean()), float(lo), float(hi), int(x.size), level)


def paired_bootstrap(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                     level: float = 0.95, num_resamples: int = 2000,
                     seed: int = 0) -> PairedDifference:
    """``mean(a - b)`` over the same items, its percentile interval and two-sided p-value."""
    xa, xb = _scores(a, "paired_bootstrap a"), _scores(b, "paired_bootstrap b")
    if xa.shape != xb.shape:
        raise DataError(f"paired_bootstrap: {xa.size} vs {xb.size} items; score both models "
                        "on the same items")
    d = xa - xb
    ci = bootstrap_ci(d, level=level, num_resamples=num_resamples, seed=seed)
    means = _resampled_means(d, num_resamples, seed)
    p = min(1.0, 2.0 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    return PairedDifference(ci.estimate, ci.low, ci.high, ci.n, level, p_value=p)
