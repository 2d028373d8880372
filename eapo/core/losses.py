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

import abc
import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from .registry import Registry

__all__ = [
    "AGGREGATIONS",
    "Aggregation",
    "DEFAULT_POLICY_LOSS",
    "POLICY_LOSSES",
    "ClipCov",
    "EntropyBonus",
    "KLCov",
    "PPOClip",
    "PolicyLoss",
    "aggregate",
    "build_policy_loss",
    "k3_kl",
    "policy_loss",
    "policy_loss_terms",
    "register_aggregation",
    "seq_mean_token_mean",
    "seq_mean_token_sum_norm",
    "token_covariance",
    "token_mean",
]

AggFn = Callable[[Tensor, Tensor, "int | None"], Tensor]


@dataclass(frozen=True)
class Aggregation:
    """A loss aggregation: the mean, over its ``unit``s (valid tokens, or sequences with ≥ 1 valid token), of a
    per-unit value. ``total(values[B,T], mask[B,T], norm_len) -> scalar`` is the *sum* over the batch's units, so
    that a micro-batched update can divide each micro-batch's total by the whole minibatch's unit count
    (``count_lengths``) and accumulate exactly the gradient of the minibatch mean (see the module docstring).
    Calling it gives the mean over one batch: ``total / max(count(mask), 1)``."""

    unit: Literal["token", "sequence"]
    total: AggFn

    def count(self, mask: Tensor) -> Tensor:
        """The number of units under ``mask`` [B, T] (a 0-dim tensor)."""
        m = mask.bool()
        return m.sum() if self.unit == "token" else (m.sum(-1) > 0).sum()

    def count_lengths(self, lengths: Iterable[int]) -> float:
        """The number of units in responses of these token lengths."""
        return float(sum(lengths) if self.unit == "token" else sum(1 for n in lengths if n > 0))

    def __call__(self, values: Tensor, mask: Tensor, norm_len: int | None = None) -> Tensor:
        return self.total(values, mask, norm_len) / self.count(mask).clamp(min=1)


AGGREGATIONS: Registry[AggFn] = Registry("aggregation")
"""Aggregations by name: ``Aggregation``s (any ``fn(values[B,T], mask[B,T], norm_len) -> scalar`` reduces a single
batch through ``aggregate``; the trainer's micro-batched update needs an ``Aggregation``)."""
#: Decorator ``@register_aggregation("name")``: add an aggregation to ``AGGREGATIONS``.
register_aggregation = AGGREGATIONS.register


def _token_total(values: Tensor, mask: Tensor, norm_len: int | None = None) -> Tensor:
    return (values * mask.to(values.dtype)).sum()


def _seq_token_mean_total(values: Tensor, mask: Tensor, norm_len: int | None = None) -> Tensor:
    m = mask.to(values.dtype)
    n_tok = m.sum(-1)
    per_seq = (values * m).sum(-1) / n_tok.clamp(min=1)
    return (per_seq * (n_tok > 0)).sum()


def _seq_token_sum_norm_total(values: Tensor, mask: Tensor, norm_len: int | None = None) -> Tensor:
    L = values.shape[-1] if norm_len is None else int(norm_len)
    if L < 1:
        raise ValueError(f"norm_len must be >= 1, got {norm_len}")
    m = mask.to(values.dtype)
    per_seq = (values * m).sum(-1) / L
    return (per_seq * (m.sum(-1) > 0)).sum()


token_mean = register_aggregation("token_mean")(Aggregation("token", _token_total))
"""DAPO: Σ over all valid tokens / number of valid tokens (0 if there are none). [B,T],[B,T] -> scalar."""
seq_mean_token_mean = register_aggregation("seq_mean_token_mean")(Aggregation("sequence", _seq_token_mean_total))
"""GRPO: mean over each sequence's valid tokens, then mean over sequences with ≥ 1 valid token. -> scalar."""
seq_mean_token_sum_norm = register_aggregation("seq_mean_token_sum_norm")(
    Aggregation("sequence", _seq_token_sum_norm_total))
"""Dr.GRPO: per-sequence token *sum* / a constant ``norm_len`` (default T = values.shape[-1]), then mean over
sequences with ≥ 1 valid token. The constant removes GRPO's length bias (long wrong answers under-penalised).
-> scalar."""


