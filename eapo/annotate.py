"""Entropy annotation of rollouts: per-token advantage, quadrant and gradient-norm proxy, the quadrant statistics,
and the Monte-Carlo CMI probe (DESIGN §4). Library code: arrays in, arrays and dicts out; no files, no Prefect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from eapo.core.advantages import get_advantage_fn
from eapo.core.cmi import bootstrap_cmi
from eapo.core.entropy import logit_grad_norm
from eapo.core.quadrants import QUADRANTS, assign_quadrants, entropy_threshold, quadrant_names, quadrant_stats
from eapo.reward import RewardScorer
from eapo.sampler import sample


@dataclass
class FlatTokens:
    """Rollouts flattened to one entry per response token (all [N] arrays), plus per-sequence advantages."""

    seq: np.ndarray  # index of the rollout row
    position: np.ndarray
    token_id: np.ndarray
    entropy: np.ndarray  # float32, as stored in the rollouts
    logprob: np.ndarray
    sum_p_sq: np.ndarray
    advantage: np.ndarray  # the sequence's advantage, broadcast to its tokens
    reward: np.ndarray


def flatten(rollouts: dict[str, list], advantage: str) -> tuple[FlatTokens, np.ndarray]:
    """`rollouts` is the column dict of a rollouts artifact. Groups are prompts (one advantage per response)."""
    rewards = torch.tensor(rollouts["reward"], dtype=torch.float64)
    adv = get_advantage_fn(advantage)(rewards, list(rollouts["prompt_id"])).numpy()
    lengths = np.array([len(x) for x in rollouts["response_ids"]], dtype=np.int64)
    seq = np.repeat(np.arange(len(lengths)), lengths)
    flat = FlatTokens(
        seq=seq,
        position=np.concatenate([np.arange(n) for n in lengths]) if len(lengths) else np.zeros(0, np.int64),
        token_id=np.concatenate(rollouts["response_ids"]).astype(np.int64),
        entropy=np.concatenate(rollouts["entropies"]).astype(np.float32),
        logprob=np.concatenate(rollouts["logprobs"]).astype(np.float32),
        sum_p_sq=np.concatenate(rollouts["sum_p_sq"]).astype(np.float32),
        advantage=adv[seq].astype(np.float32),
        reward=np.asarray(rollouts["reward"], dtype=np.float32)[seq],
    )
    return flat, adv


def annotate_tokens(flat: FlatTokens, rho: float, tau: float | None = None) -> tuple[float, list[str], np.ndarray]:
    """(τ, quadrant label per token, gradient-norm proxy per token). τ is the batch (1−ρ) quantile unless fixed."""
    h = torch.from_numpy(flat.entropy)
    if tau is None:
        tau = entropy_threshold(h, None, rho)
    codes = assign_quadrants(h, torch.from_numpy(flat.advantage), tau)
    grad = logit_grad_norm(torch.from_numpy(flat.logprob).double().exp(), torch.from_numpy(flat.sum_p_sq).double())
    return float(tau), quadrant_names(codes), grad.float().numpy()


def quadrant_summary(flat: FlatTokens, labels: Sequence[str], grad_norm: np.ndarray) -> dict:
    """Per quadrant: token count and share, mean entropy, mean |A|, and the GRPO gradient share Σ|Â|·‖∇‖."""
    codes = torch.tensor([QUADRANTS.index(q) if q in QUADRANTS else -1 for q in labels], dtype=torch.long)
    return quadrant_stats(torch.from_numpy(flat.entropy), torch.from_numpy(flat.advantage), codes,
                          torch.from_numpy(grad_norm))


# --------------------------------------------------------------------------------------------------------------------
# CMI probe
# --------------------------------------------------------------------------------------------------------------------


def stratified_positions(entropy: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pick about n token indices spread evenly over the entropy deciles (so high-entropy forks are probed as well
    as near-deterministic tokens). Returns (indices, decile of each)."""
    if len(entropy) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    edges = np.quantile(entropy, np.linspace(0, 1, 11)[1:-1])
    decile = np.searchsorted(edges, entropy, side="right")
    rng = np.random.default_rng(seed)
    per = [n // 10 + (1 if d < n % 10 else 0) for d in range(10)]
    picked = []
    for d in range(10):
        members = np.flatnonzero(decile == d)
        if len(members) and per[d]:
            picked.extend(rng.choice(members, size=min(per[d], len(members)), replace=False).tolist())
    picked = np.array(sorted(picked), dtype=np.int64)
    return picked, decile[picked]


@dataclass(frozen=True)
class ProbeResult:
    token_index: int
    entropy: float
    decile: int
    cmi: float
    lo: float
    hi: float
    p_mean: float
    outcomes: np.ndarray  # [K, M] 0/1


def cmi_probe(model, tokenizer, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
              answers: Sequence[str], flat: FlatTokens, scorer: RewardScorer, *, positions: int, k: int, m: int,
              max_new_tokens: int, n_boot: int, ci: float, seed: int, temperature: float = 1.0,
              batch_size: int = 64, backend: str = "fast") -> list[ProbeResult]:
    """Estimate I(y_t; R | h_t) at entropy-stratified positions (DESIGN §4).

    At each probed position t of response i, with history h = prompt + response[:t]: draw K alternative tokens
    y ~ π(·|h) at temperature 1, run M continuations from h + y, score them, and estimate
    I ≈ H_b(mean_y p(y)) − mean_y H_b(p(y)) from the K×M outcomes, with a bootstrap interval.
    """
    idx, deciles = stratified_positions(flat.entropy, positions, seed)
    if len(idx) == 0:
        return []
    histories = [list(prompt_ids[flat.seq[j]]) + list(response_ids[flat.seq[j]][: flat.position[j]]) for j in idx]
    # K alternatives per history: one token each, at temperature 1 (the policy's own distribution).
    alts = sample(model, tokenizer, histories, n=k, temperature=1.0, top_p=1.0, max_new_tokens=1, seed=seed,
                  batch_size=batch_size, backend=backend)
    branches = [histories[a.prompt_index] + a.response_ids for a in alts]  # [P*K] in (position, alt) order
    conts = sample(model, tokenizer, branches, n=m, temperature=temperature, top_p=1.0,
                   max_new_tokens=max_new_tokens, seed=seed + 1, batch_size=batch_size, backend=backend)
    # A response is the sampled prefix + the alternative token + its continuation, decoded as one text.
    texts, golds = [], []
    for c in conts:
        j = idx[c.prompt_index // k]
        alt = alts[c.prompt_index]
        # An alternative that is eos ends the response: its "continuation" is nothing.
        tail = [] if alt.finish_reason == "eos" else c.response_ids
        resp = list(response_ids[flat.seq[j]][: flat.position[j]]) + alt.response_ids + tail
        texts.append(tokenizer.decode(resp, skip_special_tokens=True))
        golds.append(answers[flat.seq[j]])
    rewards = np.array([r.reward for r in scorer.score(texts, golds)], dtype=np.float64)
    outcomes = rewards.reshape(len(idx), k, m)
    out = []
    for p, j in enumerate(idx):
        est, lo, hi = bootstrap_cmi(outcomes[p], n_boot=n_boot, seed=seed + p, ci=ci)
        out.append(ProbeResult(int(j), float(flat.entropy[j]), int(deciles[p]), est, lo, hi,
                               float(outcomes[p].mean()), outcomes[p]))
    return out
