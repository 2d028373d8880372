"""Evaluation statistics: unbiased pass@k, avg@k, bootstrap intervals, and sample-efficiency summaries (DESIGN §4)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "avg_at_k",
    "bootstrap_ci",
    "curve_auc",
    "mean_pass_at_k",
    "paired_bootstrap_diff",
    "pass_at_k",
    "steps_to_threshold",
]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 − C(n−c, k)/C(n, k) for n samples of which c are correct (Chen et al. 2021, Codex).

    Computed as 1 − Π_{i=n−c+1}^{n} (1 − k/i), which avoids huge binomials. k > n → ValueError (pass@k is undefined
    with fewer than k samples); also n < 1, k < 1, or c outside [0, n].
    """
    n, c, k = int(n), int(c), int(k)
    if n < 1 or k < 1:
        raise ValueError(f"need n >= 1 and k >= 1, got n={n}, k={k}")
    if k > n:
        raise ValueError(f"pass@k needs k <= n, got k={k} > n={n}")
    if not (0 <= c <= n):
        raise ValueError(f"c must be in [0, n={n}], got {c}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def mean_pass_at_k(n: ArrayLike, c: ArrayLike, k: int) -> float:
    """Mean of pass@k over prompts: n, c arrays [P] (or n a scalar shared by all prompts)."""
    c_arr = np.asarray(c).reshape(-1)
    n_arr = np.broadcast_to(np.asarray(n), c_arr.shape)
    if c_arr.size == 0:
        raise ValueError("mean_pass_at_k needs at least one prompt")
    return float(np.mean([pass_at_k(ni, ci, k) for ni, ci in zip(n_arr, c_arr)]))


def avg_at_k(correct: ArrayLike) -> float:
    """avg@k: mean accuracy over the k samples of each prompt, averaged over prompts.

    correct: [P, k] (or [k] for one prompt) of 0/1 (or rewards in [0, 1]). Equal k per prompt makes this the plain
    mean; the per-prompt mean first keeps it right if rows are ragged (pass a list of lists).
    """
    if isinstance(correct, (list, tuple)) and correct and isinstance(correct[0], (list, tuple, np.ndarray)):
        rows = [np.asarray(r, dtype=np.float64) for r in correct]
        if any(r.size == 0 for r in rows):
            raise ValueError("avg_at_k: a prompt has no samples")
        return float(np.mean([r.mean() for r in rows]))
    arr = np.asarray(correct, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("avg_at_k needs at least one sample")
    return float(arr.reshape(-1, arr.shape[-1]).mean(axis=1).mean())


def _percentile_interval(samples: np.ndarray, ci: float) -> tuple[float, float]:
    a = (1.0 - ci) / 2.0
    lo, hi = np.quantile(samples, [a, 1.0 - a])
    return float(lo), float(hi)


def _check_boot(n_boot: int, ci: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not (0.0 < ci < 1.0):
        raise ValueError(f"ci must be in (0, 1), got {ci}")


def bootstrap_ci(
    values: ArrayLike,
    n_boot: int = 1000,
    seed: int | None = 0,
    ci: float = 0.95,
    stat: Callable[..., float] = np.mean,
) -> tuple[float, float, float]:
    """(stat(values), lo, hi): percentile bootstrap interval, resampling the values (e.g. per-prompt accuracies).

    ``stat`` is called as ``stat(sample, axis=1)`` on the [n_boot, P] resample matrix when it accepts ``axis``
    (numpy reductions do), else once per resample.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    _check_boot(n_boot, ci)
    rng = np.random.default_rng(seed)
    boot = v[rng.integers(0, v.size, size=(n_boot, v.size))]
    try:
        stats = np.asarray(stat(boot, axis=1), dtype=np.float64)
        if stats.shape != (n_boot,):
            raise TypeError
    except TypeError:
        stats = np.array([stat(row) for row in boot], dtype=np.float64)
    lo, hi = _percentile_interval(stats, ci)
    return float(stat(v)), lo, hi


def paired_bootstrap_diff(
    a: ArrayLike, b: ArrayLike, n_boot: int = 1000, seed: int | None = 0, ci: float = 0.95
) -> tuple[float, float, float]:
    """(mean(a − b), lo, hi) for per-prompt accuracies a[P], b[P] of two methods on the same prompts.

    Prompts are resampled jointly (paired), so prompt difficulty, which both methods share, cancels out of the spread.
    """
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"a and b must be non-empty and paired (same length), got {x.size} and {y.size}")
    return bootstrap_ci(x - y, n_boot=n_boot, seed=seed, ci=ci, stat=np.mean)


def curve_auc(steps: ArrayLike, values: ArrayLike, normalize: bool = True) -> float:
    """Area under a training curve (trapezoid rule), e.g. reward vs step: a sample-efficiency summary.

    With ``normalize`` it is divided by the step span, i.e. the curve's time-average (comparable across run lengths
    only over the same span). A single point returns its value (normalised) or 0.0 (raw).
    """
    s = np.asarray(steps, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if s.shape != v.shape or s.size == 0:
        raise ValueError("steps and values must be non-empty and of equal length")
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    if s.size == 1:
        return float(v[0]) if normalize else 0.0
    area = float(np.sum((s[1:] - s[:-1]) * (v[1:] + v[:-1]) / 2.0))
    span = float(s[-1] - s[0])
    return area / span if normalize and span > 0 else area


def steps_to_threshold(steps: ArrayLike, values: ArrayLike, threshold: float) -> float | None:
    """First step at which ``values`` reaches ``threshold`` (≥), or None if it never does."""
    s = np.asarray(steps, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if s.shape != v.shape:
        raise ValueError("steps and values must have equal length")
    order = np.argsort(s, kind="stable")
    hit = np.nonzero(v[order] >= threshold)[0]
    return float(s[order][hit[0]]) if hit.size else None
