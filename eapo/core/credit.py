"""Credit assignment for one batch of sampled responses (DESIGN §4): entropy → τ → advantages → quadrants → token
weights, the "annotate" of a training step, as one pure function.

    ann = annotate_batch(entropy, logprobs, sum_p_sq, lengths, rewards, group_ids,
                         advantage_fn=grpo, weighting=build_weighting("eapo", alpha=0.5), rho=0.2)
    ann.adv_hat        # Â_{i,t} = A_i · w_{i,t}: what each token is trained with

Per-token inputs are flat over the batch's response tokens, response after response ([N], N = Σ lengths); per-response
inputs are [n]. No I/O, no model, no process group: under several processes the caller gathers the entropies τ is
taken over (``threshold_entropy``), since τ is a quantile of the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .entropy import logit_grad_norm
from .quadrants import assign_quadrants, entropy_threshold, quadrant_stats
from .weighting import Weighting

__all__ = ["BatchAnnotation", "annotate_batch"]


@dataclass(frozen=True)
class BatchAnnotation:
    """``annotate_batch``'s result. [N]: per response token, in the input order; [n]: per response."""

    seq_ids: Tensor
    """[N] long: the response each token belongs to (0..n-1)."""
    advantages: Tensor
    """[n] A_i, from the group's rewards."""
    tau: float
    """The batch's entropy threshold at ``rho``, or the fixed one given (H ≥ τ is high); +inf when the batch has no
    token."""
    codes: Tensor
    """[N] quadrant codes at τ (``eapo.core.quadrants``; -1 where A = 0)."""
    weights: Tensor
    """[N] the weighting's w."""
    adv_hat: Tensor
    """[N] Â = A·w."""
    grad_norm: Tensor
    """[N] ‖∇_z log π(y)‖ from the sampler's π(y) and Σπ²."""
    quadrants: dict
    """``quadrant_stats`` with w = 1 (GRPO's gradient mass per quadrant)."""
    weighted_quadrants: dict
    """``quadrant_stats`` with the weighting's w."""


def annotate_batch(
    entropy: Tensor,
    logprobs: Tensor,
    sum_p_sq: Tensor,
    lengths: Tensor,
    rewards: Tensor,
    group_ids: Tensor | Sequence,
    *,
    advantage_fn: Callable[..., Tensor],
    weighting: Weighting,
    rho: float,
    weighting_rho: float | None = None,
    threshold_entropy: Tensor | None = None,
    tau: float | None = None,
    grad_norm_dtype: torch.dtype | None = None,
) -> BatchAnnotation:
    """Annotate one batch of responses for the policy update.

    Args:
        entropy, logprobs, sum_p_sq: [N] fp32, the sampler's per-token H, log π(y) and Σπ² at temperature 1.
        lengths: [n] long, response lengths (Σ = N). rewards: [n] fp32. group_ids: [n], the prompt of each response
            (a tensor, or a sequence of ids such as prompt ids).
        advantage_fn: an ``eapo.core.advantages`` estimator. weighting: the variant's token weighting.
        rho: the share of high-entropy tokens that sets τ (quadrants and statistics).
        weighting_rho: the variant's own ρ, if it gave one. A weighting with ``own_threshold`` (top_entropy) splits
            at that ρ's quantile when it differs from ``rho``; every other weighting splits at τ, so that a quadrant
            ablation drops exactly the quadrant counted in the statistics.
        threshold_entropy: the entropies τ is a quantile of (the whole batch over every process); None = ``entropy``.
        tau: a fixed entropy threshold instead of the batch's quantile at ``rho`` (the annotate stage's
            ``annotate.tau``); None = the quantile.
        grad_norm_dtype: compute ‖∇‖ in this dtype and round it to ``logprobs``' dtype (the annotate stage: float64,
            so the fp32 proxy it stores, and the statistics taken over it, are the correctly rounded values); None =
            in ``logprobs``' dtype (the trainer).
    """
    seq_ids = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    advantages = advantage_fn(rewards, group_ids)
    adv_tok = advantages[seq_ids]
    mask = torch.ones_like(entropy, dtype=torch.bool)
    batch_entropy = entropy if threshold_entropy is None else threshold_entropy
    tau = entropy_threshold(batch_entropy, None, rho) if tau is None else float(tau)
    codes = assign_quadrants(entropy, adv_tok, tau, mask)
    tau_w = tau
    if weighting.needs_tau and weighting.own_threshold and weighting_rho is not None and weighting_rho != rho:
        tau_w = entropy_threshold(batch_entropy, None, weighting_rho)
    weights = weighting(entropy, adv_tok, seq_ids, mask, tau_w)
    if grad_norm_dtype is None:
        grad_norm = logit_grad_norm(logprobs.exp(), sum_p_sq)
    else:
        grad_norm = logit_grad_norm(logprobs.to(grad_norm_dtype).exp(), sum_p_sq.to(grad_norm_dtype)).to(logprobs.dtype)
    return BatchAnnotation(
        seq_ids=seq_ids, advantages=advantages, tau=tau, codes=codes, weights=weights, adv_hat=adv_tok * weights,
        grad_norm=grad_norm,
        quadrants=quadrant_stats(entropy, adv_tok, codes, grad_norm),
        weighted_quadrants=quadrant_stats(entropy, adv_tok, codes, grad_norm, weights=weights),
    )
