"""Token weightings w_{i,t}: the policy gradient uses Â_{i,t} = A_i · w_{i,t} (DESIGN §4).

Built by name with validated parameters::

    w_fn = build_weighting("eapo", alpha=0.7, phi=0.1)
    w = w_fn(entropy, advantage, seq_ids, mask, tau)        # all [N] (or any common shape), w = 0 where mask is False

Registered: ``none``, ``top_entropy(rho)``, ``drop_quadrant(quadrant)``, ``keep_quadrant(quadrant)``,
``eapo(alpha, phi, alpha_neg)``. Add more with ``@register_weighting("name")`` on a ``Weighting`` subclass whose
``__init__`` takes the parameters as keyword arguments and validates them.

About τ: weightings that need the high/low split (``top_entropy``, ``drop_quadrant``, ``keep_quadrant``) take τ from
the caller, so that training, quadrant statistics and the annotate stage all use the same threshold and scope
(batch quantile or a fixed τ). They expose ``rho`` (``needs_tau = True``) so the caller knows which quantile to compute
with ``quadrants.entropy_threshold``; if the caller passes ``tau=None`` they compute the batch-scope τ themselves from
``rho`` over the valid tokens of the call.
"""

from __future__ import annotations

import abc
import inspect
import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from .quadrants import QUADRANT_CODES, QUADRANTS, assign_quadrants, entropy_threshold
from .registry import Registry

__all__ = [
    "EAPO",
    "WEIGHTINGS",
    "DropQuadrant",
    "KeepQuadrant",
    "NoWeighting",
    "TopEntropy",
    "Weighting",
    "build_weighting",
    "per_sequence_mean",
    "register_weighting",
]

WEIGHTINGS: Registry[type[Weighting]] = Registry("weighting", name_attr="name")
#: Class decorator ``@register_weighting("name")``: register a ``Weighting`` subclass (its ``name`` is set).
register_weighting = WEIGHTINGS.register


def build_weighting(name: str, **params: Any) -> Weighting:
    """Instantiate the weighting ``name`` with ``params``.

    Raises ValueError for an unknown name (listing the known ones), an unknown or missing parameter (naming it), or
    an invalid value (naming the parameter and the allowed range).
    """
    cls = WEIGHTINGS[name]
    sig = inspect.signature(cls.__init__)
    accepted = [p for p in sig.parameters.values() if p.name != "self"]
    names = {p.name for p in accepted}
    for key in params:
        if key not in names:
            raise ValueError(f"weighting {name!r} has no parameter {key!r}; accepted: {sorted(names)}")
    for p in accepted:
        if p.default is inspect.Parameter.empty and p.name not in params:
            raise ValueError(f"weighting {name!r} needs parameter {p.name!r}")
    return cls(**params)


def _check_real(
    name: str, value: Any, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False
) -> float:
    """Validate a real parameter in [lo, hi] (with optional open ends); bools and NaN are rejected."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(float(value)):
        raise ValueError(f"parameter {name!r} must be a real number, got {value!r}")
    v = float(value)
    bad_lo = v <= lo if lo_open else v < lo
    bad_hi = v >= hi if hi_open else v > hi
    if bad_lo or bad_hi:
        rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"parameter {name!r} must be in {rng}, got {value!r}")
    return v


def _check_quadrant(value: Any) -> str:
    if value not in QUADRANT_CODES:
        raise ValueError(f"parameter 'quadrant' must be one of {list(QUADRANTS)}, got {value!r}")
    return value


def per_sequence_mean(values: Tensor, seq_ids: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the valid tokens of each sequence, gathered back per token.

    values, seq_ids (any ids, not necessarily dense), mask: same shape [...]. Returns [...]; a sequence with no valid
    token gets 0 (its tokens are masked anyway).
    """
    v = values.reshape(-1)
    m = mask.reshape(-1).to(v.dtype)
    _, idx = torch.unique(seq_ids.reshape(-1), return_inverse=True)
    g = int(idx.max().item()) + 1 if idx.numel() else 0
    total = torch.zeros(g, dtype=v.dtype, device=v.device).index_add_(0, idx, v * m)
    count = torch.zeros(g, dtype=v.dtype, device=v.device).index_add_(0, idx, m)
    mean = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    return mean[idx].reshape(values.shape)


