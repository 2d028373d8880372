"""Online RLVR training: GRPO and its entropy-aware variants (DESIGN §4-§5), CPU-first and exactly reproducible.

One training step ``s`` (``train`` reads top to bottom in this order):

1. **prompts**: ``prompts_per_step`` prompts from a seeded permutation of the prompt list per epoch, walked in order,
   so the choice depends only on (``seed``, ``s``) (see ``step_prompt_indices``).
2. **sample** ``group_size`` responses per prompt from the *current* policy (``eapo.sampler.sample``), with a sampling
   seed derived from (``seed``, ``s``, rank): a resumed run draws exactly the samples the uninterrupted run drew.
3. **reward** each response (``RewardScorer``, opened once per run; or an injected ``reward_fn``).
4. **annotate**: group advantages A_i (``cfg.advantage``), the batch entropy threshold τ (top ``cfg.rho`` share of
   the batch's response tokens), quadrants, the variant's token weights w and Â = A·w.
5. **update**: ``ppo_epochs`` × ``minibatches`` AdamW steps of the clipped surrogate, each minibatch accumulated over
   micro-batches so that the micro-batched gradient equals the full-minibatch gradient.
6. **metrics** row (``STEP_KEYS``), ``on_step(row)``, one log line; **checkpoint** on cadence.

Old log-probs. π_old is the sampler's record: the exact log-prob of each sampled token under the policy that sampled
it, at temperature 1 on the full vocabulary (DESIGN §4). With ``temperature != 1`` (or ``top_p < 1``) the tokens were
drawn from a different (tempered / truncated) behaviour distribution, and the ratio r = π_θ/π_old is still taken
against the T = 1 policy, as verl does: the importance weight corrects for policy change between sampling and update,
not for the sampling temperature. The old log-probs come from the sampler's KV-cache decode while the update's forward
is a padded batched pass, so on the first minibatch r = 1 up to float rounding (~1e-6), not bit-exactly.

Memory (DESIGN §8). The update never builds [B, T, V] logits: the decoder runs without its head, the hidden states at
response positions are gathered, and ``logprob_entropy_from_hidden`` projects them through the LM head in chunks of
``chunk_size`` rows with activation checkpointing. Micro-batches are padded on the right to their own longest row only,
and a minibatch's rows are sorted by length before it is cut into micro-batches, so similar lengths share one.

Shared prompts (``grouped_logprobs``). The G responses of a group share their prompt, and all prompts share the chat
template's prefix, so for a Llama-like model (``supports_prefix_sharing``) a micro-batch runs the common prefix once,
each distinct prompt once and the responses against the resulting KV cache, all *with* gradient: the prompt's keys and
values are gathered out to their rows differentiably, so the parameter gradient keeps every path of the
full-sequence forward and equals it up to fp32 rounding (~1e-6 relative). Rows are then ordered by prompt, so a
group's rows share micro-batches. Wrapped (DDP) models and other cache layouts fall back to the full-sequence
``sequence_logprobs``, which also stays the reference.

Metrics row (``STEP_KEYS``; python ints/floats, always finite, 0.0 where undefined). Sample statistics
(``reward_mean``, ``accuracy`` = share of reward == 1, ``entropy_mean`` per token, ``response_length`` per response,
``tokens``, ``tau``, ``mixed_groups`` = share of groups whose rewards are not all equal, ``count_*`` per quadrant)
describe the step's samples before the update. ``loss`` (surrogate + KL term, as optimised) and ``grad_norm``
(pre-clip total norm) are means over the step's optimizer steps; ``clip_frac`` and ``approx_kl`` (k3 estimate of
KL(π_old ‖ π_θ)) are token means over every update of the step. ``lr`` is the rate the step trained at.
``grad_share_*`` is each quadrant's share of Σ|A|·‖∇_z log π‖ (w = 1) and ``weighted_grad_share_*`` the same with
the variant's Â = A·w, ‖∇_z log π‖ from the sampler's π(y) and Σπ². ``tokens_per_s`` is sampling throughput and
``seconds`` the step's wall time without the checkpoint write: the only two columns that differ between runs.

Reproducibility. On one CPU process, the same inputs give bit-identical weights and metrics; a run killed after any
step and restarted (it resumes from the latest checkpoint in ``out_dir``) ends bit-identical to an uninterrupted one.
Every random choice (prompts, samples, minibatch order, dropout) is seeded from (``seed``, step, rank) rather than
drawn from a global stream, and the optimizer / scheduler state and the metrics rows are checkpointed exactly.

Distributed. Under ``accelerate launch`` with W processes each rank takes a contiguous 1/W shard of the step's prompts
(``prompts_per_step`` must be divisible by W), samples and scores it, and the ranks all-reduce the loss normalisers
(global token / sequence counts), gather the entropies for τ and sum the metric counters. Only the main process
writes files or calls ``on_step``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from eapo import checkpoint
from eapo.config import ModelConfig, RewardConfig, TrainConfig, VariantConfig
from eapo.contracts import STEP_COLUMNS
from eapo.core.advantages import get_advantage_fn
from eapo.core.entropy import logit_grad_norm, logprob_entropy_from_hidden
from eapo.core.losses import DEFAULT_POLICY_LOSS, PolicyLoss, build_policy_loss, policy_loss_terms
from eapo.core.quadrants import QUADRANTS, assign_quadrants, entropy_threshold, quadrant_stats
from eapo.core.weighting import build_weighting
from eapo.policy import Policy, build_prompt_ids
from eapo.reward import RewardScorer
from eapo.sampler import Sample, sample

__all__ = [
    "STEP_KEYS",
    "Rollout",
    "TrainResult",
    "TrainingDiverged",
    "accumulate_gradients",
    "collate",
    "grouped_logprobs",
    "loss_denominator",
    "sequence_logprobs",
    "step_prompt_indices",
    "supports_prefix_sharing",
    "train",
]

logger = logging.getLogger("eapo.train")

#: The keys of a per-step metrics row, in order (the ``steps`` contract in ``eapo.contracts`` checks them).
#: Keys that measure wall time: the only ones allowed to differ between a resumed and an uninterrupted run. They
#: are logged and kept in the stage's run record, not in the steps table.
WALL_TIME_KEYS = ("tokens_per_s", "seconds")
STEP_KEYS: tuple[str, ...] = (*(name for name, _ in STEP_COLUMNS), *WALL_TIME_KEYS)
#: TrainConfig fields that may change between a checkpoint and its resume (they do not change the trajectory).
_RESUMABLE_CHANGES = {"steps", "checkpoint_every", "reuse_rollouts", "max_update_ratio"}

RewardFn = Callable[[list[str], list[str]], list[float]]


class TrainingDiverged(RuntimeError):
    """The loss, the gradient norm or the weights became NaN/inf, or one optimizer update was larger than
    ``train.max_update_ratio`` times the weights. Raised before the step's checkpoint, so the last checkpoint on disk
    is the last good state."""

    def __init__(self, step: int, what: str, detail: str | None = None):
        why = detail if detail is not None else f"non-finite {what}"
        super().__init__(f"training diverged at step {step}: {why}; the last good checkpoint is kept")
        self.step = step
        self.what = what


def _global_norm(tensors) -> float:
    """‖(t_1, t_2, ...)‖₂ of all elements (fp32 per tensor, combined in float64)."""
    return math.sqrt(sum(float(torch.linalg.vector_norm(t.float())) ** 2 for t in tensors))


class _UpdateGuard:
    """Divergence beyond NaN/inf: after each optimizer update, the weights must be finite and the update's relative
    size ‖θ_after − θ_before‖ / ‖θ_before‖ (over all trainable parameters) at most ``max_ratio`` (``None``: no
    bound, and no copy of the weights is kept). With lr 1e6 the tiny model's first update is ~10^7 times its weights
    while the loss stays finite and the gradient norm goes to 0: only this catches it."""

    def __init__(self, params, max_ratio: float | None):
        self.params = [p for p in params if p.requires_grad]
        self.max_ratio = max_ratio
        self.before_step = None if max_ratio is None else [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def snapshot(self) -> None:
        if self.before_step is not None:
            for b, p in zip(self.before_step, self.params):
                b.copy_(p.detach())

    @torch.no_grad()
    def check(self, step: int) -> None:
        norm = _global_norm(p.detach() for p in self.params)
        if not math.isfinite(norm):
            raise TrainingDiverged(step, "weights")
        if self.before_step is None:
            return
        before = _global_norm(self.before_step)
        delta = _global_norm(p.detach() - b for p, b in zip(self.params, self.before_step))
        ratio = delta / max(before, 1e-12)
        if not ratio <= self.max_ratio:
            raise TrainingDiverged(step, "update", f"an optimizer update of {ratio:.3g} × the weights' norm "
                                                   f"(train.max_update_ratio = {self.max_ratio})")


@dataclass
class TrainResult:
    steps: list[dict]
    """Metrics rows of every completed step (including those restored from a checkpoint)."""
    model_dir: Path
    """``out_dir/model``: the final HF checkpoint (not written when ``stop_after_step`` ended the run early)."""
    resumed_from: int | None
    """The step of the checkpoint this run resumed from, or None for a fresh run."""
    seconds: float
    """Wall time of this call."""


@dataclass
class Rollout:
    """One sampled response, annotated for the update. Per-token lists are aligned with ``response_ids``."""

    prompt_ids: list[int]
    response_ids: list[int]
    old_logp: list[float]
    adv_tokens: list[float]
    """Â_{i,t} = A_i · w_{i,t}: the advantage each token is trained with."""


# ----------------------------------------------------------------------------------------------------------------------
# The forward used for training (and reused by the annotate stage and benchmarks)


def _final_hidden(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Final (post-norm) hidden states [B, T, D], without running the LM head over every position."""
    from accelerate.utils import extract_model_from_parallel

    inner = extract_model_from_parallel(model)
    base = getattr(inner, "base_model", None)
    if model is inner and base is not None and base is not inner:
        return base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    # A wrapped model (DDP, ...) must be called through its wrapper, whose forward arms the gradient all-reduce.
    # logits_to_keep=1 keeps the head's work to one position per row; hidden_states[-1] is the post-norm state.
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, output_hidden_states=True,
                logits_to_keep=1)
    return out.hidden_states[-1]


