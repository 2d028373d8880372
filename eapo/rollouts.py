"""Sample responses for prompts and score them: the one path shared by the rollout, train (step 0) and evaluate
stages, so a change to prompting, sampling or scoring lands everywhere at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eapo.config import ModelConfig, SamplingConfig
from eapo.policy import Policy, build_prompt_ids
from eapo.reward import RewardResult, RewardScorer
from eapo.sampler import Sample, Samples, sample


@dataclass(frozen=True)
class Scored:
    sample: Sample
    text: str
    result: RewardResult


def prompt_token_ids(policy: Policy, prompts: Sequence[str], model_cfg: ModelConfig) -> list[list[int]]:
    return [build_prompt_ids(policy.tokenizer, p, model_cfg.system_prompt, model_cfg.instruction) for p in prompts]


def sample_and_score(policy: Policy, prompts: Sequence[str], answers: Sequence[str], sampling: SamplingConfig,
                     model_cfg: ModelConfig, scorer: RewardScorer, *, n: int, seed: int,
                     temperature: float | None = None, progress: bool = True) -> tuple[list[Scored], dict]:
    """n responses per prompt, in (prompt, sample_idx) order, each with its decoded text and reward."""
    ids = prompt_token_ids(policy, prompts, model_cfg)
    samples: Samples = sample(policy.model, policy.tokenizer, ids, n=n,
                              temperature=sampling.temperature if temperature is None else temperature,
                              top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens, seed=seed,
                              batch_size=sampling.batch_size, backend=sampling.backend, progress=progress)
    texts = [policy.tokenizer.decode(s.response_ids, skip_special_tokens=True) for s in samples]
    results = scorer.score(texts, [answers[s.prompt_index] for s in samples],
                           truncated=[s.finish_reason == "length" for s in samples])
    return [Scored(s, t, r) for s, t, r in zip(samples, texts, results)], dict(samples.stats)


def summarize(scored: Sequence[Scored], group_size: int | None = None) -> dict:
    """Accuracy, extraction rate, lengths; with group_size, the share of groups whose rewards are mixed."""
    rewards = np.array([s.result.reward for s in scored], dtype=np.float64)
    out = {
        "samples": len(scored),
        "accuracy": float(rewards.mean()) if len(rewards) else 0.0,
        "extraction_rate": float(np.mean([s.result.extracted is not None for s in scored])) if scored else 0.0,
        "boxed_rate": float(np.mean([s.result.method == "boxed" for s in scored])) if scored else 0.0,
        "mean_length": float(np.mean([len(s.sample.response_ids) for s in scored])) if scored else 0.0,
        "eos_rate": float(np.mean([s.sample.finish_reason == "eos" for s in scored])) if scored else 0.0,
        "mean_entropy": float(np.mean(np.concatenate([s.sample.entropies for s in scored]))) if scored else 0.0,
        "reward_failures": int(sum(s.result.failure not in (None, "no_answer") for s in scored)),
    }
    if group_size:
        groups = rewards.reshape(-1, group_size)
        out["mixed_groups"] = float(np.mean(groups.min(axis=1) != groups.max(axis=1)))
    return out
