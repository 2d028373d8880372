"""Per-token log-probability, entropy and logit-gradient norm, computed in chunks.

The vocabulary-heavy part of an LM ([N, V] logits, V ~ 50k-150k) dominates memory in RL training and annotation
(DESIGN §8: a naive [B,T,V] fp32 pass peaked at 5.1 GB where 32-token chunks peaked at 2.0 GB). Everything here
therefore walks over *rows* (tokens) in chunks and never holds more than ``chunk_size`` rows of fp32 temporaries.

All quantities are at temperature 1 on the full vocabulary (DESIGN §4):

- ``logp[n]    = log π(y_n)``                      with π = softmax(z_n)
- ``entropy[n] = H_n = -Σ_v π(v) log π(v)``        in nats
- ``sum_p_sq[n] = Σ_v π(v)²``                       (lets a sampler record what the grad-norm analysis needs)
- ``‖∇_z log π(y)‖₂ = ‖e_y − π‖₂ = sqrt(1 − 2π(y) + Σ_v π(v)²)``

Gradients. ``logprob_entropy_from_logits`` uses a custom autograd function whose backward recomputes the softmax
chunk by chunk from the saved logits (which the caller holds anyway), using the closed forms

    ∂ log π(y) / ∂z_v = 1[v = y] − π_v
    ∂ H        / ∂z_v = −π_v (log π_v + H)
    ∂ Σπ²      / ∂z_v = 2 π_v (π_v − Σπ²)

so backward memory is also bounded by the chunk size (plus the [N, V] gradient itself, which autograd must return).
Double backward is not supported (RL losses never need it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

__all__ = [
    "logit_grad_norm",
    "logit_grad_norm_from_logits",
    "logprob_entropy_from_hidden",
    "logprob_entropy_from_logits",
    "naive_logprob_entropy",
]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for bf16/fp16/fp32 inputs; fp64 stays fp64 (gradcheck and references)."""
    return torch.promote_types(dtype, torch.float32)