def sequence_logprobs(
    model, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor, chunk_size: int = 256,
    entropy_grad: bool = False,
) -> tuple[Tensor, Tensor]:
    """log π(token) and the full-vocabulary entropy H at response positions, temperature 1, fp32.

    Args:
        model: a causal LM (HF ``*ForCausalLM``; may be wrapped by accelerate/DDP).
        input_ids, attention_mask: [B, T] prompt + response, padded on the right.
        response_mask: [B, T] bool, True where ``input_ids`` is a response token (scored given its prefix). Column 0
            must be False: a scored token needs a preceding token.
        chunk_size: rows per LM-head chunk (bounds the [chunk, V] temporaries in forward and backward).

    Returns:
        (logp [B, T], entropy [B, T]), zero outside ``response_mask``; ``logp`` is differentiable, and ``entropy``
        too with ``entropy_grad`` (an entropy bonus), else detached.
        Only the response positions go through the LM head: [B, T, V] logits never exist.
    """
    response_mask = response_mask.bool()
    if response_mask.shape != input_ids.shape:
        raise ValueError(f"response_mask {tuple(response_mask.shape)} != input_ids {tuple(input_ids.shape)}")
    if bool(response_mask[:, 0].any()):
        raise ValueError("response_mask[:, 0] must be False: a response token needs a preceding prompt token")
    hidden = _final_hidden(model, input_ids, attention_mask)
    from accelerate.utils import extract_model_from_parallel

    head = extract_model_from_parallel(model).get_output_embeddings()
    # Position t-1 predicts token t: gather the predicting hidden states of exactly the response tokens.
    predict = response_mask[:, 1:]
    h = hidden[:, :-1][predict]
    targets = input_ids[:, 1:][predict]
    logp, ent = logprob_entropy_from_hidden(h, head.weight, targets, chunk_size=chunk_size,
                                            lm_head_bias=getattr(head, "bias", None), checkpoint=True)
    # Row-major order of True entries is the same in `predict` and in `response_mask` (its column 0 is False).
    zeros = torch.zeros(response_mask.shape, dtype=logp.dtype, device=logp.device)
    return (zeros.masked_scatter(response_mask, logp),
            zeros.masked_scatter(response_mask, ent if entropy_grad else ent.detach()))


