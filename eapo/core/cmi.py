"""Monte-Carlo estimate of the conditional mutual information between a token and the outcome (DESIGN §4, CMI probe).

At a prefix h, I(Y; R | h) for the next token Y ~ π(·|h) and the binary outcome R ∈ {0, 1}:

    I = H_b(E_y[p(y)]) − E_y[H_b(p(y))],     p(y) = P(R = 1 | h, y),   in nats,

bounded by I ≤ H(Y | h) (the token entropy) and by I ≤ H_b(E p) ≤ log 2. The probe (elsewhere) samples K alternatives
y_k ~ π(·|h) and M continuations after each, giving a K × M matrix of 0/1 outcomes; this module only does the math.

Estimator bias, honestly. ``cmi_from_outcomes`` is the plug-in estimator: p̂_k = mean of M outcomes. H_b is concave,
so E[H_b(p̂_k)] < H_b(p_k): to second order the gap is 1/(2M) nats whenever 0 < p_k < 1 (Var p̂ = p(1−p)/M times
½|H_b''| = 1/(2p(1−p))), less when p_k is near 0 or 1. That makes the subtracted term too small, so the estimate is
biased **upward**. The first term H_b(mean p̂) is biased downward too, by about 1/(2KM), since it averages K·M outcomes.
Net: about (1 − 1/K)/(2M) nats upward, e.g. ≈ 0.05 nats at K = 8, M = 8, which is large against typical I. It shrinks
as 1/M; report M beside every estimate and prefer M ≥ 16 where the budget allows. With y drawn from π, the mean over k
is a Monte-Carlo average over tokens: unbiased for E p, but H_b of it is not (second-order, in 1/K).
The bootstrap interval (``bootstrap_cmi``) measures sampling spread, not this bias.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["binary_entropy", "bootstrap_cmi", "cmi_estimate", "cmi_from_outcomes"]


def binary_entropy(p: ArrayLike) -> np.ndarray | float:
    """H_b(p) = −p log p − (1−p) log(1−p) in nats; exactly 0 at p ∈ {0, 1}. Scalar in → float out, array in → array.

    Raises ValueError for p outside [0, 1] or NaN.
    """
    arr = np.asarray(p, dtype=np.float64)
    if np.any(np.isnan(arr)) or np.any(arr < 0) or np.any(arr > 1):
        raise ValueError("binary_entropy needs probabilities in [0, 1]")
    q = 1.0 - arr
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(arr > 0, arr * np.log(np.where(arr > 0, arr, 1.0)), 0.0) - np.where(
            q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0
        )
    return float(h) if h.ndim == 0 else h


def cmi_estimate(p_hat: ArrayLike) -> float:
    """H_b(mean_k p̂_k) − mean_k H_b(p̂_k) in nats, from per-alternative success probabilities p̂ [K] (K ≥ 1).

    Always ≥ 0 (Jensen). With exact p(y) for token samples y_k ~ π it is a consistent estimator of I(Y; R | h);
    with p(y) listed once per token and the tokens equiprobable it is exactly I.
    """
    p = np.asarray(p_hat, dtype=np.float64).reshape(-1)
    if p.size == 0:
        raise ValueError("cmi_estimate needs at least one alternative")
    # max(·, 0) removes float noise of order 1e-17 that could make an exactly-zero CMI print as −0.0 or −1e-17.
    return max(float(binary_entropy(p.mean())) - float(np.mean(binary_entropy(p))), 0.0)


def cmi_from_outcomes(outcomes: ArrayLike) -> float:
    """Plug-in CMI from a [K, M] matrix of 0/1 outcomes (row k: M continuations after alternative y_k). Nats.

    Biased upward for small M (see the module docstring).
    """
    o = np.asarray(outcomes, dtype=np.float64)
    if o.ndim != 2 or o.shape[0] < 1 or o.shape[1] < 1:
        raise ValueError(f"outcomes must be a non-empty [K, M] array, got shape {o.shape}")
    return cmi_estimate(o.mean(axis=1))


def bootstrap_cmi(
    outcomes: ArrayLike, n_boot: int = 200, seed: int | None = 0, ci: float = 0.9
) -> tuple[float, float, float]:
    """(estimate, lo, hi): plug-in CMI and a percentile bootstrap interval at level ``ci``.

    Two-stage resampling: draw K alternatives with replacement, then, within each drawn alternative, its M
    continuations with replacement. Resampling M 0/1 outcomes of a row with success share p̂_k gives a count
    ~ Binomial(M, p̂_k), so the second stage is drawn exactly that way (O(n_boot·K) instead of O(n_boot·K·M)).
    """
    o = np.asarray(outcomes, dtype=np.float64)
    est = cmi_from_outcomes(o)
    if not (0.0 < ci < 1.0):
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not np.all((o == 0) | (o == 1)):
        raise ValueError("outcomes must be 0/1")
    K, M = o.shape
    rng = np.random.default_rng(seed)
    p_rows = o.mean(axis=1)
    ks = rng.integers(0, K, size=(n_boot, K))
    p_star = rng.binomial(M, p_rows[ks]) / M  # [n_boot, K]
    hb = binary_entropy(p_star)
    vals = np.maximum(binary_entropy(p_star.mean(axis=1)) - hb.mean(axis=1), 0.0)
    a = (1.0 - ci) / 2.0
    lo, hi = np.quantile(vals, [a, 1.0 - a])
    return est, float(lo), float(hi)
