"""Stage `rollout`: G responses per training prompt from the base policy, with exact per-token statistics and
verifiable rewards."""

from __future__ import annotations

import os

from prefect import task
from prefect.cache_policies import NO_CACHE

from eapo.config import Params
from eapo.contracts import read_artifact, write_artifact
from eapo.lineage import make_lineage, write_json_artifact
from eapo.policy import THREADS_ENV, job_threads, load_policy, resolve_cache_dir, set_threads
from eapo.reward import RewardScorer
from eapo.rollouts import sample_and_score, summarize
from eapo.stageio import StageOutputs
from tasks.publish import markdown_table, publish_markdown, publish_table, record_assets

PARAMS_KEYS = ("model", "rollout", "reward")


def model_cache_dir(params: Params):
    """`paths.model_cache`, a relative one taken from the DVC project root (`$DVC_ROOT`, which DVC sets for every
    stage command): the jobs of `dvc queue start` run in copies under `.dvc/tmp/exps/` and share the project's cache."""
    return resolve_cache_dir(params.paths.model_cache, os.environ.get("DVC_ROOT"))


def apply_job_threads(params: Params) -> None:
    """torch threads for this process: `$EAPO_THREADS` when set (e.g. cores / N for `dvc queue start --jobs N`),
    else `model.threads`."""
    set_threads(job_threads(params.model.threads, os.environ.get(THREADS_ENV)))


def load_base_policy(params: Params):
    apply_job_threads(params)
    m = params.model
    return load_policy(m.name_or_path, dtype=m.dtype, device=m.device, cache_dir=model_cache_dir(params), seed=m.seed)


def first_prompts(path: str, n: int | None) -> list[dict]:
    """The first n prompts of a prompts artifact in id order (deterministic, independent of file order)."""
    table, _ = read_artifact(path, "prompts")
    rows = sorted(table.select(["id", "prompt", "answer"]).to_pylist(), key=lambda r: r["id"])
    return rows if n is None else rows[:n]


def rollout_rows(scored, prompts: list[dict], step: int = 0) -> list[dict]:
    rows = []
    for s in scored:
        p = prompts[s.sample.prompt_index]
        rows.append({
            "prompt_id": p["id"], "sample_idx": s.sample.sample_idx, "prompt": p["prompt"], "answer": p["answer"],
            "response": s.text, "prompt_ids": s.sample.prompt_ids, "response_ids": s.sample.response_ids,
            "logprobs": s.sample.logprobs, "entropies": s.sample.entropies, "sum_p_sq": s.sample.sum_p_sq,
            "n_tokens": len(s.sample.response_ids), "reward": s.result.reward, "extracted": s.result.extracted,
            "extract_method": s.result.method, "finish_reason": s.sample.finish_reason,
            "reward_failure": s.result.failure, "step": step,
        })
    return rows


@task(name="rollout", cache_policy=NO_CACHE)
def rollout_task(params: Params) -> dict:
    cfg = params.rollout
    with StageOutputs("rollout", [params.paths.rollouts, params.paths.rollout_metrics]) as staged:
        prompts = first_prompts(params.paths.prompts_train, cfg.num_prompts)
        policy = load_base_policy(params)
        with RewardScorer.from_config(params.reward) as scorer:
            scored, stats = sample_and_score(policy, [p["prompt"] for p in prompts],
                                             [p["answer"] for p in prompts], cfg, params.model, scorer,
                                             n=cfg.group_size, seed=cfg.seed)
        lineage = make_lineage("rollout", params.subset(*PARAMS_KEYS),
                               inputs={"prompts_train": params.paths.prompts_train}, seed=cfg.seed,
                               extra={"model": policy.info})
        write_artifact(rollout_rows(scored, prompts), staged.path(params.paths.rollouts), "rollouts", lineage)
        metrics = {**summarize(scored, cfg.group_size), "prompts": len(prompts), "tokens": stats["tokens"]}
        write_json_artifact(staged.path(params.paths.rollout_metrics), metrics, lineage)
        # Throughput is a property of the run, not of the data: the run record holds it (metrics.json is git-held).
        timing = {"tokens_per_s": stats["tokens_per_s"], "sampling_seconds": stats["seconds"]}
        staged.run_info.update(timing)
    metrics = {**metrics, **timing}
    record_assets([params.paths.rollouts],
                  [params.paths.prompts_train, policy.info.get("path") or params.model.name_or_path], "rollout")
    publish_table("rollout-metrics", [metrics], "Rollout accuracy, extraction rate, length and throughput")
    # Two responses from each of the first four prompts.
    shown = [s for s in scored if s.sample.prompt_index < 4 and s.sample.sample_idx < 2]
    examples = [{"prompt": s.sample.prompt_index, "sample": s.sample.sample_idx,
                 "answer": prompts[s.sample.prompt_index]["answer"], "extracted": s.result.extracted,
                 "reward": s.result.reward, "response": s.text[:200]} for s in shown]
    publish_table("rollout-samples", examples, "A few sampled responses")
    publish_markdown("rollout-summary", "\n".join([
        "# rollout", "", f"- model: `{policy.info.get('name') or params.model.name_or_path}`",
        f"- {len(prompts)} prompts x G={cfg.group_size} -> `{params.paths.rollouts}`", "",
        markdown_table([metrics])]), "Rollout stage summary")
    return metrics
