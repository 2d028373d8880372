"""Outcome advantages, per prompt group (DESIGN §4), picked by name from ``ADVANTAGES``.

Every function has the signature ``fn(rewards: Tensor[B], group_ids: Tensor[B] | Sequence, eps: float = 1e-6)
-> Tensor[B]``. Groups may have any size and their members may sit anywhere in the batch. Conventions shared by all:

- a group whose rewards are all equal (zero variance, e.g. all correct or all wrong) gets advantage **exactly 0**,
  not "nearly 0" from floating-point error in the mean: such a group carries no learning signal;
- a group of size 1 gets 0 (no baseline can be formed from the response itself).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .registry import Registry

__all__ = [
    "ADVANTAGES",
    "AdvantageFn",
    "dr_grpo",
    "get_advantage_fn",
    "group_index",
    "grpo",
    "register_advantage",
    "rloo",
    "token_advantages",
]

AdvantageFn = Callable[..., Tensor]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage")
#: Decorator ``@register_advantage("name")``: add an estimator to ``ADVANTAGES``.
register_advantage = ADVANTAGES.register


def get_advantage_fn(name: str) -> AdvantageFn:
    """The registered estimator called ``name``; ``UnknownName`` (a ValueError) listing the known names otherwise."""
    return ADVANTAGES[name]


def group_index(group_ids: Tensor | Sequence, device: torch.device | None = None) -> tuple[Tensor, int]:
    """Map arbitrary group ids (ints or any hashables such as prompt-id strings) to dense indices.

    Returns (index [B] long in [0, G), G).
    """
    if isinstance(group_ids, Tensor):
        _, inv = torch.unique(group_ids.reshape(-1), return_inverse=True)
        inv = inv.to(device) if device is not None else inv
        return inv, int(inv.max().item()) + 1 if inv.numel() else 0
    seen: dict = {}
    idx = [seen.setdefault(g, len(seen)) for g in group_ids]
    return torch.tensor(idx, dtype=torch.long, device=device), len(seen)


def _group_moments(
    rewards: Tensor, group_ids: Tensor | Sequence
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, int]:
    """Per-element group statistics, gathered back to [B]: (rewards fp, mean, count, degenerate, index, G).

    ``degenerate`` is True where the group has a single member or all members have the same reward.
    """
    r = rewards.reshape(-1)
    r = r if r.is_floating_point() else r.float()
    idx, g = group_index(group_ids, device=r.device)
    if idx.numel() != r.numel():
        raise ValueError(f"rewards has {r.numel()} elements but group_ids has {idx.numel()}")
    count = torch.zeros(g, dtype=r.dtype, device=r.device).index_add_(0, idx, torch.ones_like(r))
    total = torch.zeros(g, dtype=r.dtype, device=r.device).index_add_(0, idx, r)
    mean = total / count
    gmax = torch.full((g,), -torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(0, idx, r, "amax")
    gmin = torch.full((g,), torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(0, idx, r, "amin")
    degenerate = (count <= 1) | (gmax == gmin)
    return r, mean[idx], count[idx], degenerate[idx], idx, g


@register_advantage("grpo")
def grpo(rewards: Tensor, group_ids: Tensor | Sequence, eps: float = 1e-6) -> Tensor:
    """GRPO: A_i = (R_i − mean_g R) / (std_g R + eps).

    std is the *unbiased* (Bessel-corrected, n−1) sample std, i.e. ``torch.std``'s default, as TRL's GRPOTrainer and
    verl's ``compute_grpo_outcome_advantage`` use. For G = 8 binary rewards it differs from the population std by
    sqrt(8/7) ≈ 1.07, a pure rescaling.

    ε differs from TRL: TRL's GRPOTrainer divides by (std + 1e-4); the default here is 1e-6, as verl's
    ``compute_grpo_outcome_advantage`` uses. With binary rewards a mixed group has std = sqrt(c(G−c)/(G(G−1))) ≥
    sqrt(1/G) (c correct of G), so ε shrinks |A| by a relative ε/std ≤ ε·sqrt(G): at most 2.8e-4 with TRL's ε and
    2.8e-6 with ours at G = 8. Pass ``eps=1e-4`` to match TRL exactly.

    rewards: [B]; group_ids: [B]. Returns [B] float.
    """
    r, mean, count, degenerate, idx, g = _group_moments(rewards, group_ids)
    centred = r - mean
    sq = torch.zeros(g, dtype=r.dtype, device=r.device).index_add_(0, idx, centred * centred)[idx]
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    adv = centred / (std + eps)
    return torch.where(degenerate, torch.zeros_like(adv), adv)


@register_advantage("dr_grpo")
def dr_grpo(rewards: Tensor, group_ids: Tensor | Sequence, eps: float = 1e-6) -> Tensor:
    """Dr.GRPO: A_i = R_i − mean_g R (no std normalisation, which biases toward easy/hard prompts).

    ``eps`` is accepted for a uniform signature and unused. rewards: [B]; group_ids: [B]. Returns [B] float.
    """
    r, mean, _, degenerate, _, _ = _group_moments(rewards, group_ids)
    adv = r - mean
    return torch.where(degenerate, torch.zeros_like(adv), adv)


@register_advantage("rloo")
def rloo(rewards: Tensor, group_ids: Tensor | Sequence, eps: float = 1e-6) -> Tensor:
    """RLOO: A_i = R_i − mean_{j≠i} R_j = n/(n−1)·(R_i − mean_g R) (leave-one-out baseline, unbiased).

    ``eps`` is unused. rewards: [B]; group_ids: [B]. Returns [B] float.
    """
    r, mean, count, degenerate, _, _ = _group_moments(rewards, group_ids)
    adv = (r - mean) * count / (count - 1).clamp(min=1)
    return torch.where(degenerate, torch.zeros_like(adv), adv)


def token_advantages(adv: Tensor, mask: Tensor) -> Tensor:
    """Broadcast response advantages [B] over tokens: returns [B, T] = adv[:, None] · mask (0 on padding)."""
    return adv.reshape(-1, 1) * mask.to(adv.dtype)