def supports_prefix_sharing(model) -> bool:
    """Whether ``grouped_logprobs`` can run ``model``: an unwrapped HF decoder whose base model takes
    ``attention_mask``, ``position_ids`` and a ``DynamicCache`` of plain (full-attention) ``DynamicLayer`` layers, as
    Llama does. A wrapped model (DDP, ...) must be called once per backward through its wrapper, and sliding-window
    or hybrid caches have other mask rules: both take the full-sequence path (``sequence_logprobs``)."""
    from accelerate.utils import extract_model_from_parallel

    if extract_model_from_parallel(model) is not model:
        return False
    base = getattr(model, "base_model", None)
    config = getattr(model, "config", None)
    if base is None or base is model or config is None:
        return False
    if getattr(config, "model_type", None) not in _PREFIX_SHARING_MODEL_TYPES:
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer

        layers = DynamicCache(config=config).layers
    except Exception:  # noqa: BLE001 - an unknown cache API is a reason to fall back, not to fail
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


#: Decoders whose base model follows Llama's cache/mask/position conventions (checked further by
#: ``supports_prefix_sharing``).
_PREFIX_SHARING_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def _right_pad(rows: Sequence[Sequence[int]], pad_id: int, width: int, device) -> tuple[Tensor, Tensor]:
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        n = min(len(r), width)
        if n:
            ids[i, :n] = torch.as_tensor(list(r[:n]), dtype=torch.long, device=device)
            mask[i, :n] = 1
    return ids, mask


def grouped_logprobs(
    model,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    chunk_size: int = 256,
    *,
    min_shared: int = 4,
    entropy_grad: bool = False,
) -> tuple[Tensor, Tensor]:
    """``sequence_logprobs`` in response layout, with every distinct prompt computed once, with gradient.

    Rows that share a prompt (a GRPO group) share its forward: the prompt runs once and its per-layer keys/values
    are indexed out to its rows (a differentiable gather, whose backward sums the rows' gradients into the shared
    prompt activations), then the responses run against that cache. The prefix common to all distinct prompts (the
    chat template and system prompt) likewise runs once, with batch 1. Gradients flow through every path the
    full-sequence forward has (response tokens → prompt keys/values → parameters), so log-probs, entropies and the
    parameter gradient equal ``sequence_logprobs``'s up to fp32 rounding; only the prompt work shrinks by the
    number of rows that share it.

    Layout: [common prefix][prompt suffix, right-padded][response, right-padded], padding masked out, explicit
    ``position_ids`` counting real tokens, so each row sees exactly its own prompt + response (right padding leaves
    no fully masked query row). Token j of a response is predicted from the hidden state before it: j = 0 from the
    prompt's last position, j ≥ 1 from response position j - 1; the last response token is never fed.

    Args:
        model: an unwrapped HF causal LM for which ``supports_prefix_sharing`` holds.
        prompts, responses: token ids per row (prompts non-empty).

    Returns:
        (logp [B, R], entropy [B, R]) with R the longest response; column j is response token j; zero beyond each
        row's response. ``logp`` is differentiable; ``entropy`` too with ``entropy_grad``, else detached.
    """
    from transformers.cache_utils import DynamicCache

    from eapo.sampler import _cache_kwarg, _common_prefix_len

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every row needs a non-empty prompt: the first response token is predicted from it")
    device = next(model.parameters()).device
    B = len(prompts)
    R = max((len(r) for r in responses), default=0)
    resp_len = torch.tensor([len(r) for r in responses], dtype=torch.long, device=device)
    if R == 0:
        zeros = torch.zeros((B, 0), dtype=torch.float32, device=device)
        return zeros, zeros.clone()

    slots: dict[tuple[int, ...], int] = {}
    row_slot = [slots.setdefault(tuple(p), len(slots)) for p in prompts]
    distinct = [list(p) for p in slots]
    U = len(distinct)
    expand = torch.tensor(row_slot, dtype=torch.long, device=device)
    identity = row_slot == list(range(B))

    base = model.base_model
    cache_kw = _cache_kwarg(base)
    cache = DynamicCache(config=model.config)
    S = _common_prefix_len(distinct) if U > 1 else 0
    if S < min_shared:
        S = 0
    if S:  # the common prefix, batch 1, then one cache row per distinct prompt
        prefix = torch.tensor([distinct[0][:S]], dtype=torch.long, device=device)
        base(input_ids=prefix, use_cache=True, **{cache_kw: cache})
        cache.batch_select_indices(torch.zeros(U, dtype=torch.long, device=device))
    suffixes = [p[S:] for p in distinct]
    suf_len = torch.tensor([len(x) for x in suffixes], dtype=torch.long, device=device)
    Ls = int(suf_len.max())
    ids, suf_mask = _right_pad(suffixes, pad_id, Ls, device)
    mask = torch.cat([suf_mask.new_ones((U, S)), suf_mask], dim=1)
    pos = S + torch.arange(Ls, device=device).expand(U, Ls)
    hidden = base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                  **{cache_kw: cache}).last_hidden_state
    h_last = hidden[torch.arange(U, device=device), suf_len - 1]  # [U, D]: predicts response token 0
    if not identity:
        h_last = h_last[expand]
    predict = h_last[:, None]
    if R > 1:  # response tokens 0..R-2 (each row's last token predicts nothing) against its prompt's cache
        if not identity:
            cache.batch_select_indices(expand)
            mask = mask[expand]
        ids, in_mask = _right_pad([r[:-1] for r in responses], pad_id, R - 1, device)
        mask = torch.cat([mask, in_mask], dim=1)
        prompt_len = (S + suf_len)[expand]
        pos = prompt_len[:, None] + torch.arange(R - 1, device=device)
        hidden = base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                      **{cache_kw: cache}).last_hidden_state
        predict = torch.cat([predict, hidden], dim=1)  # [B, R, D]
    del cache
    targets, _ = _right_pad(responses, pad_id, R, device)
    response_mask = torch.arange(R, device=device)[None, :] < resp_len[:, None]
    head = model.get_output_embeddings()
    logp, ent = logprob_entropy_from_hidden(predict[response_mask], head.weight, targets[response_mask],
                                            chunk_size=chunk_size, lm_head_bias=getattr(head, "bias", None),
                                            checkpoint=True)
    zeros = torch.zeros(response_mask.shape, dtype=logp.dtype, device=logp.device)
    return (zeros.masked_scatter(response_mask, logp),
            zeros.masked_scatter(response_mask, ent if entropy_grad else ent.detach()))


