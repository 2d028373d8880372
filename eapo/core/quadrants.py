"""Entropy × advantage-polarity quadrants (DESIGN §4).

A response token falls in one of four quadrants by the sign of its response's advantage (+/−) and whether its entropy
is high (H ≥ τ) or low (H < τ). Tokens with advantage exactly 0 receive no policy-gradient update and therefore belong
to no quadrant; padding/prompt tokens (mask False) belong to none either. Codes:

    0 pos_high   1 pos_low   2 neg_high   3 neg_low   -1 none

Two different denominators, on purpose. ρ (``entropy_threshold``) is a share of **all** valid response tokens: τ is
their (1 − ρ) quantile, whatever their advantage. Quadrant shares (``quadrant_stats``: ``share``) count only tokens
**in a quadrant**, i.e. with a non-zero advantage. Tokens of all-equal groups (A = 0) enter τ but no quadrant, so the
two high quadrants together hold ρ of the tokens only when high- and low-entropy tokens are equally likely to sit in
all-equal groups; e.g. with ρ = 0.2 and a third of the tokens in all-equal groups (mostly low-entropy), the "high"
share among quadrant tokens read 23%, not 20%.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

# torch is imported inside the functions: the names below (QUADRANTS, the codes) are the one definition the steps
# contract and the report read too, and those must not pay for importing torch.

__all__ = [
    "NEG_HIGH",
    "NEG_LOW",
    "NONE_CODE",
    "NONE_NAME",
    "POS_HIGH",
    "POS_LOW",
    "QUADRANTS",
    "QUADRANT_CODES",
    "assign_quadrants",
    "entropy_threshold",
    "quadrant_names",
    "quadrant_stats",
]

QUADRANTS: tuple[str, str, str, str] = ("pos_high", "pos_low", "neg_high", "neg_low")
POS_HIGH, POS_LOW, NEG_HIGH, NEG_LOW = 0, 1, 2, 3
NONE_CODE = -1
NONE_NAME = "none"
QUADRANT_CODES: dict[str, int] = {q: i for i, q in enumerate(QUADRANTS)}


def entropy_threshold(entropy: Tensor, mask: Tensor | None, rho: float) -> float:
    """τ = the (1 − ρ) quantile of entropy over the valid tokens, so that the top-ρ share of tokens is "high".

    Convention (top-k, as in "Beyond the 80/20 rule"): with n valid tokens, k = ceil(ρ·n) and τ is the k-th largest
    valid entropy. Then the high set {H ≥ τ} holds at least k tokens; exactly k when there are no ties at τ. Ties are
    all kept: in the all-equal case every token is ≥ τ, so **every token is high** (a batch with no entropy contrast
    has no "low" forking structure to protect).

    Args:
        entropy: [N] (or any shape) per-token entropy.
        mask: same shape, bool; True = response token. None = all valid. Prompt/padding tokens never enter τ.
        rho: share of high-entropy tokens among **all** valid tokens (A = 0 ones included), in (0, 1].

    Returns:
        τ as a python float, equal to one of the valid entropies in their own dtype (fp64 stays fp64), so the token at
        the boundary is always ≥ τ. No valid token → +inf, so that no token is high (and nothing downstream is
        selected).
    """
    import torch

    if not (0.0 < rho <= 1.0):
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    h = entropy.reshape(-1)
    if mask is not None:
        if mask.shape != entropy.shape:
            raise ValueError(f"mask {tuple(mask.shape)} does not match entropy {tuple(entropy.shape)}")
        h = h[mask.reshape(-1).bool()]
    h = h[~torch.isnan(h)].detach()
    n = h.numel()
    if n == 0:
        return math.inf
    # The small slack keeps float noise in rho·n (e.g. 0.3·10 = 3.0000000000000004) from adding a token.
    k = min(n, max(1, math.ceil(rho * n - 1e-9)))
    # k-th largest = (n − k + 1)-th smallest; kthvalue avoids torch.quantile's input-size limit. Computed in the
    # input's dtype (fp32 and fp64 as given; fp16/bf16 widened to fp32, which holds them exactly), so τ *is* a stored
    # entropy: casting fp64 entropies to fp32 would round τ up about half the time and drop the boundary token.
    h = h.cpu() if h.dtype in (torch.float32, torch.float64) else h.float().cpu()
    return float(torch.kthvalue(h, n - k + 1).values.item())


def assign_quadrants(entropy: Tensor, advantage: Tensor, tau: float, mask: Tensor | None = None) -> Tensor:
    """Quadrant code per token.

    Args:
        entropy: [...] per-token entropy, e.g. [N] or [B, T].
        advantage: per-token advantage broadcastable to ``entropy`` (e.g. [B, 1] against [B, T]). Only its sign is used.
        tau: entropy threshold; H ≥ τ is high. τ = +inf makes every token low.
        mask: [...] bool, True = response token; None = all valid.

    Returns:
        LongTensor shaped like ``entropy``: 0..3 in ``QUADRANTS`` order, -1 for advantage 0 or masked tokens.
    """
    import torch

    adv = torch.broadcast_to(advantage, entropy.shape)
    high = entropy >= tau
    code = torch.where(adv > 0, torch.where(high, POS_HIGH, POS_LOW), torch.where(high, NEG_HIGH, NEG_LOW))
    none = (adv == 0) | torch.isnan(adv)
    if mask is not None:
        none = none | ~mask.bool()
    return torch.where(none, NONE_CODE, code).long()


def quadrant_names(codes: Tensor) -> list[str]:
    """Codes [...] -> flat list of names ("pos_high", ..., "none" for -1)."""
    names = (*QUADRANTS, NONE_NAME)  # index -1 picks "none"
    return [names[c] for c in codes.reshape(-1).tolist()]


def quadrant_stats(
    entropy: Tensor,
    advantage: Tensor,
    codes: Tensor,
    grad_norm: Tensor,
    weights: Tensor | None = None,
) -> dict[str, dict[str, float | int | None]]:
    """Per-quadrant summary, JSON-ready (plain python numbers, no NaN).

    Args (all the same shape, or broadcastable to ``codes``):
        entropy: per-token H.
        advantage: per-token advantage A (before weighting).
        codes: from ``assign_quadrants``; tokens with code -1 are ignored everywhere.
        grad_norm: per-token ‖∇_z log π(y)‖₂ (see ``entropy.logit_grad_norm``).
        weights: per-token weighting w; None means w = 1 (GRPO).

    Returns:
        {quadrant: {count, share, mean_entropy, mean_abs_adv, mean_weight, grad_mass, grad_share}} for the four
        quadrants, where Â = A·w, grad_mass = Σ|Â|·‖∇‖ over the quadrant, and
        share = count / (tokens in any quadrant), grad_share = grad_mass / Σ over all quadrants. ``share`` therefore
        excludes A = 0 tokens, while ρ (which set τ) counted them: see the module docstring.
        Empty quadrant: count 0, share 0.0, grad_mass 0.0, grad_share 0.0, and the means are None (undefined, not 0).
        If no token carries gradient mass, every grad_share is 0.0.
    """
    import torch

    shape = codes.shape

    def flat(x: Tensor) -> Tensor:
        # Analysis only: float64 for exact-ish sums, detached so no graph is kept alive.
        return torch.broadcast_to(x, shape).reshape(-1).detach().double()

    h, a, g = flat(entropy), flat(advantage), flat(grad_norm)
    w = torch.ones_like(h) if weights is None else flat(weights)
    codes = codes.reshape(-1)
    mass = (a * w).abs() * g
    assigned = codes >= 0
    n_total = int(assigned.sum().item())
    mass_total = float(mass[assigned].sum().item())
    out: dict[str, dict[str, float | int | None]] = {}
    for i, q in enumerate(QUADRANTS):
        sel = codes == i
        n = int(sel.sum().item())
        m = float(mass[sel].sum().item())
        out[q] = {
            "count": n,
            "share": n / n_total if n_total else 0.0,
            "mean_entropy": float(h[sel].mean().item()) if n else None,
            "mean_abs_adv": float(a[sel].abs().mean().item()) if n else None,
            "mean_weight": float(w[sel].mean().item()) if n else None,
            "grad_mass": m,
            "grad_share": m / mass_total if mass_total > 0 else 0.0,
        }
    return out
