"""Online RLVR training: GRPO and its entropy-aware variants (DESIGN §4-§5), CPU-first and exactly reproducible.

One training step ``s`` (``train`` reads top to bottom in this order):

1. **prompts**: ``prompts_per_step`` prompts from a seeded permutation of the prompt list per epoch, walked in order,
   so the choice depends only on (``seed``, ``s``) (see ``step_prompt_indices``).
2. **sample** ``group_size`` responses per prompt from the *current* policy (``eapo.sampler.sample``), with a sampling
   seed derived from (``seed``, ``s``, rank): a resumed run draws exactly the samples the uninterrupted run drew.
3. **reward** each response (``RewardScorer``, opened once per run; or an injected ``reward_fn``).
4. **annotate** (``eapo.core.credit.annotate_batch``): group advantages A_i (``cfg.advantage``), the batch entropy
   threshold τ (top ``cfg.rho`` share of the batch's response tokens), quadrants, the variant's token weights w and
   Â = A·w.
5. **update**: ``ppo_epochs`` × ``minibatches`` AdamW steps of the clipped surrogate, each minibatch accumulated over
   micro-batches so that the micro-batched gradient equals the full-minibatch gradient.
6. **metrics** row (``StepRow``, columns in ``STEP_KEYS`` order), ``on_step(row)``, one log line;
7. **checkpoint** on cadence.

Old log-probs. π_old is the sampler's record: the exact log-prob of each sampled token under the policy that sampled
it, at temperature 1 on the full vocabulary (DESIGN §4). With ``temperature != 1`` (or ``top_p < 1``) the tokens were
drawn from a different (tempered / truncated) behaviour distribution, and the ratio r = π_θ/π_old is still taken
against the T = 1 policy, as verl does: the importance weight corrects for policy change between sampling and update,
not for the sampling temperature. The old log-probs come from the sampler's KV-cache decode while the update's forward
is a padded batched pass, so on the first minibatch r = 1 up to float rounding (~1e-6), not bit-exactly.

Forward passes (``eapo.forward``). The update's log-probs never build [B, T, V] logits, and the G responses of a
group share one forward of their prompt (``grouped_logprobs``) where the model allows it. A minibatch's rows are sorted
(by prompt, then length) before it is cut into micro-batches, so similar rows share one. Responses without a learning
signal (Â = 0 at every token: under GRPO every response of a group whose rewards are all equal, often half a batch)
are not run at all where that is exact (``train.skip_zero_advantage``, ``skips_silent_rows``).

Metrics row (``STEP_KEYS``; python ints/floats, always finite, 0.0 where undefined). Sample statistics
(``reward_mean``, ``accuracy`` = share of reward == 1, ``entropy_mean`` per token, ``response_length`` per response,
``tokens``, ``tau``, ``mixed_groups`` = share of groups whose rewards are not all equal, ``count_*`` per quadrant)
describe the step's samples before the update. ``loss`` (surrogate + KL term, as optimised) and ``grad_norm``
(pre-clip total norm) are means over the step's optimizer steps; ``clip_frac`` is a token mean over every update of
the step (a response left out for lack of signal has Â = 0, which no clip changes) and ``approx_kl`` (k3 estimate of
KL(π_old ‖ π_θ)) a token mean over the responses the updates ran. ``lr`` is the rate the step trained at.
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

from eapo import checkpoint, saved_activations
from eapo.config import ModelConfig, RewardConfig, TrainConfig, VariantConfig
from eapo.contracts import STEP_COLUMNS
from eapo.core.advantages import get_advantage_fn
from eapo.core.credit import BatchAnnotation, annotate_batch
from eapo.core.losses import AGGREGATIONS, DEFAULT_POLICY_LOSS, PolicyLoss, build_policy_loss, policy_loss_terms
from eapo.core.quadrants import QUADRANTS
from eapo.core.weighting import build_weighting
from eapo.data import step_prompt_indices
from eapo.forward import Rollout, collate, collate_responses, micro_logprobs, supports_prefix_sharing
from eapo.policy import Policy, build_prompt_ids
from eapo.reward import RewardScorer
from eapo.sampler import Sample, sample

__all__ = [
    "STEP_KEYS",
    "WALL_TIME_KEYS",
    "StepRow",
    "TrainResult",
    "TrainingDiverged",
    "accumulate_gradients",
    "derive_seed",
    "loss_denominator",
    "step_prompt_indices",
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


def loss_denominator(rollouts: Sequence[Rollout], agg: str) -> float:
    """The minibatch-global normaliser of the aggregation ``agg``: its units (response tokens, or non-empty
    responses) in these rollouts."""
    return AGGREGATIONS[agg].count_lengths(len(r.response_ids) for r in rollouts)


def _autocast(accelerator):
    """accelerate's mixed-precision autocast (a no-op under mixed_precision="no"); a fresh context each call."""
    return accelerator.autocast() if accelerator is not None else contextlib.nullcontext()


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

    Responses whose Â is 0 at every token are left out of the forward/backward where ``skips_silent_rows`` says
    they add exactly nothing (``train.skip_zero_advantage``); when none is left, every trainable parameter gets a
    zero gradient, so the optimizer still steps as it would on the computed one.

    Raises ``TrainingDiverged(step)`` on a non-finite loss, before anything reaches the optimizer.
    Returns sums over the minibatch: loss, tokens (every response token), evaluated_tokens (those run),
    clipped (token count), approx_kl (Σ over the evaluated tokens).
    """
    device = next(model.parameters()).device
    n_tokens = float(sum(len(r.response_ids) for r in rollouts))
    if skips_silent_rows(cfg, policy_loss, accelerator):
        rollouts = [r for r in rollouts if any(r.adv_tokens)]
        if not rollouts:
            for p in model.parameters():
                if p.requires_grad and p.grad is None:
                    p.grad = torch.zeros_like(p)
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
    aggregation = AGGREGATIONS[cfg.agg]
    order = sorted(range(len(rollouts)), key=key)
    chunks = [order[k:k + cfg.micro_batch_size] for k in range(0, len(order), cfg.micro_batch_size)]
    out = {"loss": 0.0, "tokens": n_tokens, "evaluated_tokens": 0.0, "clipped": 0.0, "approx_kl": 0.0}
    for c, chunk in enumerate(chunks):
        rows = [rollouts[i] for i in chunk]
        # A micro-batch without response tokens has nothing to share: the full-sequence path handles it as before.
        shared = share_prompts and any(r.response_ids for r in rows)
        mb = collate_responses(rows, device) if shared else collate(rows, pad_id, device)
        mask = mb["response_mask"]
        ref_logp = None
        if ref_model is not None:
            with torch.no_grad(), _autocast(accelerator):
                ref_logp = micro_logprobs(ref_model, rows, mb, shared, pad_id, cfg.chunk_size)
        # Under DDP only the last micro-batch all-reduces; the others accumulate locally.
        sync = (accelerator is None or accelerator.num_processes == 1 or c == len(chunks) - 1)
        with (contextlib.nullcontext() if sync else accelerator.no_sync(model)):
            with _autocast(accelerator):
                if policy_loss is not None and policy_loss.needs_entropy:
                    logp, ent = micro_logprobs(model, rows, mb, shared, pad_id, cfg.chunk_size, with_entropy=True)
                else:
                    logp, ent = micro_logprobs(model, rows, mb, shared, pad_id, cfg.chunk_size), None
            if policy_loss is None:
                terms, parts = policy_loss_terms(logp, mb["old_logp"], mb["adv"], mask, cfg.clip_low,
                                                 cfg.clip_high, ref_logp=ref_logp, kl_coef=cfg.kl_coef,
                                                 return_parts=True)
            else:
                terms, parts = policy_loss(logp, mb["old_logp"], mb["adv"], mask, clip_low=cfg.clip_low,
                                           clip_high=cfg.clip_high, ref_logp=ref_logp, kl_coef=cfg.kl_coef,
                                           entropy=ent,
                                           generator=torch.Generator().manual_seed(derive_seed(loss_seed, c)))
            # The aggregation's sum over this micro-batch's units, over the whole minibatch's unit count.
            loss = aggregation.total(terms, mask, cfg.max_new_tokens) / denom
            if not torch.isfinite(loss):
                raise TrainingDiverged(step, "loss")
            if accelerator is not None:
                accelerator.backward(loss)
            else:
                loss.backward()
        with torch.no_grad():
            r = parts["ratio"][mask]
            out["loss"] += float(loss.detach())
            out["evaluated_tokens"] += float(mask.sum())
            out["clipped"] += float(parts["clipped"].sum())
            out["approx_kl"] += float(((r - 1.0) - torch.log(r)).sum())
    return out


def skips_silent_rows(cfg: TrainConfig, policy_loss: PolicyLoss | None, accelerator=None) -> bool:
    """Whether the update may leave out responses whose Â is 0 at every token: ``cfg.skip_zero_advantage``, a loss
    inert at Â = 0 (the default surrogate is), no KL term, and one process (under DDP every rank must run its
    backward, or the gradient all-reduce waits for it)."""
    inert = policy_loss is None or policy_loss.inert_at_zero_advantage
    one_process = accelerator is None or accelerator.num_processes == 1
    return cfg.skip_zero_advantage and inert and cfg.kl_coef == 0 and one_process


# ----------------------------------------------------------------------------------------------------------------------
# Small helpers of the loop


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts, stable across processes and machines (no Python hash randomisation)."""
    digest = hashlib.sha256(("eapo.train:" + ":".join(map(str, parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


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
# The phases of one step


def _all_sum(values: list, accelerator) -> list:
    """Sum per-rank values over the processes (identity on one process, which keeps python ints ints)."""
    if accelerator.num_processes == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(t, reduction="sum").tolist()


def _initial_shard(initial_samples, rank: int, prompt_ids: list[list[int]], group_size: int
                   ) -> tuple[list[Sample], list[float], float, float]:
    """This rank's share of the rollout stage's step-0 samples: (samples, rewards, sampled tokens, 0 seconds)."""
    P, G = len(prompt_ids), group_size
    shard = list(initial_samples)[rank * P * G:(rank + 1) * P * G]
    _validate_initial(shard, prompt_ids, G)
    samples = [s for s, _ in shard]
    return samples, [float(r) for _, r in shard], sum(len(s.response_ids) for s in samples), 0.0


def _sample_and_score(model, tokenizer, prompt_ids: list[list[int]], golds: list[str], cfg: TrainConfig, *,
                      seed: int, scorer: RewardScorer | None, reward_fn: RewardFn | None
                      ) -> tuple[list[Sample], list[float], float, float]:
    """G responses per prompt from the current policy, and their rewards: (samples, rewards, tokens, seconds)."""
    samples = sample(model, tokenizer, prompt_ids, n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p,
                     max_new_tokens=cfg.max_new_tokens, seed=seed, batch_size=cfg.batch_size, backend=cfg.backend)
    texts = [tokenizer.decode(s.response_ids, skip_special_tokens=True) for s in samples]
    if reward_fn is not None:
        rewards = [float(r) for r in reward_fn(texts, golds)]
    else:
        rewards = [float(r.reward) for r in scorer.score(
            texts, golds, truncated=[s.finish_reason == "length" for s in samples])]
    if len(rewards) != len(samples):
        raise ValueError(f"reward function returned {len(rewards)} rewards for {len(samples)} responses")
    return samples, rewards, samples.stats["tokens"], samples.stats["seconds"]


def _per_token(samples: Sequence[Sample], attr: str) -> torch.Tensor:
    """One per-token statistic of the sampler, flat over the batch's response tokens, fp32."""
    return torch.tensor([x for s in samples for x in getattr(s, attr)], dtype=torch.float32)


def _update(model, optimizer, guard: _UpdateGuard, rollouts: list[Rollout], cfg: TrainConfig, *, step: int,
            rank: int, accelerator, pad_id: int, ref_model, loss_fn: PolicyLoss | None) -> dict[str, float]:
    """``ppo_epochs`` passes over the step's rollouts, each in ``minibatches`` seeded-random minibatches, one AdamW
    step per minibatch. Returns sums over the step: loss, tokens, evaluated_tokens, clipped, approx_kl, grad_norm, and
    n_opt (the number of optimizer steps)."""
    world = accelerator.num_processes
    model.train()
    torch.manual_seed(derive_seed(cfg.seed, step, rank, "dropout"))  # dropout, if the model has any
    shuffle = torch.Generator().manual_seed(derive_seed(cfg.seed, step, rank, "minibatch"))
    upd = {"loss": 0.0, "tokens": 0.0, "evaluated_tokens": 0.0, "clipped": 0.0, "approx_kl": 0.0, "grad_norm": 0.0,
           "n_opt": 0}
    for epoch in range(cfg.ppo_epochs):
        perm = torch.randperm(len(rollouts), generator=shuffle).tolist()
        for mb_no, mb_idx in enumerate(np.array_split(np.asarray(perm), cfg.minibatches)):
            mb = [rollouts[int(i)] for i in mb_idx]
            # DDP averages gradients over ranks, so each rank normalises by (global count) / world.
            denom = max(_all_sum([loss_denominator(mb, cfg.agg)], accelerator)[0], 1.0) / world
            stats = accumulate_gradients(model, mb, cfg, denom=denom, pad_id=pad_id, accelerator=accelerator,
                                         ref_model=ref_model, step=step, policy_loss=loss_fn,
                                         loss_seed=derive_seed(cfg.seed, step, rank, "loss", epoch, mb_no))
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            if not torch.isfinite(torch.as_tensor(grad_norm)):
                raise TrainingDiverged(step, "gradient norm")
            guard.snapshot()
            optimizer.step()
            guard.check(step)
            optimizer.zero_grad(set_to_none=True)
            for k in ("loss", "tokens", "evaluated_tokens", "clipped", "approx_kl"):
                upd[k] += stats[k]
            upd["grad_norm"] += float(grad_norm)
            upd["n_opt"] += 1
    model.eval()
    return upd


@dataclass
class StepSums:
    """One rank's sums over the step's samples and updates. The ranks' sums are added (``_all_sum``) before the row
    takes any ratio, so the row does not depend on how the batch was split over processes. Per-quadrant lists are in
    ``QUADRANTS`` order."""

    responses: float
    reward: float
    correct: float
    """Responses with reward exactly 1."""
    entropy: float
    tokens: float
    groups: float
    mixed_groups: float
    """Groups whose rewards are not all equal."""
    sampled_tokens: float
    loss: float
    update_tokens: float
    evaluated_tokens: float
    """Update tokens the forward ran (``skip_zero_advantage`` leaves responses without a signal out)."""
    clipped: float
    approx_kl: float
    counts: list
    grad_mass: list
    weighted_grad_mass: list

    def flat(self) -> list:
        return [x for f in dataclasses.fields(self) for x in
                (getattr(self, f.name) if isinstance(getattr(self, f.name), list) else [getattr(self, f.name)])]

    def summed(self, accelerator) -> StepSums:
        """These sums added over every process (themselves on one process)."""
        if accelerator.num_processes == 1:
            return self
        values, out = iter(_all_sum(self.flat(), accelerator)), {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = [next(values) for _ in v] if isinstance(v, list) else next(values)
        return StepSums(**out)


def _step_sums(samples: Sequence[Sample], rewards: torch.Tensor, entropy: torch.Tensor, ann: BatchAnnotation,
               upd: dict, group_size: int, sampled_tokens: float) -> StepSums:
    group_r = rewards.view(-1, group_size)
    return StepSums(
        responses=len(samples), reward=float(rewards.sum()), correct=float((rewards == 1.0).sum()),
        entropy=float(entropy.sum()), tokens=float(entropy.numel()),
        groups=group_r.shape[0], mixed_groups=float((group_r.amax(1) != group_r.amin(1)).sum()),
        sampled_tokens=float(sampled_tokens),
        loss=upd["loss"], update_tokens=upd["tokens"],
        evaluated_tokens=upd["evaluated_tokens"], clipped=upd["clipped"], approx_kl=upd["approx_kl"],
        counts=[ann.quadrants[q]["count"] for q in QUADRANTS],
        grad_mass=[ann.quadrants[q]["grad_mass"] for q in QUADRANTS],
        weighted_grad_mass=[ann.weighted_quadrants[q]["grad_mass"] for q in QUADRANTS],
    )


@dataclass(frozen=True)
class StepRow:
    """One step's metrics, by name (the module docstring defines each). ``as_dict`` lays them out in ``STEP_KEYS``
    order, which the ``steps`` contract owns (``eapo.contracts.STEP_COLUMNS``); a per-quadrant field ``f`` becomes
    the columns ``f_<quadrant>``."""

    step: int
    variant: str
    reward_mean: float
    accuracy: float
    entropy_mean: float
    response_length: float
    loss: float
    clip_frac: float
    approx_kl: float
    grad_norm: float
    lr: float
    tau: float
    tokens: int
    mixed_groups: float
    count: dict
    grad_share: dict
    weighted_grad_share: dict
    tokens_per_s: float
    seconds: float

    @classmethod
    def of(cls, step: int, variant: str, s: StepSums, upd: dict, *, world: int, lr: float, tau: float,
           sample_seconds: float, seconds: float) -> StepRow:
        """The row from the step's sums over every rank; 0.0 where a ratio is undefined."""

        def shares(mass: list) -> dict:
            return {q: (m / sum(mass) if sum(mass) > 0 else 0.0) for q, m in zip(QUADRANTS, mass)}

        n_opt = max(upd["n_opt"], 1)
        return cls(
            step=int(step), variant=str(variant),
            reward_mean=s.reward / s.responses, accuracy=s.correct / s.responses,
            entropy_mean=s.entropy / s.tokens if s.tokens else 0.0, response_length=s.tokens / s.responses,
            # every rank holds the same DDP-averaged loss, so the sum over ranks is divided by their number
            loss=s.loss / world / n_opt,
            clip_frac=s.clipped / s.update_tokens if s.update_tokens else 0.0,
            approx_kl=s.approx_kl / s.evaluated_tokens if s.evaluated_tokens else 0.0,
            grad_norm=upd["grad_norm"] / n_opt, lr=lr, tau=float(tau) if math.isfinite(tau) else 0.0,
            tokens=round(s.tokens), mixed_groups=s.mixed_groups / s.groups if s.groups else 0.0,
            count={q: round(c) for q, c in zip(QUADRANTS, s.counts)},
            grad_share=shares(s.grad_mass), weighted_grad_share=shares(s.weighted_grad_mass),
            tokens_per_s=s.sampled_tokens / sample_seconds if sample_seconds > 0 else 0.0, seconds=seconds,
        )

    def as_dict(self) -> dict[str, Any]:
        """The row as the steps table and the checkpoints store it: ``STEP_KEYS`` in order, python scalars."""
        flat: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            flat.update({f"{f.name}_{q}": v[q] for q in QUADRANTS} if isinstance(v, dict) else {f.name: v})
        if set(flat) != set(STEP_KEYS):
            raise AssertionError(f"StepRow's fields {sorted(flat)} differ from the steps contract's {STEP_KEYS}")
        return {k: (float(flat[k]) if isinstance(flat[k], float) else flat[k]) for k in STEP_KEYS}


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
    final_checkpoint: bool = True,
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
        final_checkpoint: also checkpoint after the last step (so a later call with more ``steps`` continues from
            it). False for a caller that deletes the checkpoints once ``model/`` is kept, as the train stage does:
            1.6 GB written for nothing on SmolLM2. A run killed after its last step then resumes from the one before.

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
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
    # The same math with fewer activations kept for backward (eapo.saved_activations): a third less per micro-batch.
    saved_activations.apply(model)

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

    scorer_cm = contextlib.nullcontext() if reward_fn is not None else RewardScorer.from_config(reward_cfg)
    with scorer_cm as scorer:
        for step in range(start, cfg.steps):
            t_step = time.perf_counter()

            # 1. prompts: this step's P·W prompts, this rank's contiguous shard of them.
            mine = step_prompt_indices(len(prompts), cfg.prompts_per_step, cfg.seed, step)[rank * P:(rank + 1) * P]
            prompt_ids = [prompt_ids_of(i) for i in mine]
            golds = [str(prompts[i]["answer"]) for i in mine for _ in range(G)]

            # 2-3. sample G responses per prompt with the current policy (step 0: the rollout stage's), and score.
            if step == 0 and initial_samples is not None:
                samples, rewards, sampled_tokens, sample_seconds = _initial_shard(initial_samples, rank, prompt_ids, G)
            else:
                model.eval()
                samples, rewards, sampled_tokens, sample_seconds = _sample_and_score(
                    raw_model, tokenizer, prompt_ids, golds, cfg, seed=derive_seed(cfg.seed, step, rank, "sample"),
                    scorer=scorer, reward_fn=reward_fn)

            # 4. annotate: A per group (= prompt), τ over the whole batch, quadrants, w and Â = A·w, per token.
            ent, reward_t = _per_token(samples, "entropies"), torch.tensor(rewards, dtype=torch.float32)
            lengths = [len(s.response_ids) for s in samples]
            # τ is a quantile of the whole batch: under several processes every rank needs every rank's entropies.
            ent_batch = ent if world == 1 else torch.tensor(gather_object(ent.tolist()), dtype=torch.float32)
            ann = annotate_batch(ent, _per_token(samples, "logprobs"), _per_token(samples, "sum_p_sq"),
                                 torch.tensor(lengths), reward_t, torch.arange(len(samples)) // G,
                                 advantage_fn=advantage_fn, weighting=weighting, rho=cfg.rho,
                                 weighting_rho=variant.rho, threshold_entropy=ent_batch)
            rollouts = [Rollout(list(s.prompt_ids), list(s.response_ids), list(s.logprobs), adv.tolist())
                        for s, adv in zip(samples, ann.adv_hat.split(lengths))]

            # 5. update: ppo_epochs × minibatches AdamW steps; the learning rate is stepped once per training step.
            lr = float(scheduler.get_last_lr()[0])
            upd = _update(model, optimizer, guard, rollouts, cfg, step=step, rank=rank, accelerator=accelerator,
                          pad_id=pad_id, ref_model=ref_model, loss_fn=loss_fn)
            scheduler.step()

            # 6. metrics: this rank's sums, summed over ranks, then the row.
            sums = _step_sums(samples, reward_t, ent, ann, upd, G, sampled_tokens).summed(accelerator)
            row = StepRow.of(step, variant_name, sums, upd, world=world, lr=lr, tau=ann.tau,
                             sample_seconds=sample_seconds, seconds=time.perf_counter() - t_step).as_dict()
            rows.append(row)
            if accelerator.is_main_process:
                logger.info("step %d/%d %s reward=%.3f entropy=%.3f len=%.1f loss=%.4f grad_norm=%.3f lr=%.2e "
                            "tau=%.3f mixed=%.2f %.1fs", step, cfg.steps - 1, variant_name, row["reward_mean"],
                            row["entropy_mean"], row["response_length"], row["loss"], row["grad_norm"], lr,
                            row["tau"], row["mixed_groups"], row["seconds"])
                if on_step is not None:
                    on_step(dict(row))

            # 7. checkpoint every `checkpoint_every` completed steps and after the last one (unless the caller drops
            # it); keep the newest two.
            last = step == cfg.steps - 1
            if (last and final_checkpoint) or (not last and (step + 1) % cfg.checkpoint_every == 0):
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