# ----------------------------------------------------------------------------------------------------------------------
# Micro-batched policy update


def collate(rollouts: Sequence[Rollout], pad_id: int, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Right-pad prompt+response rows to the longest row of *this* micro-batch.

    Returns input_ids, attention_mask (long), response_mask (bool), old_logp and adv (fp32), all [b, L].
    """
    L = max(len(r.prompt_ids) + len(r.response_ids) for r in rollouts)
    ids, attn, resp, old, adv = [], [], [], [], []
    for r in rollouts:
        p, n = len(r.prompt_ids), len(r.response_ids)
        pad = L - p - n
        ids.append(r.prompt_ids + r.response_ids + [pad_id] * pad)
        attn.append([1] * (p + n) + [0] * pad)
        resp.append([False] * p + [True] * n + [False] * pad)
        old.append([0.0] * p + list(r.old_logp) + [0.0] * pad)
        adv.append([0.0] * p + list(r.adv_tokens) + [0.0] * pad)
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long, device=device),
        "attention_mask": torch.tensor(attn, dtype=torch.long, device=device),
        "response_mask": torch.tensor(resp, dtype=torch.bool, device=device),
        "old_logp": torch.tensor(old, dtype=torch.float32, device=device),
        "adv": torch.tensor(adv, dtype=torch.float32, device=device),
    }


def _collate_responses(rollouts: Sequence[Rollout], device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """``collate``'s per-token tensors in response layout (``grouped_logprobs``'s): [b, R], column j = response
    token j, right-padded to this micro-batch's longest response."""
    R = max((len(r.response_ids) for r in rollouts), default=0)
    resp, old, adv = [], [], []
    for r in rollouts:
        pad = R - len(r.response_ids)
        resp.append([True] * len(r.response_ids) + [False] * pad)
        old.append(list(r.old_logp) + [0.0] * pad)
        adv.append(list(r.adv_tokens) + [0.0] * pad)
    return {
        "response_mask": torch.tensor(resp, dtype=torch.bool, device=device).reshape(len(rollouts), R),
        "old_logp": torch.tensor(old, dtype=torch.float32, device=device).reshape(len(rollouts), R),
        "adv": torch.tensor(adv, dtype=torch.float32, device=device).reshape(len(rollouts), R),
    }


def loss_denominator(rollouts: Sequence[Rollout], agg: str) -> float:
    """The minibatch-global normaliser of ``agg``: response tokens (token_mean) or non-empty sequences (seq_*)."""
    if agg == "token_mean":
        return float(sum(len(r.response_ids) for r in rollouts))
    if agg in ("seq_mean_token_mean", "seq_mean_token_sum_norm"):
        return float(sum(1 for r in rollouts if r.response_ids))
    raise ValueError(f"unknown aggregation {agg!r}")


def _autocast(accelerator):
    """accelerate's mixed-precision autocast (a no-op under mixed_precision="no"); a fresh context each call."""
    return accelerator.autocast() if accelerator is not None else contextlib.nullcontext()


