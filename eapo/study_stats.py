"""Seed-aware statistics for the study report: hierarchical bootstrap, bootstrap p-values, Holm, MDE, verdicts.

Pure numpy; no I/O. `eapo.report` applies them to per-prompt accuracies, per-step gradient shares and CMI probes.

**Hierarchical bootstrap** (`hierarchical_bootstrap`): the data is a [S seeds, P units] matrix of paired differences
(unit = test prompt, or training step). One replicate draws S seeds with replacement, then, for each drawn seed, P
units with replacement, and averages. Both sources of variance, the training seed and the test prompts, are in the
interval. The units are drawn first and the seeds second, from one generator, so with S = 1 the replicates are exactly
those of `eapo.core.stats.paired_bootstrap_diff` (same seed, same numbers): the method reduces to today's paired
bootstrap, and then seed variance is not included.

**Why not rliable** (Agarwal et al. 2021, the reference for seed-aware RL reporting): `pip install rliable` (1.2.0)
brings arch, statsmodels, seaborn, formulaic, patsy, absl-py and wrapt (9 packages) for what we would use of it, and
its estimators answer a different question. Its stratified bootstrap resamples *runs within each task* of a
[runs x tasks] score matrix, independently per algorithm: it has no nested level (prompts within a seed) and no pairing
of two models on the same prompts, which is where most of our resolution comes from (prompt difficulty cancels). Its
IQM and optimality-gap aggregates summarise across many tasks; this study has one task. Its probability of improvement
is a Mann-Whitney statistic over runs, which with the 1-5 seeds of this study has too few values to be informative.
The nested paired resampling is a few lines of numpy (`hierarchical_bootstrap`), so it is written here.

**p-values**: the two-sided bootstrap p-value of "mean = 0", from the share of replicates on either side of 0
(`bootstrap_p_value`, with the +1 correction so p is never 0). **Holm** (`holm`) adjusts them across the family of
claims. **MDE** (`mde`): the smallest true effect detected with probability `power` by a two-sided test at level
alpha / m (Bonferroni, the strictest step of Holm), given the bootstrap standard error at this study's size:
MDE = (z_{1 - alpha/(2m)} + z_{power}) * SE. SE shrinks as 1/sqrt(size), so (MDE / |target|)^2 says roughly how many
times more data (seeds x prompts) a claim needs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from eapo.core.stats import _percentile_interval

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
NOT_RUN = "not run"
POWER = 0.8
"""Power of the minimum detectable effect."""


@dataclass(frozen=True)
class BootResult:
    est: float
    lo: float
    hi: float
    se: float
    p: float
    """Two-sided bootstrap p-value of mean = 0."""
    seeds: int
    units: int
    """Units (prompts, steps, positions) per seed."""


def _check(n_boot: int, ci: float) -> None:
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")


def bootstrap_p_value(stats: np.ndarray, null: float = 0.0) -> float:
    """Two-sided p-value of `null` from bootstrap replicates: 2 * min(share <= null, share >= null), +1 corrected."""
    s = np.asarray(stats, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("no finite bootstrap replicates")
    below = (np.sum(s <= null) + 1) / (s.size + 1)
    above = (np.sum(s >= null) + 1) / (s.size + 1)
    return float(min(1.0, 2.0 * min(below, above)))


def hierarchical_bootstrap(d: np.ndarray, n_boot: int = 2000, seed: int | None = 0,
                           ci: float = 0.95) -> BootResult:
    """Mean of a [S, P] matrix of paired differences with a two-level bootstrap: seeds, then units within each drawn
    seed (see the module doc). NaN entries (e.g. a training step without a gradient) are skipped in every mean."""
    x = np.asarray(d, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"expected a non-empty [seeds, units] matrix, got shape {x.shape}")
    _check(n_boot, ci)
    s, p = x.shape
    rng = np.random.default_rng(seed)
    units = rng.integers(0, p, size=(n_boot, s, p))  # drawn first: with S = 1, the paired bootstrap's draws
    seeds = rng.integers(0, s, size=(n_boot, s))
    draws = x[seeds[:, :, None], units]
    nan = bool(np.isnan(x).any())
    if nan:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # mean of an all-NaN slice
            per_seed = np.nanmean(draws, axis=2)
            stats = np.nanmean(per_seed, axis=1)
            est = float(np.nanmean(np.nanmean(x, axis=1)))
        stats = stats[np.isfinite(stats)]
        if stats.size < 2 or not np.isfinite(est):
            raise ValueError("too few finite values for a bootstrap interval")
    else:
        stats = draws.mean(axis=2).mean(axis=1)
        est = float(x.mean(axis=1).mean())
    lo, hi = _percentile_interval(stats, ci)
    return BootResult(est, lo, hi, float(np.std(stats, ddof=1)), bootstrap_p_value(stats), s, p)


def two_sample_bootstrap(x: np.ndarray, y: np.ndarray, n_boot: int = 2000, seed: int | None = 0,
                         ci: float = 0.95) -> BootResult:
    """mean(x) - mean(y) for two independent groups (e.g. CMI at high vs low entropy positions), each resampled within
    itself (a stratified bootstrap)."""
    a, b = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (x, y))
    if a.size < 2 or b.size < 2:
        raise ValueError(f"each group needs >= 2 values, got {a.size} and {b.size}")
    _check(n_boot, ci)
    rng = np.random.default_rng(seed)
    stats = (a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(axis=1)
             - b[rng.integers(0, b.size, size=(n_boot, b.size))].mean(axis=1))
    lo, hi = _percentile_interval(stats, ci)
    return BootResult(float(a.mean() - b.mean()), lo, hi, float(np.std(stats, ddof=1)), bootstrap_p_value(stats), 1,
                      int(a.size + b.size))


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); None (a claim not tested) stays None and
    does not count in the family size."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda j: pvalues[j])):
        p = float(pvalues[i])
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-value {p} outside [0, 1]")
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def mde(se: float, alpha: float = 0.05, m: int = 1, power: float = POWER) -> float:
    """Minimum detectable effect: (z_{1 - alpha/(2m)} + z_{power}) * se (two-sided, Bonferroni level alpha/m)."""
    if se < 0 or not 0 < alpha < 1 or m < 1 or not 0 < power < 1:
        raise ValueError(f"bad MDE inputs: se={se}, alpha={alpha}, m={m}, power={power}")
    z = NormalDist()
    return float((z.inv_cdf(1.0 - alpha / (2.0 * m)) + z.inv_cdf(power)) * se)


def verdict(est: float | None, p_holm: float | None, alpha: float = 0.05) -> str:
    """A prediction "effect > 0": supported when the Holm-adjusted p is below alpha and the estimate is positive,
    contradicted when it is below alpha and the estimate negative, else inconclusive (no test: inconclusive too)."""
    if est is None or p_holm is None or not np.isfinite(est):
        return INCONCLUSIVE
    if p_holm < alpha:
        if est > 0:
            return SUPPORTED
        if est < 0:
            return CONTRADICTED
    return INCONCLUSIVE