class Weighting(abc.ABC):
    """Base class. Subclasses implement ``_weights``; ``__call__`` checks shapes and zeroes masked tokens.

    Call: ``w(entropy[N], advantage[N], seq_ids[N] long, mask[N] bool, tau: float | None) -> w[N]`` (float dtype of
    ``entropy``, at least fp32). Any common shape works ([B, T] too); ``advantage`` may also be broadcastable (e.g.
    [B, 1]). Weights are detached: they scale the advantage and carry no gradient.
    """

    name: ClassVar[str] = "base"
    needs_tau: ClassVar[bool] = False
    """Whether the weights depend on the high/low entropy split at τ (then ``rho`` says which quantile)."""
    own_threshold: ClassVar[bool] = False
    """True when a ``rho`` given to this weighting is a threshold of its own (``top_entropy`` keeps its own top-ρ
    share even when the caller splits its statistics at another ρ); False when it must split at the caller's τ, as
    the quadrant masks must: the quadrant they drop is then exactly the one the caller counts."""
    rho: float | None = None

    @property
    def params(self) -> dict[str, Any]:
        """The constructor parameters, for logging and lineage."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def __call__(
        self, entropy: Tensor, advantage: Tensor, seq_ids: Tensor, mask: Tensor, tau: float | None = None
    ) -> Tensor:
        if mask.shape != entropy.shape or seq_ids.shape != entropy.shape:
            raise ValueError(
                f"entropy {tuple(entropy.shape)}, seq_ids {tuple(seq_ids.shape)} and mask {tuple(mask.shape)} "
                "must have the same shape"
            )
        dtype = (
            torch.promote_types(entropy.dtype, torch.float32)
            if entropy.is_floating_point()
            else torch.float32
        )
        h = entropy.detach().to(dtype)
        adv = torch.broadcast_to(advantage.detach(), entropy.shape).to(dtype)
        m = mask.bool()
        if self.needs_tau and tau is None:
            assert self.rho is not None
            tau = entropy_threshold(h, m, self.rho)
        w = self._weights(h, adv, seq_ids, m, tau)
        return torch.where(m, w, torch.zeros_like(w))

    @abc.abstractmethod
    def _weights(
        self, entropy: Tensor, advantage: Tensor, seq_ids: Tensor, mask: Tensor, tau: float | None
    ) -> Tensor:
        """The weights of every token (masking is applied by ``__call__``); each registered weighting defines it."""


@register_weighting("none")
class NoWeighting(Weighting):
    """GRPO: w = 1 on every valid token."""

    def __init__(self) -> None:
        pass

    def _weights(self, entropy, advantage, seq_ids, mask, tau):
        return torch.ones_like(entropy)


@register_weighting("top_entropy")
class TopEntropy(Weighting):
    """80/20 ("Beyond the 80/20 rule"): w = 1[H ≥ τ], i.e. the gradient flows only through high-entropy tokens.

    τ should be ``entropy_threshold(..., rho=self.rho)``; with τ from that quantile about ρ of the tokens are kept.
    """

    needs_tau = True
    own_threshold = True

    def __init__(self, rho: float = 0.2) -> None:
        self.rho = _check_real("rho", rho, 0.0, 1.0, lo_open=True)

    @property
    def params(self):
        return {"rho": self.rho}

    def _weights(self, entropy, advantage, seq_ids, mask, tau):
        return (entropy >= tau).to(entropy.dtype)


class _QuadrantMask(Weighting):
    """w = 1[token in quadrant] (keep) or 1 − that (drop). ``rho`` only matters when the caller passes tau=None (then
    τ is the batch (1−ρ) quantile)."""

    needs_tau = True
    keep: bool

    def __init__(self, quadrant: str, rho: float = 0.2) -> None:
        self.quadrant = _check_quadrant(quadrant)
        self.rho = _check_real("rho", rho, 0.0, 1.0, lo_open=True)

    @property
    def params(self):
        return {"quadrant": self.quadrant, "rho": self.rho}

    def _weights(self, entropy, advantage, seq_ids, mask, tau):
        inside = assign_quadrants(entropy, advantage, tau, mask) == QUADRANT_CODES[self.quadrant]
        return (inside if self.keep else ~inside).to(entropy.dtype)


@register_weighting("drop_quadrant")
class DropQuadrant(_QuadrantMask):
    """Ablation: w = 0 on the tokens of one quadrant, 1 elsewhere (tokens with A = 0 keep 1; their Â is 0 anyway)."""

    keep = False


@register_weighting("keep_quadrant")
class KeepQuadrant(_QuadrantMask):
    """Ablation: w = 1 only on the tokens of one quadrant, 0 elsewhere."""

    keep = True


@register_weighting("eapo")
class EAPO(Weighting):
    """EAPO, **this project's formulation**: a sign-preserving, capacity-guided reallocation of each response's
    advantage.

    Honesty note: the EAPO paper's (arXiv 2604.11056) exact token-weighting formula is unpublished. What follows
    is our own formulation of its stated idea (entropy-aware credit assignment, with positive and negative updates
    treated separately), not a reproduction. A paper-exact form can be registered beside it with
    ``@register_weighting``.

    Per response i (tokens grouped by ``seq_ids``, valid tokens only):

    - capacity   c_{i,t} = H_{i,t} · 1[H_{i,t} ≥ φ]           (entropy gated by the floor φ, in nats)
    - ratio      r_{i,t} = c_{i,t} / mean_t c_{i,t}             (mean 1 over the response; all-zero capacity → r = 0)
    - weight     w_{i,t} = (1 − α) + α · r_{i,t},  α ∈ [0, 1]

    α = 0 is GRPO. w ≥ 0, so the sign of A_i is never flipped. When the response has non-zero capacity the mean weight
    over its tokens is exactly 1, so the response's total advantage Σ_t Â_{i,t} = T_i·A_i is preserved and only
    redistributed toward high-entropy (forking) tokens. A response with all-zero capacity (every H < φ) gets
    w = 1 − α everywhere (at α = 1 it is not updated at all).

    ``alpha_neg``: if given, responses with A_i < 0 use α₋ = alpha_neg and the others α; τ is not used.
    """

    def __init__(self, alpha: float, phi: float = 0.0, alpha_neg: float | None = None) -> None:
        self.alpha = _check_real("alpha", alpha, 0.0, 1.0)
        self.phi = _check_real("phi", phi, 0.0, math.inf, hi_open=True)
        self.alpha_neg = None if alpha_neg is None else _check_real("alpha_neg", alpha_neg, 0.0, 1.0)

    @property
    def params(self):
        return {"alpha": self.alpha, "phi": self.phi, "alpha_neg": self.alpha_neg}

    def _weights(self, entropy, advantage, seq_ids, mask, tau):
        cap = torch.where(entropy >= self.phi, entropy, torch.zeros_like(entropy)).clamp(min=0)
        mean_cap = per_sequence_mean(cap, seq_ids, mask)
        r = torch.where(
            mean_cap > 0, cap / mean_cap.clamp(min=torch.finfo(cap.dtype).tiny), torch.zeros_like(cap)
        )
        alpha = torch.full_like(entropy, self.alpha)
        if self.alpha_neg is not None:
            alpha = torch.where(advantage < 0, torch.full_like(alpha, self.alpha_neg), alpha)
        return (1.0 - alpha) + alpha * r