def _micro_logprobs(model, rows: Sequence[Rollout], mb: dict[str, Tensor], shared: bool, pad_id: int,
                    chunk_size: int, with_entropy: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """log π of one micro-batch in ``mb``'s layout: response layout when ``shared`` (``grouped_logprobs``, or the
    full-sequence forward moved into it for a model without prefix sharing, e.g. a reference), else full layout.
    ``with_entropy``: return (log π, entropy with gradient) instead, for losses that use the entropy."""
    if not shared:
        out = sequence_logprobs(model, mb["input_ids"], mb["attention_mask"], mb["response_mask"], chunk_size,
                                entropy_grad=with_entropy)
    elif supports_prefix_sharing(model):
        out = grouped_logprobs(model, [r.prompt_ids for r in rows], [r.response_ids for r in rows], pad_id,
                               chunk_size, entropy_grad=with_entropy)
    else:
        full = collate(rows, pad_id, mb["response_mask"].device)
        full_out = sequence_logprobs(model, full["input_ids"], full["attention_mask"], full["response_mask"],
                                     chunk_size, entropy_grad=with_entropy)
        out = tuple(x.new_zeros(mb["response_mask"].shape).masked_scatter(mb["response_mask"],
                                                                          x[full["response_mask"]])
                    for x in full_out)
    return (out[0], out[1]) if with_entropy else out[0]


def accumulate_gradients(
    model,
    rollouts: Sequence[Rollout],
    cfg: TrainConfig,
    *,
    denom: float,
    pad_id: int,
    accelerator=None,
    ref_model=None,
    step: int = -1,
    share_prompts: bool | None = None,
    policy_loss: PolicyLoss | None = None,
    loss_seed: int = 0,
) -> dict[str, float]:
    """Forward/backward one minibatch in micro-batches of ``cfg.micro_batch_size`` sequences, accumulating into .grad.

    ``share_prompts``: run each distinct prompt of a micro-batch once and its responses against its cache
    (``grouped_logprobs``; exact, with gradient through the prompt) instead of every row's full sequence
    (``sequence_logprobs``). None (default) shares whenever ``supports_prefix_sharing(model)``; False forces the
    full-sequence path; True requires support. Rows are then ordered by prompt, so a group's rows share micro-batches.

    Each micro-batch's unreduced loss (``policy_loss_terms``) is normalised by the *minibatch's* global ``denom``
    (see ``loss_denominator``; under DDP divide it by the world size, since DDP averages gradients), so the
    accumulated gradient equals the gradient of the aggregated loss over the whole minibatch:

        token_mean               Σ_tokens ℓ / denom
        seq_mean_token_mean      Σ_seqs (Σ_t ℓ / T_i) / denom
        seq_mean_token_sum_norm  Σ_seqs (Σ_t ℓ / max_new_tokens) / denom     (Dr.GRPO's constant = generation budget)

    ``policy_loss``: the per-token loss (``eapo.core.losses.build_policy_loss``; None = the clipped surrogate of
    ``policy_loss_terms``). Losses with a random token choice (Clip-Cov) draw it from a generator seeded by
    (``loss_seed``, micro-batch index), so the update is reproducible.

    Raises ``TrainingDiverged(step)`` on a non-finite loss, before anything reaches the optimizer.
    Returns sums over the minibatch: loss, tokens, clipped (token count), approx_kl (Σ over tokens).
    """
    device = next(model.parameters()).device
    if share_prompts is None:
        share_prompts = supports_prefix_sharing(model)
    elif share_prompts and not supports_prefix_sharing(model):
        raise ValueError("share_prompts=True, but this model does not support prefix sharing")
    if share_prompts:
        # Rows of one prompt side by side (similar prompt lengths next to each other), then by response length.
        def key(i):
            r = rollouts[i]
            return len(r.prompt_ids), tuple(r.prompt_ids), len(r.response_ids), i
    else:
        # Sort by length so micro-batches hold similar lengths (little padding); the gradient is a sum, order-free.
        def key(i):
            return len(rollouts[i].prompt_ids) + len(rollouts[i].response_ids)
    order = sorted(range(len(rollouts)), key=key)
    chunks = [order[k:k + cfg.micro_batch_size] for k in range(0, len(order), cfg.micro_batch_size)]
    out = {"loss": 0.0, "tokens": 0.0, "clipped": 0.0, "approx_kl": 0.0}
    for c, chunk in enumerate(chunks):
        rows = [rollouts[i] for i in chunk]
        # A micro-batch without response tokens has nothing to share: the full-sequence path handles it as before.
        shared = share_prompts and any(r.response_ids for r in rows)
        mb = _collate_responses(rows, device) if shared else collate(rows, pad_id, device)
        mask = mb["response_mask"]
        ref_logp = None
        if ref_model is not None:
            with torch.no_grad(), _autocast(accelerator):
                ref_logp = _micro_logprobs(ref_model, rows, mb, shared, pad_id, cfg.chunk_size)
        # Under DDP only the last micro-batch all-reduces; the others accumulate locally.
        sync = (accelerator is None or accelerator.num_processes == 1 or c == len(chunks) - 1)
        with (contextlib.nullcontext() if sync else accelerator.no_sync(model)):
            with _autocast(accelerator):
                if policy_loss is not None and policy_loss.needs_entropy:
                    logp, ent = _micro_logprobs(model, rows, mb, shared, pad_id, cfg.chunk_size, with_entropy=True)
                else:
                    logp, ent = _micro_logprobs(model, rows, mb, shared, pad_id, cfg.chunk_size), None
            if policy_loss is None:
                terms, parts = policy_loss_terms(logp, mb["old_logp"], mb["adv"], mask, cfg.clip_low,
                                                 cfg.clip_high, ref_logp=ref_logp, kl_coef=cfg.kl_coef,
                                                 return_parts=True)
            else:
                terms, parts = policy_loss(logp, mb["old_logp"], mb["adv"], mask, clip_low=cfg.clip_low,
                                           clip_high=cfg.clip_high, ref_logp=ref_logp, kl_coef=cfg.kl_coef,
                                           entropy=ent,
                                           generator=torch.Generator().manual_seed(derive_seed(loss_seed, c)))
            if cfg.agg == "token_mean":
                loss = terms.sum() / denom
            elif cfg.agg == "seq_mean_token_mean":
                loss = (terms.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / denom
            else:  # seq_mean_token_sum_norm
                loss = (terms.sum(-1) / cfg.max_new_tokens).sum() / denom
            if not torch.isfinite(loss):
                raise TrainingDiverged(step, "loss")
            if accelerator is not None:
                accelerator.backward(loss)
            else:
                loss.backward()
        with torch.no_grad():
            r = parts["ratio"][mask]
            out["loss"] += float(loss.detach())
            out["tokens"] += float(mask.sum())
            out["clipped"] += float(parts["clipped"].sum())
            out["approx_kl"] += float(((r - 1.0) - torch.log(r)).sum())
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Small helpers of the loop


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts, stable across processes and machines (no Python hash randomisation)."""
    digest = hashlib.sha256(("eapo.train:" + ":".join(map(str, parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def step_prompt_indices(n_prompts: int, prompts_per_step: int, seed: int, step: int) -> list[int]:
    """Indices of the prompts of ``step``: position i = step·P + j walks epoch i // n of a per-epoch permutation
    seeded by (seed, epoch). Depends only on (n, P, seed, step); each epoch visits every prompt once."""
    out = []
    for i in range(step * prompts_per_step, (step + 1) * prompts_per_step):
        epoch, pos = divmod(i, n_prompts)
        perm = np.random.default_rng([seed, epoch]).permutation(n_prompts)
        out.append(int(perm[pos]))
    return out


def _warmup(warmup_steps: int) -> Callable[[int], float]:
    """Linear warmup over ``warmup_steps`` training steps (step s trains at lr·(s+1)/warmup), then constant."""
    return lambda s: 1.0 if warmup_steps <= 0 else min(1.0, (s + 1) / warmup_steps)


def _run_config(cfg: TrainConfig, variant_name: str, variant: VariantConfig, model_cfg: ModelConfig) -> dict:
    return {"train": dataclasses.asdict(cfg), "variant_name": variant_name, "variant": dataclasses.asdict(variant),
            "model": dataclasses.asdict(model_cfg)}


def _check_resume(saved: dict, current: dict, path: Path) -> None:
    """Resuming under a different config would silently splice two experiments: refuse, naming the keys."""
    diffs = []
    for section in ("variant_name", "variant", "model", "train"):
        a, b = saved.get(section), json.loads(json.dumps(current[section], default=str))
        if isinstance(a, dict) and isinstance(b, dict):
            skip = _RESUMABLE_CHANGES if section == "train" else {"threads"}
            diffs += [f"{section}.{k}" for k in sorted(set(a) | set(b)) if k not in skip and a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(section)
    if diffs:
        raise ValueError(f"checkpoint {path} was written with a different config ({', '.join(diffs)}); "
                         f"delete {path.parent} to start fresh")


def _validate_initial(initial_samples, prompt_ids: list[list[int]], group_size: int) -> None:
    want = len(prompt_ids) * group_size
    if len(initial_samples) != want:
        raise ValueError(f"initial_samples has {len(initial_samples)} entries; step 0 needs "
                         f"prompts_per_step*group_size = {want}")
    for k, (s, _) in enumerate(initial_samples):
        if list(s.prompt_ids) != prompt_ids[k // group_size]:
            raise ValueError(f"initial_samples[{k}] was sampled for another prompt than step-0 prompt "
                             f"{k // group_size} (prompt ids differ)")


def _write_model_dir(model, tokenizer, model_dir: Path, train_config: dict) -> None:
    """out_dir/model: save_pretrained (safetensors) + tokenizer + train_config.json, via a temp dir and a rename."""
    with checkpoint.atomic_dir(model_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "train_config.json").write_text(json.dumps(train_config, indent=1, default=str))


# ----------------------------------------------------------------------------------------------------------------------
# The loop


def train(
    policy: Policy,
    prompts: list[dict],
    cfg: TrainConfig,
    variant_name: str,
    variant: VariantConfig,
    model_cfg: ModelConfig,
    reward_cfg: RewardConfig,
    out_dir: Path,
    *,
    initial_samples: Sequence[tuple[Sample, float]] | None = None,
    on_step: Callable[[dict], None] | None = None,
    stop_after_step: int | None = None,
    reward_fn: RewardFn | None = None,
) -> TrainResult:
    """Train ``policy.model`` in place for ``cfg.steps`` online steps; see the module docstring for one step.

    Args:
        policy: the *base* policy (also when resuming: the checkpoint's weights are loaded into it).
        prompts: dicts with ``id``, ``prompt``, ``answer``.
        out_dir: ``checkpoints/step-NNNNN/`` and the final ``model/`` go here. If it already holds a checkpoint the
            run resumes from the latest one (same config required, except ``steps``/``checkpoint_every``).
        initial_samples: optional step-0 samples with their rewards, ``[(Sample, reward), ...]``, from a rollout stage
            that sampled the step-0 prompts with this same policy and sampling params. Contract: exactly
            ``prompts_per_step * group_size`` entries in (prompt, sample) order, entry ``k`` a response to step-0
            prompt ``k // group_size`` (``step_prompt_indices(len(prompts), P, cfg.seed, 0)``) with its prompt ids as
            ``build_prompt_ids`` builds them (checked), logprobs/entropies/sum_p_sq as the sampler records them.
            They replace step 0's sampling and scoring; its ``tokens_per_s`` is then 0.0. Ignored on resume.
        on_step: called with each step's metrics row (main process only).
        stop_after_step: return right after this step (and its checkpoint, if the step is on the checkpoint cadence)
            without writing ``model/``: simulates a run killed there.
        reward_fn: ``fn(responses, golds) -> rewards`` used instead of the ``RewardScorer``, for tests and
            experiments (e.g. a synthetic reward the tiny random model can earn).

    Returns ``TrainResult``. Raises ``TrainingDiverged`` on a NaN/inf loss, gradient norm or weights, or an update
    larger than ``cfg.max_update_ratio`` times the weights.
    """
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    t_run = time.perf_counter()
    out_dir = Path(out_dir)
    ckpt_root, model_dir = out_dir / "checkpoints", out_dir / "model"
    if not prompts:
        raise ValueError("no prompts")
    missing = [k for k in ("id", "prompt", "answer") if k not in prompts[0]]
    if missing:
        raise ValueError(f"prompts need keys id, prompt, answer; missing {missing}")

    model, tokenizer = policy.model, policy.tokenizer
    device = next(model.parameters()).device
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=device.type == "cpu",
                              # one scheduler step per training step, whatever the number of processes
                              step_scheduler_with_optimizer=False)
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.prompts_per_step % world:
        raise ValueError(f"prompts_per_step ({cfg.prompts_per_step}) must be divisible by the {world} processes")
    P, G = cfg.prompts_per_step // world, cfg.group_size  # P: this rank's prompts per step
    weighting = build_weighting(variant.weighting, **variant.weighting_params())
    # The default loss goes through ``policy_loss_terms`` as it always did (policy_loss=None); others by name.
    loss_fn = (None if variant.policy_loss == DEFAULT_POLICY_LOSS
               else build_policy_loss(variant.policy_loss, **variant.loss_params))
    advantage_fn = get_advantage_fn(cfg.advantage)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # The KL reference is the policy as given, frozen before any update or checkpoint load.
    ref_model = None
    if cfg.kl_coef > 0:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup(cfg.warmup_steps))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    raw_model = accelerator.unwrap_model(model)
    guard = _UpdateGuard(model.parameters(), cfg.max_update_ratio)

    # Resume from the latest complete checkpoint: weights, optimizer, scheduler, RNG and the rows so far.
    run_config = _run_config(cfg, variant_name, variant, model_cfg)
    start, rows, resumed_from = 0, [], None
    latest = checkpoint.latest(ckpt_root)
    if latest is not None:
        state = checkpoint.load(latest, model=raw_model, optimizer=optimizer, scheduler=scheduler)
        _check_resume(state.config, run_config, latest)
        start, rows, resumed_from = state.step + 1, state.steps, state.step
        if accelerator.is_main_process:
            logger.info("resuming %s from %s (step %d)", variant_name, latest, state.step)

    if stop_after_step is not None and start > stop_after_step:  # the checkpoint is already past the kill point
        return TrainResult(rows, model_dir, resumed_from, time.perf_counter() - t_run)

    prompt_ids_cache: dict[int, list[int]] = {}

    def prompt_ids_of(i: int) -> list[int]:
        if i not in prompt_ids_cache:
            prompt_ids_cache[i] = build_prompt_ids(tokenizer, prompts[i]["prompt"], model_cfg.system_prompt,
                                                   model_cfg.instruction)
        return prompt_ids_cache[i]

    def all_sum(values: list[float]) -> list[float]:
        """Sum counters over processes (identity on one process)."""
        if world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
        return accelerator.reduce(t, reduction="sum").tolist()

    scorer_cm = (contextlib.nullcontext() if reward_fn is not None else
                 RewardScorer.from_config(reward_cfg))
    with scorer_cm as scorer:
        for step in range(start, cfg.steps):
            t_step = time.perf_counter()

            # 1. prompts: this step's P·W prompts, this rank's contiguous shard of them.
            step_idx = step_prompt_indices(len(prompts), cfg.prompts_per_step, cfg.seed, step)
            mine = step_idx[rank * P:(rank + 1) * P]
            prompt_ids = [prompt_ids_of(i) for i in mine]
            golds = [str(prompts[i]["answer"]) for i in mine for _ in range(G)]

            # 2-3. sample G responses per prompt with the current policy, and score them.
            if step == 0 and initial_samples is not None:
                shard = list(initial_samples)[rank * P * G:(rank + 1) * P * G]
                _validate_initial(shard, prompt_ids, G)
                samples = [s for s, _ in shard]
                rewards = [float(r) for _, r in shard]
                sample_tokens, sample_seconds = sum(len(s.response_ids) for s in samples), 0.0
            else:
                model.eval()
                samples = sample(raw_model, tokenizer, prompt_ids, n=G, temperature=cfg.temperature,
                                 top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                                 seed=derive_seed(cfg.seed, step, rank, "sample"), batch_size=cfg.batch_size,
                                 backend=cfg.backend)
                sample_tokens, sample_seconds = samples.stats["tokens"], samples.stats["seconds"]
                texts = [tokenizer.decode(s.response_ids, skip_special_tokens=True) for s in samples]
                if reward_fn is not None:
                    rewards = [float(r) for r in reward_fn(texts, golds)]
                else:
                    rewards = [float(r.reward) for r in scorer.score(
                        texts, golds, truncated=[s.finish_reason == "length" for s in samples])]
                if len(rewards) != len(samples):
                    raise ValueError(f"reward function returned {len(rewards)} rewards for {len(samples)} responses")

            # 4. annotate: A per group (= prompt), τ over the whole batch, quadrants, w and Â = A·w, per token.
            n_seq = len(samples)
            lengths = torch.tensor([len(s.response_ids) for s in samples])
            seq_ids = torch.repeat_interleave(torch.arange(n_seq), lengths)
            reward_t = torch.tensor(rewards, dtype=torch.float32)
            adv_seq = advantage_fn(reward_t, torch.arange(n_seq) // G)
            adv_tok = adv_seq[seq_ids]
            ent = torch.tensor([h for s in samples for h in s.entropies], dtype=torch.float32)
            old_logp = torch.tensor([lp for s in samples for lp in s.logprobs], dtype=torch.float32)
            sum_p_sq = torch.tensor([q for s in samples for q in s.sum_p_sq], dtype=torch.float32)
            mask = torch.ones_like(ent, dtype=torch.bool)
            # τ is a quantile of the whole batch: under several processes every rank needs every rank's entropies.
            ent_batch = ent if world == 1 else torch.tensor(gather_object(ent.tolist()), dtype=torch.float32)
            tau = entropy_threshold(ent_batch, None, cfg.rho)
            codes = assign_quadrants(ent, adv_tok, tau, mask)
            # Quadrant ablations use the step's τ, so the dropped quadrant is exactly the one counted in the row; a
            # top-entropy weighting given its own rho thresholds at that rho's quantile instead.
            tau_w = tau
            if (weighting.needs_tau and not hasattr(weighting, "quadrant") and variant.rho is not None
                    and variant.rho != cfg.rho):
                tau_w = entropy_threshold(ent_batch, None, variant.rho)
            weights = weighting(ent, adv_tok, seq_ids, mask, tau_w)
            adv_hat = adv_tok * weights
            grad_norm_tok = logit_grad_norm(old_logp.exp(), sum_p_sq)
            q_grpo = quadrant_stats(ent, adv_tok, codes, grad_norm_tok)
            q_var = quadrant_stats(ent, adv_tok, codes, grad_norm_tok, weights=weights)

            bounds = torch.cumsum(lengths, 0).tolist()
            rollouts = [
                Rollout(prompt_ids=list(s.prompt_ids), response_ids=list(s.response_ids), old_logp=list(s.logprobs),
                        adv_tokens=adv_hat[b - len(s.response_ids):b].tolist())
                for s, b in zip(samples, bounds)
            ]

            # 5. update: ppo_epochs passes, each over `minibatches` seeded-random minibatches; one AdamW step each.
            lr = float(scheduler.get_last_lr()[0])
            model.train()
            torch.manual_seed(derive_seed(cfg.seed, step, rank, "dropout"))  # dropout, if the model has any
            shuffle = torch.Generator().manual_seed(derive_seed(cfg.seed, step, rank, "minibatch"))
            upd = {"loss": 0.0, "tokens": 0.0, "clipped": 0.0, "approx_kl": 0.0, "grad_norm": 0.0, "n_opt": 0}
            for _epoch in range(cfg.ppo_epochs):
                perm = torch.randperm(n_seq, generator=shuffle).tolist()
                for mb_no, mb_idx in enumerate(np.array_split(np.asarray(perm), cfg.minibatches)):
                    mb = [rollouts[int(i)] for i in mb_idx]
                    # DDP averages gradients over ranks, so each rank normalises by (global count) / world.
                    denom = max(all_sum([loss_denominator(mb, cfg.agg)])[0], 1.0) / world
                    stats = accumulate_gradients(model, mb, cfg, denom=denom, pad_id=pad_id, accelerator=accelerator,
                                                 ref_model=ref_model, step=step, policy_loss=loss_fn,
                                                 loss_seed=derive_seed(cfg.seed, step, rank, "loss", _epoch, mb_no))
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    if not torch.isfinite(torch.as_tensor(grad_norm)):
                        raise TrainingDiverged(step, "gradient norm")
                    guard.snapshot()
                    optimizer.step()
                    guard.check(step)
                    optimizer.zero_grad(set_to_none=True)
                    for k in ("loss", "tokens", "clipped", "approx_kl"):
                        upd[k] += stats[k]
                    upd["grad_norm"] += float(grad_norm)
                    upd["n_opt"] += 1
            scheduler.step()
            model.eval()

            # 6. metrics: local sums, summed over ranks, then the row.
            group_r = reward_t.view(-1, G)
            local = [
                n_seq, float(reward_t.sum()), float((reward_t == 1.0).sum()), float(ent.sum()), float(ent.numel()),
                group_r.shape[0], float((group_r.amax(1) != group_r.amin(1)).sum()), float(sample_tokens),
                upd["loss"], upd["tokens"], upd["clipped"], upd["approx_kl"],
                *[q_grpo[q]["count"] for q in QUADRANTS],
                *[q_grpo[q]["grad_mass"] for q in QUADRANTS],
                *[q_var[q]["grad_mass"] for q in QUADRANTS],
            ]
            (n_all, r_sum, correct, h_sum, n_tok, n_groups, n_mixed, tok_sampled,
             loss_sum, upd_tok, clipped, akl, *quad) = all_sum(local)
            counts, mass, wmass = quad[0:4], quad[4:8], quad[8:12]
            seconds = time.perf_counter() - t_step
            row: dict[str, Any] = {
                "step": int(step),
                "variant": str(variant_name),
                "reward_mean": r_sum / n_all,
                "accuracy": correct / n_all,
                "entropy_mean": h_sum / n_tok if n_tok else 0.0,
                "response_length": n_tok / n_all,
                "loss": loss_sum / world / max(upd["n_opt"], 1),
                "clip_frac": clipped / upd_tok if upd_tok else 0.0,
                "approx_kl": akl / upd_tok if upd_tok else 0.0,
                "grad_norm": upd["grad_norm"] / max(upd["n_opt"], 1),
                "lr": lr,
                "tau": float(tau) if math.isfinite(tau) else 0.0,
                "tokens": round(n_tok),
                "mixed_groups": n_mixed / n_groups if n_groups else 0.0,
                **{f"count_{q}": round(c) for q, c in zip(QUADRANTS, counts)},
                **{f"grad_share_{q}": (m / sum(mass) if sum(mass) > 0 else 0.0) for q, m in zip(QUADRANTS, mass)},
                **{f"weighted_grad_share_{q}": (m / sum(wmass) if sum(wmass) > 0 else 0.0)
                   for q, m in zip(QUADRANTS, wmass)},
                "tokens_per_s": tok_sampled / sample_seconds if sample_seconds > 0 else 0.0,
                "seconds": seconds,
            }
            row = {k: (float(v) if isinstance(v, float) else v) for k, v in row.items()}
            rows.append(row)
            if accelerator.is_main_process:
                logger.info("step %d/%d %s reward=%.3f entropy=%.3f len=%.1f loss=%.4f grad_norm=%.3f lr=%.2e "
                            "tau=%.3f mixed=%.2f %.1fs", step, cfg.steps - 1, variant_name, row["reward_mean"],
                            row["entropy_mean"], row["response_length"], row["loss"], row["grad_norm"], lr,
                            row["tau"], row["mixed_groups"], seconds)
                if on_step is not None:
                    on_step(dict(row))

            # 7. checkpoint every `checkpoint_every` completed steps and after the last one; keep the newest two.
            if (step + 1) % cfg.checkpoint_every == 0 or step == cfg.steps - 1:
                if accelerator.is_main_process:
                    checkpoint.save(ckpt_root, step, model=raw_model, optimizer=optimizer, scheduler=scheduler,
                                    steps=rows, config=run_config)
                    checkpoint.prune(ckpt_root, keep=2)
                accelerator.wait_for_everyone()
            if stop_after_step is not None and step >= stop_after_step:
                return TrainResult(rows, model_dir, resumed_from, time.perf_counter() - t_run)

    # Final HF checkpoint, loadable with AutoModelForCausalLM, with the configs that produced it.
    if accelerator.is_main_process:
        train_config = {**run_config, "reward": dataclasses.asdict(reward_cfg), "policy": policy.info,
                        "steps_completed": len(rows), "resumed_from": resumed_from}
        _write_model_dir(raw_model, tokenizer, model_dir, train_config)
    accelerator.wait_for_everyone()
    return TrainResult(rows, model_dir, resumed_from, time.perf_counter() - t_run)