def _chunk_stats(z: Tensor, targets: Tensor, valid: Tensor, with_sum_p_sq: bool = True
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """fp32 statistics of one chunk.

    z: [C, V] logits (any float dtype), targets: [C] long (already made safe), valid: [C] bool.
    Returns logp_all [C,V], p [C,V], logp [C], entropy [C], sum_p_sq [C] (None without ``with_sum_p_sq``), all fp32.
    """
    z = z.to(_compute_dtype(z.dtype))
    logp_all = torch.log_softmax(z, dim=-1)
    p = logp_all.exp()
    # p == 0 happens for -inf (masked) logits; 0·log 0 = 0 by convention, whereas 0·(-inf) would be NaN.
    plogp = (p * logp_all).masked_fill_(~(p > 0), 0.0)
    entropy = -plogp.sum(dim=-1)
    del plogp
    sum_p_sq = (p * p).sum(dim=-1) if with_sum_p_sq else None
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    logp = torch.where(valid, logp, torch.zeros((), dtype=logp.dtype, device=logp.device))
    return logp_all, p, logp, entropy, sum_p_sq


class _LogpEntropyFn(torch.autograd.Function):
    """logits [N, V] -> (logp [N], entropy [N], sum_p_sq [N]) in fp32, chunked over rows in both directions."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, chunk_size: int, ignore_index: int):  # type: ignore[override]
        n = logits.shape[0]
        valid = targets != ignore_index
        safe_t = torch.where(valid, targets, torch.zeros_like(targets))
        # Three separate buffers (not views of one) so autograd treats the outputs independently.
        cdt = _compute_dtype(logits.dtype)
        logp, ent, spsq = (torch.empty(n, dtype=cdt, device=logits.device) for _ in range(3))
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            _, _, logp[s:e], ent[s:e], spsq[s:e] = _chunk_stats(logits[s:e], safe_t[s:e], valid[s:e])
        ctx.save_for_backward(logits, safe_t, valid)
        ctx.chunk_size = chunk_size
        # Unused outputs then arrive as None in backward and their term is skipped.
        ctx.set_materialize_grads(False)
        return logp, ent, spsq

    @staticmethod
    def backward(ctx, g_logp: Tensor | None, g_ent: Tensor | None, g_spsq: Tensor | None):  # type: ignore[override]
        logits, safe_t, valid = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        n = logits.shape[0]
        grad = None if 0 < n <= ctx.chunk_size else torch.empty_like(logits)
        for s in range(0, n, ctx.chunk_size):
            e = min(s + ctx.chunk_size, n)
            logp_all, p, _, ent, spsq = _chunk_stats(logits[s:e], safe_t[s:e], valid[s:e],
                                                     with_sum_p_sq=g_spsq is not None)
            # gz = Σ of the requested terms, each computed as before but in place where a buffer is free again:
            # log π, π and gz are the only [C, V] buffers alive (a fourth for the rarely used Σπ² term).
            gz = torch.zeros_like(p)
            if g_logp is not None:
                gl = torch.where(valid[s:e], g_logp[s:e].to(p.dtype), torch.zeros_like(ent))
                gz.addcmul_(p, gl.unsqueeze(-1), value=-1.0)
                gz.scatter_add_(-1, safe_t[s:e].unsqueeze(-1), gl.unsqueeze(-1))
            spsq_term = None
            if g_spsq is not None:
                spsq_term = 2.0 * g_spsq[s:e].to(p.dtype).unsqueeze(-1) * p * (p - spsq.unsqueeze(-1))
            if g_ent is not None:
                # log π_v + H, over log π's buffer; where π_v == 0 the term π_v·(...) is 0 (avoid -inf·0).
                lph = logp_all.add_(ent.unsqueeze(-1)).masked_fill_(~(p > 0), 0.0)
                gz -= p.mul_(g_ent[s:e].to(p.dtype).unsqueeze(-1)).mul_(lph)  # π is not needed after this
            if spsq_term is not None:
                gz += spsq_term
            if grad is None:
                return gz.to(logits.dtype), None, None, None
            grad[s:e] = gz.to(grad.dtype)
        return grad, None, None, None


def logprob_entropy_from_logits(
    logits: Tensor,
    targets: Tensor,
    chunk_size: int = 1024,
    return_sum_p_sq: bool = False,
    ignore_index: int = -100,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """log π(target) and entropy from logits, in fp32, chunked over rows.

    Args:
        logits: [..., V] any float dtype (bf16/fp16 logits are upcast one chunk at a time, never as a whole).
        targets: [...] long token ids. Positions equal to ``ignore_index`` get logp = 0 and no gradient
            through logp (their entropy is still computed: callers mask).
        chunk_size: rows (tokens) per fp32 chunk; bounds temporaries to ~4·chunk_size·V fp32 values.
        return_sum_p_sq: also return Σ_v π(v)² (for the closed-form logit-gradient norm).

    Returns:
        (logp [...], entropy [...]) or (logp, entropy, sum_p_sq), fp32 (fp64 for fp64 input). Differentiable
        w.r.t. ``logits``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree on leading dims"
        )
    lead = targets.shape
    # reshape may copy a non-contiguous input, but in the input dtype (no fp32 blow-up).
    z = logits.reshape(-1, logits.shape[-1])
    t = targets.reshape(-1).long()
    logp, ent, spsq = _LogpEntropyFn.apply(z, t, int(chunk_size), int(ignore_index))
    if return_sum_p_sq:
        return logp.reshape(lead), ent.reshape(lead), spsq.reshape(lead)
    return logp.reshape(lead), ent.reshape(lead)


def _hidden_chunk(
    h: Tensor, w: Tensor, b: Tensor | None, t: Tensor, ignore_index: int
) -> tuple[Tensor, Tensor, Tensor]:
    """One chunk: project [C, D] hidden states to [C, V] logits and reduce them. Used inside checkpoint."""
    z = F.linear(h, w, b)
    return _LogpEntropyFn.apply(z, t, z.shape[0], ignore_index)


