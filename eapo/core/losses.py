"""Clipped policy-gradient loss with decoupled clip range, loss aggregations and an optional k3 KL (DESIGN §4).

Per token (PPO/GRPO/DAPO form), with r = π_θ/π_old = exp(logp − old_logp) and Â = A·w already applied:

    ℓ_t = −min(r·Â, clip(r, 1 − ε_low, 1 + ε_high)·Â)        (+ kl_coef · k3(π_θ ‖ π_ref) if enabled)

Micro-batching. ``policy_loss`` reduces within the batch it is given, which is right for a single batch but wrong
for gradient accumulation under ``token_mean`` (each micro-batch would be normalised by its own token count, so short
micro-batches would be over-weighted). For accumulation call ``policy_loss_terms`` to get the unreduced [B, T] loss,
then normalise by the *global* quantity yourself and backward each micro-batch:

    token_mean:                  loss_mb = terms.sum() / total_valid_tokens_in_step
    seq_mean_token_mean:         loss_mb = (terms.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / total_nonempty_seqs
    seq_mean_token_sum_norm:     loss_mb = (terms.sum(-1) / norm_len).sum() / total_nonempty_seqs
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "AGGREGATIONS",
    "aggregate",
    "k3_kl",
    "policy_loss",
    "policy_loss_terms",
    "register_aggregation",
    "seq_mean_token_mean",
    "seq_mean_token_sum_norm",
    "token_mean",
]

AggFn = Callable[[Tensor, Tensor, "int | None"], Tensor]
AGGREGATIONS: dict[str, AggFn] = {}


def register_aggregation(name: str) -> Callable[[AggFn], AggFn]:
    """Decorator: add ``fn(values[B,T], mask[B,T], norm_len) -> scalar`` to ``AGGREGATIONS``."""

    def deco(fn: AggFn) -> AggFn:
        if name in AGGREGATIONS:
            raise ValueError(f"aggregation {name!r} is already registered")
        AGGREGATIONS[name] = fn
        return fn

    return deco


@register_aggregation("token_mean")
def token_mean(values: Tensor, mask: Tensor, norm_len: int | None = None) -> Tensor:
    """DAPO: Σ over all valid tokens / number of valid tokens (0 if there are none). [B,T],[B,T] -> scalar."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1)


@register_aggregation("seq_mean_token_mean")
def seq_mean_token_mean(values: Tensor, mask: Tensor, norm_len: int | None = None) -> Tensor:
    """GRPO: mean over each sequence's valid tokens, then mean over sequences with ≥ 1 valid token. -> scalar."""
    m = mask.to(values.dtype)
    n_tok = m.sum(-1)
    has = n_tok > 0
    per_seq = (values * m).sum(-1) / n_tok.clamp(min=1)
    return (per_seq * has).sum() / has.sum().clamp(min=1)


