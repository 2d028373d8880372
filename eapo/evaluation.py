"""Evaluation metrics (DESIGN §4 "Evaluation"): rows of the `samples` contract and their per-dataset aggregation.

Pure library: no Prefect, no paths. Sampling and scoring go through `eapo.rollouts.sample_and_score`; the estimators
are `eapo.core.stats` (unbiased pass@k, avg@k). This module only turns scored samples into contract rows and a samples
table into metrics.

Metric definitions, per dataset (one greedy decode and k samples at `evaluate.temperature` per prompt):

- `greedy_acc`: mean reward of the greedy decodes (sample_idx = -1);
- `avg@k`: mean over prompts of the per-prompt mean reward of the k samples;
- `pass@k'` for k' in {1, k}: mean over prompts of the unbiased 1 - C(n-c, k')/C(n, k') (n samples, c correct);
- `mean_length`: mean response length in tokens of the samples (`greedy_length` for the greedy decodes);
- `mean_entropy`: token-weighted mean of the per-token entropy (nats, temperature 1), as `rollouts.summarize` does;
- `extraction_rate`: share of samples from which an answer was extracted; `eos_rate`: share that ended with eos.
- where the credit came from, per extraction method m in {boxed, answer_is, last_number} (`eapo.reward.METHODS`):
  `acc_from_<m>`: mean reward of the samples counting only those whose answer m extracted (they sum to the samples'
  mean reward, i.e. avg@k); `credit_share_<m>`: the share of all credit that came from m (they sum to 1, or are all 0
  when nothing was credited); `greedy_acc_from_<m>` for the greedy decodes. A score that rests on `last_number` is
  one to read with care: it was read from a response's final sentence, not stated as an answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from eapo.core.stats import avg_at_k, pass_at_k
from eapo.reward import METHODS

CREDITED_METHODS = tuple(m for m in METHODS if m != "none")

GREEDY_IDX = -1
SAMPLE_COLUMNS = ("model", "dataset", "prompt_id", "sample_idx", "mode", "response", "answer", "extracted",
                  "extract_method", "reward", "n_tokens", "entropy_mean", "finish_reason", "reward_failure")


def sample_rows(scored: Sequence, prompts: Sequence[dict], *, model: str, dataset: str, mode: str) -> list[dict]:
    """Rows of the `samples` contract from `sample_and_score` output. `mode="greedy"` gives sample_idx -1."""
    if mode not in ("greedy", "sample"):
        raise ValueError(f"mode must be 'greedy' or 'sample', got {mode!r}")
    rows = []
    for s in scored:
        p = prompts[s.sample.prompt_index]
        ent = s.sample.entropies
        rows.append({
            "model": model, "dataset": dataset, "prompt_id": p["id"],
            "sample_idx": GREEDY_IDX if mode == "greedy" else int(s.sample.sample_idx), "mode": mode,
            "response": s.text, "answer": p["answer"], "extracted": s.result.extracted,
            "extract_method": s.result.method, "reward": float(s.result.reward),
            "n_tokens": len(s.sample.response_ids),
            "entropy_mean": float(np.mean(ent)) if len(ent) else 0.0,
            "finish_reason": s.sample.finish_reason, "reward_failure": s.result.failure,
        })
    return rows


def pass_at_k_per_prompt(samples: pd.DataFrame, k: int) -> pd.Series:
    """Unbiased pass@k of each prompt from its sampled rows (mode == "sample"), indexed by prompt_id."""
    sampled = samples[samples["mode"] == "sample"]
    grouped = sampled.groupby("prompt_id", sort=True)["reward"]
    n, c = grouped.size(), grouped.sum().round().astype(int)
    return pd.Series([pass_at_k(int(n[p]), int(c[p]), k) for p in n.index], index=n.index, name=f"pass@{k}",
                     dtype=float)


def per_prompt_accuracy(samples: pd.DataFrame, dataset: str | None = None, mode: str = "sample") -> pd.Series:
    """Per-prompt mean reward (the unit a paired bootstrap resamples), indexed by prompt_id and sorted."""
    df = samples if dataset is None else samples[samples["dataset"] == dataset]
    df = df[df["mode"] == mode]
    return df.groupby("prompt_id", sort=True)["reward"].mean().astype(float).rename(f"{mode}_acc")


def credit_by_method(rows: pd.DataFrame, prefix: str = "") -> dict[str, float]:
    """`acc_from_<m>` and (without a prefix) `credit_share_<m>` of these rows, per extraction method (module doc)."""
    rewards = rows["reward"].to_numpy(dtype=np.float64)
    methods = rows["extract_method"].to_numpy()
    total = float(rewards.sum())
    out: dict[str, float] = {}
    for m in CREDITED_METHODS:
        credit = float(rewards[methods == m].sum())
        out[f"{prefix}acc_from_{m}"] = credit / len(rows) if len(rows) else 0.0
        if not prefix:
            out[f"credit_share_{m}"] = credit / total if total > 0 else 0.0
    return out


def dataset_metrics(samples: pd.DataFrame, ks: Iterable[int] | None = None) -> dict[str, float]:
    """Metrics of one dataset's rows (see the module doc). `ks` defaults to {1, n} with n the samples per prompt."""
    sampled = samples[samples["mode"] == "sample"]
    greedy = samples[samples["mode"] == "greedy"]
    out: dict[str, float] = {"prompts": int(samples["prompt_id"].nunique())}
    if len(greedy):
        out["greedy_acc"] = float(greedy["reward"].mean())
        out["greedy_length"] = float(greedy["n_tokens"].mean())
        out["greedy_extraction_rate"] = float(greedy["extracted"].notna().mean())
        out.update(credit_by_method(greedy, prefix="greedy_"))
    if len(sampled):
        per_prompt = sampled.groupby("prompt_id", sort=True)["reward"]
        sizes = per_prompt.size()
        n_min = int(sizes.min())
        ks = sorted({1, n_min} if ks is None else set(ks))
        if int(sizes.max()) != n_min:
            raise ValueError(f"prompts have unequal sample counts ({n_min}..{int(sizes.max())}); avg@k needs equal k")
        out["samples_per_prompt"] = n_min
        out[f"avg@{n_min}"] = avg_at_k([g.to_numpy(dtype=np.float64) for _, g in per_prompt])
        for k in ks:
            if k > n_min:
                raise ValueError(f"pass@{k} needs at least {k} samples per prompt, got {n_min}")
            out[f"pass@{k}"] = float(pass_at_k_per_prompt(samples, k).mean())
        tokens = sampled["n_tokens"].to_numpy(dtype=np.float64)
        out["mean_length"] = float(tokens.mean())
        out["mean_entropy"] = float(np.sum(sampled["entropy_mean"].to_numpy(dtype=np.float64) * tokens)
                                    / max(tokens.sum(), 1.0))
        out["extraction_rate"] = float(sampled["extracted"].notna().mean())
        out["eos_rate"] = float((sampled["finish_reason"] == "eos").mean())
        failures = sampled["reward_failure"].fillna("no_answer")
        out["reward_failures"] = int((failures != "no_answer").sum())
        out.update(credit_by_method(sampled))
    return out


def compute_metrics(samples: pd.DataFrame, ks: Iterable[int] | None = None) -> dict[str, dict[str, float]]:
    """{dataset: metrics} in the datasets' order of first appearance ("test" first when the task writes it so)."""
    return {ds: dataset_metrics(samples[samples["dataset"] == ds], ks)
            for ds in pd.unique(samples["dataset"])}


def flatten_metrics(nested: dict[str, dict[str, float]]) -> dict[str, float]:
    """{"test": {"avg@4": x}} -> {"test.avg@4": x}."""
    return {f"{ds}.{k}": v for ds, m in nested.items() for k, v in m.items()}


def metrics_rows(nested: dict[str, dict[str, float]]) -> list[dict]:
    """One row per dataset (for a table artifact); missing keys are None."""
    keys: list[str] = []
    for m in nested.values():
        keys += [k for k in m if k not in keys]
    return [{"dataset": ds, **{k: m.get(k) for k in keys}} for ds, m in nested.items()]

