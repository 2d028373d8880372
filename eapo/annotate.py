"""Entropy annotation of rollouts: per-token advantage, quadrant and gradient-norm proxy, the quadrant statistics,
and the Monte-Carlo CMI probe (DESIGN §4). Library code: arrays in, arrays and dicts out; no files, no Prefect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from eapo.core.advantages import get_advantage_fn
from eapo.core.cmi import DEFAULT_ESTIMATOR, bootstrap_cmi, cmi_from_outcomes, stratified_mean_difference
from eapo.core.credit import annotate_batch
from eapo.core.quadrants import quadrant_names
from eapo.core.stats import bootstrap_ci
from eapo.core.weighting import build_weighting
from eapo.reward import RewardScorer
from eapo.sampler import sample


@dataclass
class FlatTokens:
    """Rollouts flattened to one entry per response token (all [N] arrays)."""

    seq: np.ndarray  # index of the rollout row
    position: np.ndarray
    token_id: np.ndarray
    entropy: np.ndarray  # float32, as stored in the rollouts
    logprob: np.ndarray
    sum_p_sq: np.ndarray
    advantage: np.ndarray  # float32: the sequence's advantage, broadcast to its tokens
    reward: np.ndarray


@dataclass
class TokenAnnotation:
    """``annotate_rollouts``' result: the flat tokens and, per token, the quadrant and the gradient-norm proxy."""

    flat: FlatTokens
    tau: float
    """The entropy threshold: the batch (1−ρ) quantile, or the fixed one."""
    labels: list[str]
    """Quadrant name per token ("none" where A = 0)."""
    grad_norm: np.ndarray
    """[N] float32 ‖∇_z log π(y)‖, computed in float64 and rounded once (the tokens table stores it)."""
    stats: dict
    """Per quadrant: token count and share, mean entropy, mean |A|, and the GRPO gradient share Σ|Â|·‖∇‖
    (``eapo.core.quadrants.quadrant_stats``), over the float32 values the tokens table holds."""


def annotate_rollouts(rollouts: dict[str, list], advantage: str, rho: float,
                      tau: float | None = None) -> TokenAnnotation:
    """Annotate a rollouts artifact (its column dict) with the training step's own ``annotate_batch``: groups are
    prompts (one advantage per response, computed in float64 from the rewards and stored as float32), τ is the batch
    (1−ρ) quantile unless fixed, and the weighting is GRPO's (w = 1: the statistics describe the unweighted update)."""
    lengths = np.array([len(x) for x in rollouts["response_ids"]], dtype=np.int64)
    entropy = np.concatenate(rollouts["entropies"]).astype(np.float32)
    logprob = np.concatenate(rollouts["logprobs"]).astype(np.float32)
    sum_p_sq = np.concatenate(rollouts["sum_p_sq"]).astype(np.float32)
    advantage_fn = get_advantage_fn(advantage)
    ann = annotate_batch(torch.from_numpy(entropy), torch.from_numpy(logprob), torch.from_numpy(sum_p_sq),
                         torch.from_numpy(lengths), torch.tensor(rollouts["reward"], dtype=torch.float64),
                         list(rollouts["prompt_id"]), advantage_fn=lambda r, g: advantage_fn(r, g).float(),
                         weighting=build_weighting("none"), rho=rho, tau=tau, grad_norm_dtype=torch.float64)
    seq = ann.seq_ids.numpy()
    flat = FlatTokens(
        seq=seq,
        position=np.concatenate([np.arange(n) for n in lengths]) if len(lengths) else np.zeros(0, np.int64),
        token_id=np.concatenate(rollouts["response_ids"]).astype(np.int64),
        entropy=entropy,
        logprob=logprob,
        sum_p_sq=sum_p_sq,
        advantage=ann.advantages[ann.seq_ids].numpy(),
        reward=np.asarray(rollouts["reward"], dtype=np.float32)[seq],
    )
    return TokenAnnotation(flat, ann.tau, quadrant_names(ann.codes), ann.grad_norm.numpy(), ann.quadrants)


# --------------------------------------------------------------------------------------------------------------------
# CMI probe
# --------------------------------------------------------------------------------------------------------------------


