"""Steps of stage `rollout` (flows/rollout.py): G responses per training prompt from the base policy, with exact
per-token statistics and verifiable rewards. The loaders here (prompts, base policy, threads) serve every stage that
samples."""

from __future__ import annotations

import os

from eapo.config import Params
from eapo.contracts import read_artifact
from eapo.data import step_prompt_indices
from eapo.policy import THREADS_ENV, Policy, job_threads, load_policy, resolve_cache_dir, set_threads
from eapo.reward import RewardScorer
from eapo.rollouts import Scored, sample_and_score
from tasks import stage_task
from tasks.publish import Markdown, Publication, Table, markdown_table

PARAMS_KEYS = ("model", "rollout", "reward")


def model_cache_dir(params: Params):
    """`paths.model_cache`, a relative one taken from the DVC project root (`$DVC_ROOT`, which DVC sets for every
    stage command): the jobs of `dvc queue start` run in copies under `.dvc/tmp/exps/` and share the project's cache."""
    return resolve_cache_dir(params.paths.model_cache, os.environ.get("DVC_ROOT"))


def apply_job_threads(params: Params) -> None:
    """torch threads for this process: `$EAPO_THREADS` when set (e.g. cores / N for `dvc queue start --jobs N`),
    else `model.threads`."""
    set_threads(job_threads(params.model.threads, os.environ.get(THREADS_ENV)))


def load_model_policy(params: Params, name_or_path: str) -> Policy:
    """The policy at `name_or_path` (the base model, or a trained checkpoint) as the `model` section runs it: dtype,
    device, kernels, seed, and this job's threads."""
    apply_job_threads(params)
    m = params.model
    return load_policy(name_or_path, dtype=m.dtype, device=m.device, cache_dir=model_cache_dir(params), seed=m.seed,
                       deterministic=m.deterministic)


def load_base_policy(params: Params) -> Policy:
    return load_model_policy(params, params.model.name_or_path)


def first_prompts(path: str, n: int | None) -> list[dict]:
    """The first n prompts of a prompts artifact in id order (deterministic, independent of file order)."""
    table, _ = read_artifact(path, "prompts")
    rows = sorted(table.select(["id", "prompt", "answer"]).to_pylist(), key=lambda r: r["id"])
    return rows if n is None else rows[:n]


def rollout_prompts(path: str, n: int | None, seed: int) -> list[dict]:
    """The rollout stage's prompts: the first n of the order in which training visits the prompts with this seed
    (``step_prompt_indices``), so that with ``rollout.seed == train.seed`` they include the prompts of training's
    step 0, whose samples the train stages then reuse (`train.reuse_rollouts`). None, or n >= the number of prompts:
    every prompt, in id order."""
    rows = first_prompts(path, None)
    if n is None or n >= len(rows):
        return rows
    return [rows[i] for i in step_prompt_indices(len(rows), n, seed, 0)]


def base_model_path(params: Params, policy: Policy) -> str:
    """The base policy as an asset input: its resolved path, else the configured name."""
    return policy.info.get("path") or params.model.name_or_path


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


load_prompts = stage_task(name="load-prompts")(first_prompts)
load_rollout_prompts = stage_task(name="load-prompts")(rollout_prompts)
load_base = stage_task(name="load-policy")(load_base_policy)


@stage_task(name="rollout")
def sample_rollouts(policy: Policy, prompts: list[dict], params: Params) -> tuple[list[Scored], dict]:
    """G = `rollout.group_size` scored responses per prompt, and the sampler's statistics (tokens, seconds)."""
    cfg = params.rollout
    with RewardScorer.from_config(params.reward) as scorer:
        return sample_and_score(policy, [p["prompt"] for p in prompts], [p["answer"] for p in prompts], cfg,
                                params.model, scorer, n=cfg.group_size, seed=cfg.seed)


def publications(params: Params, policy: Policy, prompts: list[dict], scored: list[Scored],
                 metrics: dict) -> list[Publication]:
    """The metrics, two responses from each of the first four prompts, and a summary."""
    cfg = params.rollout
    shown = [s for s in scored if s.sample.prompt_index < 4 and s.sample.sample_idx < 2]
    examples = [{"prompt": s.sample.prompt_index, "sample": s.sample.sample_idx,
                 "answer": prompts[s.sample.prompt_index]["answer"], "extracted": s.result.extracted,
                 "reward": s.result.reward, "response": s.text[:200]} for s in shown]
    return [
        Table("rollout-metrics", [metrics], "Rollout accuracy, extraction rate, length and throughput"),
        Table("rollout-samples", examples, "A few sampled responses"),
        Markdown("rollout-summary", "\n".join([
            "# rollout", "", f"- model: `{policy.info.get('name') or params.model.name_or_path}`",
            f"- {len(prompts)} prompts x G={cfg.group_size} -> `{params.paths.rollouts}`", "",
            markdown_table([metrics])]), "Rollout stage summary"),
    ]