def aggregate(values: Tensor, mask: Tensor, agg: str = "token_mean", norm_len: int | None = None) -> Tensor:
    """Reduce per-token ``values`` [B, T] under ``mask`` [B, T] with the aggregation ``agg`` -> 0-dim tensor."""
    fn = AGGREGATIONS[agg]
    if values.dim() != 2 or values.shape != mask.shape:
        raise ValueError(
            f"expected values and mask of equal shape [B, T], got {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    return fn(values, mask, norm_len)


def k3_kl(logp: Tensor, ref_logp: Tensor, clamp: float = 10.0) -> Tensor:
    """Schulman's k3 estimator of KL(π_θ ‖ π_ref) per token for samples from π_θ: exp(d) − d − 1, d = ref_logp − logp.

    Non-negative and low-variance. d is clamped to ±``clamp`` (as verl does) so one wild token cannot blow up the loss.
    """
    d = torch.clamp(ref_logp - logp, min=-clamp, max=clamp)
    return torch.exp(d) - d - 1.0


def _check_kl(kl_coef: float, ref_logp: Tensor | None) -> None:
    """The KL-to-reference term's preconditions, shared by ``policy_loss_terms`` and every ``PolicyLoss``."""
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if kl_coef > 0 and ref_logp is None:
        raise ValueError("kl_coef > 0 needs ref_logp")


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
    _check_kl(kl_coef, ref_logp)
    m = mask.bool()
    ratio, pg1, pg2, clipped = _ppo_parts(logp, old_logp.detach(), adv_tokens.detach(), m, clip_low, clip_high)
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
    parts = {"pg": pg.detach(), "clipped": clipped, "ratio": ratio.detach()}
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


# --------------------------------------------------------------------------------------------------------------------
# Policy losses by name: the clipped PPO/GRPO surrogate and the entropy-management baselines (issue 10 §4)
# --------------------------------------------------------------------------------------------------------------------


class PolicyLoss(abc.ABC):
    """A per-token policy loss, picked by name (``build_policy_loss``) with validated parameters.

    Call: ``loss(logp, old_logp, adv_tokens, mask, *, clip_low, clip_high, ref_logp=None, kl_coef=0.0,
    entropy=None, generator=None) -> (terms [B, T], parts)``, all tensors [B, T] as in ``policy_loss_terms``.
    ``terms`` is unreduced and 0 on masked tokens (the caller aggregates, see the module docstring); ``parts`` holds
    detached ``ratio`` [B,T], ``clipped`` [B,T] bool (the PPO clip branch was taken) and ``selected`` [B,T] bool
    (tokens a covariance rule singled out; all False for losses without one). ``entropy`` is the per-token entropy
    *with* gradient (only losses with ``needs_entropy`` use it); ``generator`` seeds random token selection. The
    KL-to-reference term (``kl_coef`` · k3) is added by every loss, as in ``policy_loss_terms``.
    """

    name: ClassVar[str] = "base"
    needs_entropy: ClassVar[bool] = False
    #: True when a token with Â = 0 gets loss 0 and gradient 0 whatever else its batch holds (no term of its own and
    #: no statistic over the batch), so the trainer may leave responses whose Â is 0 everywhere out of the update
    #: (``train.skip_zero_advantage``). False unless a loss says so.
    inert_at_zero_advantage: ClassVar[bool] = False

    @property
    def params(self) -> dict[str, Any]:
        """The constructor parameters, for logging and lineage."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params.items())})"

    def __call__(self, logp: Tensor, old_logp: Tensor, adv_tokens: Tensor, mask: Tensor, *, clip_low: float = 0.2,
                 clip_high: float = 0.28, ref_logp: Tensor | None = None, kl_coef: float = 0.0,
                 entropy: Tensor | None = None, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, dict[str, Tensor]]:
        _check_shapes(logp=logp, old_logp=old_logp, adv_tokens=adv_tokens, mask=mask, ref_logp=ref_logp,
                      entropy=entropy)
        if self.needs_entropy and entropy is None:
            raise ValueError(f"policy loss {self.name!r} needs the per-token entropy (with gradient)")
        _check_kl(kl_coef, ref_logp)
        m = mask.bool()
        pg, parts = self._terms(logp, old_logp.detach(), adv_tokens.detach(), m, clip_low, clip_high, entropy,
                                generator)
        if kl_coef > 0:
            pg = pg + kl_coef * k3_kl(logp, ref_logp.detach())
        parts.setdefault("selected", torch.zeros_like(m))
        return torch.where(m, pg, torch.zeros_like(pg)), parts

    @abc.abstractmethod
    def _terms(self, logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, clip_low: float, clip_high: float,
               entropy: Tensor | None, generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-token loss before the KL-to-reference term and masking, and its parts."""


POLICY_LOSSES: Registry[type[PolicyLoss]] = Registry("policy loss", name_attr="name")
"""``PolicyLoss`` subclasses by name: ``@POLICY_LOSSES.register("name")`` on the class."""
#: The loss a variant uses unless it names another.
DEFAULT_POLICY_LOSS = "ppo_clip"


def build_policy_loss(name: str, **params: Any) -> PolicyLoss:
    """Instantiate the policy loss ``name`` with ``params``; ValueError naming an unknown loss or parameter, or a
    value out of range."""
    cls = POLICY_LOSSES[name]
    accepted = {p for p in inspect.signature(cls.__init__).parameters if p != "self"}
    for key in params:
        if key not in accepted:
            raise ValueError(f"policy loss {name!r} has no parameter {key!r}; accepted: {sorted(accepted)}")
    return cls(**params)


def _positive(name: str, value: Any, upper: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 < float(value) <= upper):
        raise ValueError(f"parameter {name!r} must be a number in (0, {upper}], got {value!r}")
    return float(value)


def _ppo_parts(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, clip_low: float, clip_high: float
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(ratio, unclipped −r·Â, clipped −clip(r)·Â, clip taken): the clipped surrogate's parts, for
    ``policy_loss_terms`` and every ``PolicyLoss`` that clips. ``old_logp`` and ``adv`` are taken as constants."""
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low/clip_high must be >= 0, got {clip_low}, {clip_high}")
    # Clamp the log-ratio before exp: masked/padded positions may hold garbage and exp would overflow to inf·0 = NaN.
    log_ratio = torch.where(mask, logp - old_logp, torch.zeros_like(logp)).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    pg1 = -ratio * adv
    pg2 = -torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    return ratio, pg1, pg2, (pg2 > pg1) & mask


def token_covariance(adv: Tensor, logp: Tensor, mask: Tensor) -> Tensor:
    """Cui et al. 2025's per-token centred cross-product (Â_t − mean Â)·(log π_t − mean log π), means over the valid
    tokens of the batch it is given; detached, and −inf on masked tokens so that no selection picks them."""
    m = mask.to(adv.dtype)
    n = m.sum().clamp(min=1)
    a = adv.detach()
    lp = logp.detach()
    cov = (a - (a * m).sum() / n) * (lp - (lp * m).sum() / n)
    return torch.where(mask, cov, torch.full_like(cov, -math.inf))


@POLICY_LOSSES.register("ppo_clip")
class PPOClip(PolicyLoss):
    """The clipped PPO/GRPO/DAPO surrogate of ``policy_loss_terms`` (decoupled clip range ε_low/ε_high). At Â = 0 both
    branches are −r·0, so the token's loss and gradient are 0: inert."""

    inert_at_zero_advantage = True

    def __init__(self) -> None:
        pass

    def _terms(self, logp, old_logp, adv, mask, clip_low, clip_high, entropy, generator):
        ratio, pg1, pg2, clipped = _ppo_parts(logp, old_logp, adv, mask, clip_low, clip_high)
        return torch.maximum(pg1, pg2), {"ratio": ratio.detach(), "clipped": clipped}


@POLICY_LOSSES.register("clip_cov")
class ClipCov(PolicyLoss):
    """Clip-Cov (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models",
    arXiv 2505.22617, §5; verl ``compute_policy_loss_clip_cov``): entropy collapse is driven by tokens whose
    log-probability and advantage covary strongly, so a small random share of them is taken out of the update.

    Per batch of valid tokens: cov_t = (Â_t − mean Â)(log π_t − mean log π). Among the tokens the PPO clip did not
    already clip and with ``clip_cov_lb`` < cov_t < ``clip_cov_ub``, ``max(1, ⌊clip_ratio · N⌋)`` (N valid tokens)
    are drawn uniformly at random (seeded by ``generator``) and get loss 0 (no gradient); all others get the clipped
    PPO surrogate. Defaults are the paper's and verl's: clip_ratio 2e-4, bounds (1, 5). Deviation: verl's recipe also
    widens the PPO clip range; here the variant shares the study's ε_low/ε_high, so only the covariance rule differs
    from GRPO.
    """

    def __init__(self, clip_ratio: float = 2e-4, clip_cov_lb: float = 1.0, clip_cov_ub: float = 5.0) -> None:
        self.clip_ratio = _positive("clip_ratio", clip_ratio, 1.0)
        for key, v in (("clip_cov_lb", clip_cov_lb), ("clip_cov_ub", clip_cov_ub)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                raise ValueError(f"parameter {key!r} must be a finite number, got {v!r}")
        if not clip_cov_lb < clip_cov_ub:
            raise ValueError(f"clip_cov_lb ({clip_cov_lb}) must be < clip_cov_ub ({clip_cov_ub})")
        self.clip_cov_lb, self.clip_cov_ub = float(clip_cov_lb), float(clip_cov_ub)

    @property
    def params(self):
        return {"clip_ratio": self.clip_ratio, "clip_cov_lb": self.clip_cov_lb, "clip_cov_ub": self.clip_cov_ub}

    def _terms(self, logp, old_logp, adv, mask, clip_low, clip_high, entropy, generator):
        ratio, pg1, pg2, clipped = _ppo_parts(logp, old_logp, adv, mask, clip_low, clip_high)
        cov = token_covariance(adv, logp, mask)
        eligible = torch.nonzero(((cov > self.clip_cov_lb) & (cov < self.clip_cov_ub) & mask & ~clipped).reshape(-1))
        n_sel = max(int(self.clip_ratio * int(mask.sum())), 1)
        selected = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
        if len(eligible):
            perm = torch.randperm(len(eligible), generator=generator)[:n_sel].to(eligible.device)
            selected[eligible[perm, 0]] = True
        selected = selected.reshape(mask.shape)
        pg = torch.where(selected, torch.zeros_like(pg1), torch.maximum(pg1, pg2))
        return pg, {"ratio": ratio.detach(), "clipped": clipped, "selected": selected}


@POLICY_LOSSES.register("kl_cov")
class KLCov(PolicyLoss):
    """KL-Cov (Cui et al. 2025, arXiv 2505.22617, §5; verl ``compute_policy_loss_kl_cov``): the plain
    importance-weighted policy gradient −r·Â on every token (no ratio clipping), plus a KL penalty
    ``ppo_kl_coef`` · |log π_θ − log π_old| on the ``max(1, ⌊kl_cov_ratio · N⌋)`` valid tokens with the largest
    covariance cov_t = (Â_t − mean Â)(log π_t − mean log π) (ties broken by position). Defaults are verl's:
    kl_cov_ratio 2e-4, ppo_kl_coef 1. The study's ε_low/ε_high are therefore unused by this loss, as in the paper.
    """

    def __init__(self, kl_cov_ratio: float = 2e-4, ppo_kl_coef: float = 1.0) -> None:
        self.kl_cov_ratio = _positive("kl_cov_ratio", kl_cov_ratio, 1.0)
        self.ppo_kl_coef = _positive("ppo_kl_coef", ppo_kl_coef)

    @property
    def params(self):
        return {"kl_cov_ratio": self.kl_cov_ratio, "ppo_kl_coef": self.ppo_kl_coef}

    def _terms(self, logp, old_logp, adv, mask, clip_low, clip_high, entropy, generator):
        log_ratio = torch.where(mask, logp - old_logp, torch.zeros_like(logp)).clamp(-20.0, 20.0)
        ratio = torch.exp(log_ratio)
        pg = -ratio * adv
        n_valid = int(mask.sum())
        selected = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
        if n_valid:
            k = max(1, int(n_valid * self.kl_cov_ratio))
            cov = token_covariance(adv, logp, mask).reshape(-1)
            # A stable descending sort: equal covariances are taken in position order, deterministically.
            top = torch.sort(cov, descending=True, stable=True).indices[:k]
            selected[top] = True
        selected = selected.reshape(mask.shape)
        pg = torch.where(selected, pg + self.ppo_kl_coef * log_ratio.abs(), pg)
        return pg, {"ratio": ratio.detach(), "clipped": torch.zeros_like(mask), "selected": selected}


@POLICY_LOSSES.register("entropy_bonus")
class EntropyBonus(PolicyLoss):
    """Entropy regularisation: the clipped PPO surrogate minus ``coef`` · H_t per token, so maximising the objective
    also raises the policy's entropy (the PPO entropy bonus c₂, Schulman et al. 2017, arXiv 1707.06347; the baseline
    Cui et al. 2025 argue covariance control beats). H_t is the full-vocabulary entropy at temperature 1 *with*
    gradient (``eapo.core.entropy``'s chunked function). Default coef 1e-3: verl's long-standing
    ``actor.entropy_coeff`` default for GRPO/PPO on LMs.
    """

    needs_entropy = True

    def __init__(self, coef: float = 1e-3) -> None:
        self.coef = _positive("coef", coef)

    @property
    def params(self):
        return {"coef": self.coef}

    def _terms(self, logp, old_logp, adv, mask, clip_low, clip_high, entropy, generator):
        ratio, pg1, pg2, clipped = _ppo_parts(logp, old_logp, adv, mask, clip_low, clip_high)
        ent = torch.where(mask, entropy, torch.zeros_like(entropy))
        return torch.maximum(pg1, pg2) - self.coef * ent, {"ratio": ratio.detach(), "clipped": clipped}