def stratified_positions(entropy: np.ndarray, n: int, seed: int, tau: float,
                         high_share: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Pick about n token indices, ``high_share`` of them at H ≥ τ and the rest at H < τ, each stratum spread evenly
    over its own entropy range (its tokens sorted by entropy and cut into as many equal bins as picks, one seeded pick
    per bin). A stratum with too few tokens gives its remaining picks to the other.

    Stratifying on τ (not on deciles of all tokens) is what makes the high-vs-low comparison possible: with ρ = 0.2,
    deciles put only 2 of 16 positions above τ. Returns (sorted indices, decile of each among all tokens).
    """
    if not 0.0 <= high_share <= 1.0:
        raise ValueError(f"high_share must be in [0, 1], got {high_share}")
    if len(entropy) == 0 or n < 1:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    edges = np.quantile(entropy, np.linspace(0, 1, 11)[1:-1])
    decile = np.searchsorted(edges, entropy, side="right")
    high = np.flatnonzero(entropy >= tau)
    low = np.flatnonzero(entropy < tau)
    n = min(n, len(entropy))
    n_high = min(int(round(n * high_share)), len(high))
    n_low = min(n - n_high, len(low))
    n_high = min(n - n_low, len(high))
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for members, n_s in ((high, n_high), (low, n_low)):
        if n_s == 0:
            continue
        ordered = members[np.argsort(entropy[members], kind="stable")]
        picked.extend(int(rng.choice(b)) for b in np.array_split(ordered, n_s))
    idx = np.array(sorted(picked), dtype=np.int64)
    return idx, decile[idx]


@dataclass(frozen=True)
class ProbeResult:
    token_index: int
    entropy: float
    decile: int
    cmi: float
    """The chosen estimator's value (bias-corrected by default; may be slightly < 0 at one position)."""
    lo: float
    hi: float
    """Bootstrap interval of that same estimator."""
    p_mean: float
    outcomes: np.ndarray  # [K, M] 0/1
    cmi_plugin: float
    """The plug-in value, for comparison (biased upward at small M: eapo.core.cmi)."""
    high: bool
    """H ≥ τ: the stratum the position was drawn from."""


def cmi_probe(model, tokenizer, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
              answers: Sequence[str], flat: FlatTokens, scorer: RewardScorer, *, positions: int, k: int, m: int,
              max_new_tokens: int, n_boot: int, ci: float, seed: int, tau: float, high_share: float = 0.5,
              estimator: str = DEFAULT_ESTIMATOR, temperature: float = 1.0, batch_size: int = 64,
              backend: str = "fast") -> list[ProbeResult]:
    """Estimate I(y_t; R | h_t) at positions stratified on τ (``stratified_positions``; DESIGN §4).

    At each probed position t of response i, with history h = prompt + response[:t]: draw K alternative tokens
    y ~ π(·|h) at temperature 1, run M continuations from h + y, score them, and estimate
    I = H_b(E_y p(y)) − E_y H_b(p(y)) from the K×M outcomes with ``estimator`` (eapo.core.cmi; the bias-corrected
    jackknife by default, the plug-in kept beside it), with a bootstrap interval of that estimator.
    """
    idx, deciles = stratified_positions(flat.entropy, positions, seed, tau, high_share)
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
        est, lo, hi = bootstrap_cmi(outcomes[p], n_boot=n_boot, seed=seed + p, ci=ci, estimator=estimator)
        out.append(ProbeResult(int(j), float(flat.entropy[j]), int(deciles[p]), est, lo, hi,
                               float(outcomes[p].mean()), outcomes[p],
                               cmi_from_outcomes(outcomes[p], estimator="plugin"), bool(flat.entropy[j] >= tau)))
    return out


def cmi_comparison(probes: Sequence[ProbeResult], n_boot: int, ci: float, seed: int) -> dict:
    """High (H ≥ τ) vs low (H < τ) probed positions, from the per-position estimates (bias-corrected by default).

    Per stratum: ``n``, ``mean_cmi`` with a bootstrap interval over positions (``mean_cmi_lo``/``_hi``),
    ``mean_entropy``, ``cmi_over_h`` = mean CMI / mean H (the share of the entropy bound the outcome uses), and
    ``mean_cmi_plugin`` for comparison. ``diff_high_low`` = mean CMI(high) − mean CMI(low) with a stratified bootstrap
    interval (``eapo.core.cmi.stratified_mean_difference``); None where a stratum is empty. Resampling positions
    carries the per-position estimator noise as well as the spread between positions, so the intervals account for
    the correction. JSON-ready: python floats and ints, None for undefined.
    """
    out: dict = {}
    groups = {"high": [p for p in probes if p.high], "low": [p for p in probes if not p.high]}
    for name, ps in groups.items():
        vals = np.array([p.cmi for p in ps], dtype=np.float64)
        ent = np.array([p.entropy for p in ps], dtype=np.float64)
        row: dict = {"n": len(ps), "mean_cmi": None, "mean_cmi_lo": None, "mean_cmi_hi": None,
                     "mean_entropy": None, "cmi_over_h": None, "mean_cmi_plugin": None}
        if len(ps):
            mean, lo, hi = bootstrap_ci(vals, n_boot=n_boot, seed=seed, ci=ci)
            row.update(mean_cmi=mean, mean_cmi_lo=lo, mean_cmi_hi=hi, mean_entropy=float(ent.mean()),
                       cmi_over_h=float(mean / ent.mean()) if ent.mean() > 0 else None,
                       mean_cmi_plugin=float(np.mean([p.cmi_plugin for p in ps])))
        out[name] = row
    out["diff_high_low"] = out["diff_high_low_lo"] = out["diff_high_low_hi"] = None
    if groups["high"] and groups["low"]:
        d, lo, hi = stratified_mean_difference([p.cmi for p in groups["high"]], [p.cmi for p in groups["low"]],
                                               n_boot=n_boot, seed=seed, ci=ci)
        out.update(diff_high_low=d, diff_high_low_lo=lo, diff_high_low_hi=hi,
                   diff_high_low_plugin=float(out["high"]["mean_cmi_plugin"] - out["low"]["mean_cmi_plugin"]))
    return out
