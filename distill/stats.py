"""Error bars for the numbers a report compares: a Wilson interval for a top-1, a paired bootstrap interval for the
difference of two top-1s measured on the same rows, and the exact McNemar test of that difference.

Torch-free (numpy and scipy only), so the API and the client can use it. Inputs are per-row correctness vectors
(``bool``/``0-1`` arrays ``[N]``: whether a model's top-1 prediction on validation row i equals its label); two
vectors compared are *paired* (the same N rows, in the same order).

- ``wilson_interval``: the score interval for a binomial proportion (Wilson 1927), via
  ``scipy.stats.binomtest(...).proportion_ci(method="wilson")``;
- ``paired_bootstrap_interval``: the percentile interval of ``mean(a) - mean(b)`` over ``BOOTSTRAP_RESAMPLES``
  resamples of the rows with replacement (Efron & Tibshirani 1993), the same resampled rows for both models, seeded;
- ``mcnemar_exact``: McNemar's test (McNemar 1947) in its exact form, a two-sided binomial test with p = 1/2 on the
  discordant pairs (rows exactly one of the two models gets right), via ``scipy.stats.binomtest``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as _sp

__all__ = ["BOOTSTRAP_RESAMPLES", "CONFIDENCE", "McNemar", "mcnemar_exact", "paired_bootstrap_interval", "wilson_interval"]

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000  # percentile-interval endpoints move by ~0.1 point between seeds at N = 1,000 with this many
_BATCH = 500  # resamples drawn at once (memory: _BATCH x N int64 indices)


def _vector(x: np.ndarray | list[bool] | list[int], name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D per-row correctness vector, got shape {list(a.shape)}")
    if a.size and not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0/1 (or booleans)")
    return a.astype(bool)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Wilson score interval (Wilson 1927) of a proportion ``successes / n`` (e.g. a top-1 of ``successes`` correct
    validation rows out of ``n``), as fractions ``(low, high)`` in [0, 1]; None when ``n`` is 0. Unlike the normal
    (Wald) interval it stays inside [0, 1] and does not collapse to a point at 0 or n successes. Raises
    ``ValueError`` for ``successes`` outside [0, n]."""
    if n == 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n]; got {successes} of {n}")
    ci = _sp.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def paired_bootstrap_interval(a_correct: np.ndarray, b_correct: np.ndarray, *, seed: int = 0,
                              resamples: int = BOOTSTRAP_RESAMPLES,
                              confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Percentile interval of ``top1(a) - top1(b)`` (fractions in [-1, 1]) from ``resamples`` paired bootstrap
    resamples (Efron & Tibshirani 1993): each resample draws N row indices with replacement and takes the
    difference of the two models' accuracies on those same rows, so the rows' shared difficulty cancels.
    ``a_correct``/``b_correct``: per-row correctness ``[N]`` on the same rows. Seeded (``numpy.random.default_rng
    (seed)``): the same inputs and seed give the same interval. None when N is 0. Raises ``ValueError`` for
    vectors of different lengths or non-0/1 values."""
    a, b = _vector(a_correct, "a_correct"), _vector(b_correct, "b_correct")
    if a.shape != b.shape:
        raise ValueError(f"paired vectors must have the same length; got {a.size} and {b.size}")
    if a.size == 0:
        return None
    d = a.astype(np.int8) - b.astype(np.int8)
    if not d.any() or (d == d[0]).all():  # every row has the same difference: every resample gives it exactly
        v = float(d[0])
        return v, v
    res = _sp.bootstrap((d,), lambda x, axis: x.mean(axis=axis), n_resamples=resamples, batch=_BATCH, vectorized=True,
                        confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test of two models on the same rows: ``a_only`` rows only model a gets right, ``b_only`` rows only
    b gets right, and the two-sided ``p_value`` of ``a_only`` under Binomial(a_only + b_only, 1/2)."""

    a_only: int
    b_only: int
    p_value: float


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> McNemar:
    """Exact McNemar test (McNemar 1947): the rows where exactly one of two models is right are the only evidence of a
    difference; under 'no difference' each such row is equally likely to favour either, so ``a_only`` ~ Binomial(
    a_only + b_only, 1/2) and the p-value is ``scipy.stats.binomtest(a_only, a_only + b_only, 0.5)``'s two-sided one
    (1.0 without discordant rows). Raises ``ValueError`` for vectors of different lengths or non-0/1 values."""
    a, b = _vector(a_correct, "a_correct"), _vector(b_correct, "b_correct")
    if a.shape != b.shape:
        raise ValueError(f"paired vectors must have the same length; got {a.size} and {b.size}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    n = a_only + b_only
    p = 1.0 if n == 0 else float(_sp.binomtest(a_only, n, 0.5).pvalue)
    return McNemar(a_only=a_only, b_only=b_only, p_value=min(1.0, p))
