"""Stage `train@<variant>-<seed>`: online RLVR of the base policy under one token weighting, one study replicate."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from eapo.config import Params, params_hash
from eapo.contracts import read_artifact, write_artifact
from eapo.layout import train_paths
from eapo.lineage import make_lineage, write_sidecar
from eapo.sampler import Sample
from eapo.stageio import StageOutputs
from eapo.trainer import WALL_TIME_KEYS, step_prompt_indices, train
from tasks.publish import markdown_table, publish_markdown, publish_table, record_assets
from tasks.rollout import first_prompts, load_base_policy

SAMPLING_KEYS = ("group_size", "temperature", "top_p", "max_new_tokens")


def params_keys(variant: str) -> tuple[str, ...]:
    return ("model", "train", "reward", f"variants.{variant}")


def replicate_seed(params: Params, seed: int) -> int:
    """The trainer's seed for study replicate `seed`: `train.seed + seed` (see `StudyConfig.seeds`)."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return params.train.seed + seed


def step0_samples(params: Params, prompts: list[dict]) -> list[tuple[Sample, float]] | None:
    """The rollout stage's samples for the step-0 prompts, when the policy and sampling params are the same.

    Step 0 samples from the unchanged base policy, so the rollout stage's responses are valid step-0 samples. They
    are reused when the rollouts cover every step-0 prompt with at least G samples (e.g. `rollout.num_prompts: null`)
    and the sampling params match; otherwise the trainer samples step 0 itself."""
    cfg, ro = params.train, params.rollout
    if not cfg.reuse_rollouts or any(getattr(cfg, k) != getattr(ro, k) for k in SAMPLING_KEYS):
        return None
    if not Path(params.paths.rollouts).exists():
        return None
    table, _ = read_artifact(params.paths.rollouts, "rollouts")
    by_prompt: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    out = []
    for k, idx in enumerate(step_prompt_indices(len(prompts), cfg.prompts_per_step, cfg.seed, 0)):
        rows = sorted(by_prompt.get(prompts[idx]["id"], []), key=lambda r: r["sample_idx"])[: cfg.group_size]
        if len(rows) < cfg.group_size:
            return None
        out += [(Sample(k, r["sample_idx"], r["prompt_ids"], r["response_ids"], r["logprobs"], r["entropies"],
                        r["sum_p_sq"], r["finish_reason"]), r["reward"]) for r in rows]
    return out


@task(name="train", cache_policy=NO_CACHE)
def train_task(params: Params, variant: str, seed: int = 0) -> dict:
    """Train `variant` as study replicate `seed` (trainer seed `train.seed + seed`)."""
    if variant not in params.variants:
        raise ValueError(f"unknown variant {variant!r}; defined in params.yaml variants: {sorted(params.variants)}")
    paths = train_paths(params, variant, seed)
    effective_seed = replicate_seed(params, seed)
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, seed=effective_seed))
    # The model, the steps table and the curves are replaced together, or none is; a second run of this replicate
    # fails at once naming the holder of the lock.
    with StageOutputs(f"train@{variant}-{seed}", [paths["model"], paths["steps"], paths["curves"]]) as staged:
        result, subset, inputs, policy, initial = _train(params, variant, seed, paths, staged)
        staged.cleanup.append(paths["root"] / ".runs")  # checkpoints are only for resuming a killed run
    return _finish(params, variant, seed, paths, result, subset, inputs, policy, initial)


def _train(params: Params, variant: str, seed: int, paths: dict[str, Path], staged: StageOutputs):
    """Train and write every output into the staging area; the caller commits them together."""
    subset = {**params.subset(*params_keys(variant)), "study.seed": seed}
    prompts = first_prompts(params.paths.prompts_train, None)
    policy = load_base_policy(params)
    initial = step0_samples(params, prompts)
    # Checkpoints live under a directory named by the params hash: a rerun with the same params resumes, a run with
    # changed params starts fresh instead of resuming someone else's optimizer state.
    run_dir = paths["root"] / ".runs" / params_hash(subset)
    for stale in (paths["root"] / ".runs").glob("*") if (paths["root"] / ".runs").exists() else []:
        if stale != run_dir:
            shutil.rmtree(stale, ignore_errors=True)

    result = train(policy, prompts, params.train, variant, params.variants[variant], params.model, params.reward,
                   run_dir, initial_samples=initial)  # the trainer logs one line per step (eapo.train)
    inputs = {"prompts_train": params.paths.prompts_train}
    if initial is not None:
        inputs["rollouts"] = params.paths.rollouts
    # Only what the data depends on: wall time and whether the run resumed go to the run record, not the artifacts.
    lineage = make_lineage(f"train@{variant}-{seed}", subset, inputs=inputs, seed=params.train.seed,
                           extra={"variant": variant, "study_seed": seed, "train_seed": params.train.seed,
                                  "base_model": policy.info, "reused_rollouts": initial is not None})
    staged.run_info.update({"resumed_from": result.resumed_from, "seconds": result.seconds,
                            "steps": [{k: r[k] for k in ("step", *WALL_TIME_KEYS)} for r in result.steps]})
    model = staged.path(paths["model"])
    result.model_dir.replace(model)
    write_sidecar(model, lineage)
    table = [{k: v for k, v in r.items() if k not in WALL_TIME_KEYS} for r in result.steps]
    write_artifact(table, staged.path(paths["steps"]), "steps", lineage)
    with open(staged.path(paths["curves"]), "w", newline="") as fh:
        cols = ["step", "reward_mean", "entropy_mean", "response_length", "clip_frac", "grad_norm"]
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result.steps)
    return result, subset, inputs, policy, initial


def _finish(params: Params, variant: str, seed: int, paths: dict[str, Path], result, subset, inputs, policy,
            initial) -> dict:
    effective_seed = params.train.seed
    base_model = policy.info.get("path") or params.model.name_or_path
    name = f"{variant}-seed{seed}"
    record_assets([paths["model"], paths["steps"]], [*inputs.values(), base_model], f"train-{name}")
    first, last = result.steps[0], result.steps[-1]
    final = {"variant": variant, "seed": seed, "train_seed": effective_seed, "steps": len(result.steps),
             "reward_start": first["reward_mean"],
             "reward_end": last["reward_mean"], "entropy_start": first["entropy_mean"],
             "entropy_end": last["entropy_mean"], "seconds": round(result.seconds, 1)}
    publish_table(f"train-{name}-final", [final], f"Final training metrics of {variant} (seed {seed})")
    publish_markdown(f"train-{name}-summary", "\n".join([
        f"# train@{variant}-{seed}", "", f"- weighting: `{json.dumps(subset[f'variants.{variant}'])}`",
        f"- study seed {seed} (trainer seed train.seed + {seed} = {effective_seed})",
        f"- checkpoint: `{paths['model']}`", f"- steps: `{paths['steps']}`",
        f"- step-0 samples reused from the rollout stage: {initial is not None}", "",
        markdown_table([{k: r[k] for k in ("step", "reward_mean", "entropy_mean", "response_length", "loss")}
                        for r in result.steps])]), f"Training summary of {variant} (seed {seed})")
    return final
