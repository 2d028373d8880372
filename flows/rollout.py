"""DVC stage `rollout`: `python -m flows.rollout`. G responses per training prompt from the base policy with exact
per-token log-probs and entropies, scored: load prompts and policy, sample (tasks/rollout.py), then the shared tail
(tasks/tail.py)."""

from __future__ import annotations

from prefect import flow

from eapo.config import load_params
from eapo.rollouts import summarize
from flows.stage import run_stage
from tasks.rollout import (
    PARAMS_KEYS,
    base_model_path,
    load_base,
    load_rollout_prompts,
    publications,
    rollout_rows,
    sample_rollouts,
)
from tasks.tail import Assets, Json, Parquet, StageTail


@flow(name="rollout", description="Sample G responses per training prompt with exact per-token log-probs/entropy.")
def rollout_flow(params_path: str = "params.yaml", overrides: dict | None = None) -> dict:
    params = load_params(params_path, overrides)
    p, cfg = params.paths, params.rollout
    with StageTail("rollout", [p.rollouts, p.rollout_metrics]) as tail:
        prompts = load_rollout_prompts(p.prompts_train, cfg.num_prompts, cfg.seed)
        policy = load_base(params)
        scored, stats = sample_rollouts(policy, prompts, params)
        metrics = {**summarize(scored, cfg.group_size), "prompts": len(prompts), "tokens": stats["tokens"]}
        # Throughput is a property of the run, not of the data: the run record holds it (metrics.json is git-held).
        timing = {"tokens_per_s": stats["tokens_per_s"], "sampling_seconds": stats["seconds"]}
        tail.finish({p.rollouts: Parquet(rollout_rows(scored, prompts), "rollouts"), p.rollout_metrics: Json(metrics)},
                    params=params.subset(*PARAMS_KEYS), inputs={"prompts_train": p.prompts_train}, seed=cfg.seed,
                    extra={"model": policy.info}, run_info=timing,
                    assets=Assets([p.rollouts], [p.prompts_train, base_model_path(params, policy)]),
                    publish=publications(params, policy, prompts, scored, {**metrics, **timing}))
    return {**metrics, **timing}


if __name__ == "__main__":
    run_stage(rollout_flow)