@register_aggregation("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(values: Tensor, mask: Tensor, norm_len: int | None = None) -> Tensor:
    """Dr.GRPO: per-sequence token *sum* / a constant ``norm_len`` (default T = values.shape[-1]), then mean over
    sequences with ≥ 1 valid token. The constant removes GRPO's length bias (long wrong answers under-penalised).
    -> scalar."""
    L = values.shape[-1] if norm_len is None else int(norm_len)
    if L < 1:
        raise ValueError(f"norm_len must be >= 1, got {norm_len}")
    m = mask.to(values.dtype)
    has = m.sum(-1) > 0
    per_seq = (values * m).sum(-1) / L
    return (per_seq * has).sum() / has.sum().clamp(min=1)


def aggregate(values: Tensor, mask: Tensor, agg: str = "token_mean", norm_len: int | None = None) -> Tensor:
    """Reduce per-token ``values`` [B, T] under ``mask`` [B, T] with the aggregation ``agg`` -> 0-dim tensor."""
    if agg not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {agg!r}; known: {sorted(AGGREGATIONS)}")
    if values.dim() != 2 or values.shape != mask.shape:
        raise ValueError(
            f"expected values and mask of equal shape [B, T], got {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    return AGGREGATIONS[agg](values, mask, norm_len)


def k3_kl(logp: Tensor, ref_logp: Tensor, clamp: float = 10.0) -> Tensor:
    """Schulman's k3 estimator of KL(π_θ ‖ π_ref) per token for samples from π_θ: exp(d) − d − 1, d = ref_logp − logp.

    Non-negative and low-variance. d is clamped to ±``clamp`` (as verl does) so one wild token cannot blow up the loss.
    """
    d = torch.clamp(ref_logp - logp, min=-clamp, max=clamp)
    return torch.exp(d) - d - 1.0


def _check_shapes(**tensors: Tensor | None) -> None:
    shapes = {k: tuple(v.shape) for k, v in tensors.items() if v is not None}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
        raise ValueError(f"expected equal [B, T] shapes, got {shapes}")


def policy_loss_terms(
    logp: Tensor,
    old_logp: Tensor,
    adv_tokens: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    return_parts: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """Unreduced per-token loss [B, T] (0 on masked tokens), for gradient accumulation (see the module docstring).

    Args:
        logp: [B, T] log π_θ(y_t), with grad. old_logp: [B, T] log π_old(y_t) (treated as constant).
        adv_tokens: [B, T] Â = A·w (constant). mask: [B, T] bool/0-1, True on response tokens.
        clip_low, clip_high: ε_low, ε_high (DAPO's decoupled "clip-higher"; 0.2/0.28 by default).
        ref_logp: [B, T] reference log-probs; the k3 KL term is added only when ``kl_coef > 0``.
        return_parts: also return a dict of per-token tensors (detached): ``pg`` [B,T], ``clipped`` [B,T] bool
            (the clipped branch was taken and differs), ``ratio`` [B,T], ``kl`` [B,T] (only if ref_logp is given).
    """
    _check_shapes(logp=logp, old_logp=old_logp, adv_tokens=adv_tokens, mask=mask, ref_logp=ref_logp)
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low/clip_high must be >= 0, got {clip_low}, {clip_high}")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if kl_coef > 0 and ref_logp is None:
        raise ValueError("kl_coef > 0 needs ref_logp")
    m = mask.bool()
    adv = adv_tokens.detach()
    # Clamp the log-ratio before exp: masked/padded positions may hold garbage and exp would overflow to inf·0 = NaN.
    log_ratio = torch.where(m, logp - old_logp.detach(), torch.zeros_like(logp)).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    pg1 = -ratio * adv
    pg2 = -torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    pg = torch.maximum(pg1, pg2)
    loss = pg
    kl = None
    if ref_logp is not None:
        kl = k3_kl(logp, ref_logp.detach())
        if kl_coef > 0:
            loss = loss + kl_coef * kl
    loss = torch.where(m, loss, torch.zeros_like(loss))
    if not return_parts:
        return loss
    parts = {"pg": pg.detach(), "clipped": (pg2 > pg1) & m, "ratio": ratio.detach()}
    if kl is not None:
        parts["kl"] = kl.detach()
    return loss, parts


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv_tokens: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    agg: str = "token_mean",
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    norm_len: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped policy loss aggregated over one batch.

    Shapes: all [B, T]. Returns (loss 0-dim tensor with grad, metrics) where metrics are python floats:

    - ``pg_loss``: the aggregated clipped surrogate (without KL);
    - ``kl``: aggregated k3 KL(π_θ ‖ π_ref) if ``ref_logp`` is given (reported even at kl_coef = 0), else 0.0;
    - ``clip_frac``: share of valid tokens where the clipped branch was taken (pg2 > pg1, as in verl);
    - ``approx_kl``: k3 estimate of KL(π_old ‖ π_θ) from samples of π_old, (r − 1) − log r, mean over valid tokens.

    Metrics use token means except pg_loss/kl, which use ``agg`` so that they add up to the loss.
    """
    loss_tok, parts = policy_loss_terms(
        logp, old_logp, adv_tokens, mask, clip_low, clip_high, ref_logp, kl_coef, return_parts=True
    )
    loss = aggregate(loss_tok, mask, agg, norm_len)
    with torch.no_grad():
        m = mask.bool()
        pg_loss = aggregate(parts["pg"], m, agg, norm_len)
        kl = aggregate(parts["kl"], m, agg, norm_len) if "kl" in parts else torch.zeros(())
        clip_frac = token_mean(parts["clipped"].to(torch.float32), m)
        r = parts["ratio"]
        approx_kl = token_mean((r - 1.0) - torch.log(r), m)
    metrics = {
        "pg_loss": float(pg_loss),
        "kl": float(kl),
        "clip_frac": float(clip_frac),
        "approx_kl": float(approx_kl),
    }
    return loss, metrics