def logprob_entropy_from_hidden(
    hidden: Tensor,
    lm_head_weight: Tensor,
    targets: Tensor,
    chunk_size: int = 256,
    lm_head_bias: Tensor | None = None,
    checkpoint: bool = False,
    return_sum_p_sq: bool = False,
    ignore_index: int = -100,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """log π(target) and entropy straight from final hidden states: the [N, V] logits never exist at once.

    Args:
        hidden: [N, D] final-layer hidden states at the positions that predict ``targets`` (select response positions
            first: DESIGN §8 "compute the LM head only at response positions").
        lm_head_weight: [V, D]; lm_head_bias: [V] or None.
        targets: [N] long.
        chunk_size: rows projected at a time.
        checkpoint: wrap each chunk in ``torch.utils.checkpoint`` (use_reentrant=False). Without it autograd keeps each
            chunk's [C, V] logits for backward, i.e. N·V values in total; with it only the chunk inputs are kept and
            the projection is recomputed in backward, so backward memory is bounded by the chunk size as well.

    Returns:
        (logp [N], entropy [N]) or with ``return_sum_p_sq`` also Σπ² [N]; fp32, differentiable w.r.t. hidden,
        weight and bias.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if hidden.dim() != 2 or targets.dim() != 1 or hidden.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected hidden [N,D] and targets [N], got {tuple(hidden.shape)} and {tuple(targets.shape)}"
        )
    t = targets.long()
    outs: list[tuple[Tensor, Tensor, Tensor]] = []
    for s in range(0, hidden.shape[0], chunk_size):
        h = hidden[s : s + chunk_size]
        tc = t[s : s + chunk_size]
        if checkpoint and torch.is_grad_enabled():
            outs.append(
                _checkpoint(
                    _hidden_chunk, h, lm_head_weight, lm_head_bias, tc, ignore_index, use_reentrant=False
                )
            )
        else:
            outs.append(_hidden_chunk(h, lm_head_weight, lm_head_bias, tc, ignore_index))
    if not outs:
        empty = hidden.new_zeros(0, dtype=_compute_dtype(hidden.dtype))
        return (empty, empty, empty) if return_sum_p_sq else (empty, empty)
    logp = torch.cat([o[0] for o in outs])
    ent = torch.cat([o[1] for o in outs])
    if return_sum_p_sq:
        return logp, ent, torch.cat([o[2] for o in outs])
    return logp, ent


def naive_logprob_entropy(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Reference: full fp32 log_softmax over [..., V] at once. logits [..., V], targets [...] -> (logp, entropy)."""
    logp_all = torch.log_softmax(logits.to(_compute_dtype(logits.dtype)), dim=-1)
    p = logp_all.exp()
    entropy = -torch.where(p > 0, p * logp_all, torch.zeros_like(p)).sum(-1)
    logp = logp_all.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    return logp, entropy


def logit_grad_norm(p_target: Tensor, sum_p_sq: Tensor) -> Tensor:
    """‖∇_z log π(y)‖₂ = ‖e_y − π‖₂ = sqrt(1 − 2π(y) + Σ_v π(v)²), elementwise.

    p_target, sum_p_sq: [...] (π(y) = exp(logp)). Clamped at 0 before the sqrt because rounding can make the
    radicand a hair negative when π is (nearly) one-hot on y.
    """
    return torch.sqrt(torch.clamp(1.0 - 2.0 * p_target + sum_p_sq, min=0.0))


@torch.no_grad()
def logit_grad_norm_from_logits(logits: Tensor, targets: Tensor, chunk_size: int = 1024) -> Tensor:
    """‖e_y − π‖₂ per token from logits [..., V] and targets [...]; chunked like the log-prob. Returns [...] fp32.

    An analysis quantity (DESIGN §4 gradient share), so it is computed without autograd.
    """
    logp, _, spsq = logprob_entropy_from_logits(logits, targets, chunk_size=chunk_size, return_sum_p_sq=True)
    return logit_grad_norm(logp.exp(), spsq)
