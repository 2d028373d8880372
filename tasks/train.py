"""Steps of stage `train@<variant>-<seed>` (flows/train.py): online RLVR of the base policy under one token weighting,
one study replicate."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

from eapo.config import Params, params_hash
from eapo.contracts import read_artifact
from eapo.policy import Policy
from eapo.sampler import Sample
from eapo.trainer import WALL_TIME_KEYS, TrainResult, step_prompt_indices, train
from tasks import stage_task
from tasks.publish import Markdown, Publication, Table, markdown_table

SAMPLING_KEYS = ("group_size", "temperature", "top_p", "max_new_tokens")


def params_keys(variant: str) -> tuple[str, ...]:
    return ("model", "train", "reward", f"variants.{variant}")


def replicate_seed(params: Params, seed: int) -> int:
    """The trainer's seed for study replicate `seed`: `train.seed + seed` (see `StudyConfig.seeds`)."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return params.train.seed + seed


def replicate_params(params: Params, variant: str, seed: int) -> Params:
    """The params of study replicate `seed` of `variant`: `train.seed` becomes `train.seed + seed`."""
    if variant not in params.variants:
        raise ValueError(f"unknown variant {variant!r}; defined in params.yaml variants: {sorted(params.variants)}")
    return dataclasses.replace(params, train=dataclasses.replace(params.train, seed=replicate_seed(params, seed)))


def run_params(params: Params, variant: str, seed: int) -> dict:
    """The params subset the replicate's lineage records (and its checkpoints are keyed by)."""
    return {**params.subset(*params_keys(variant)), "study.seed": seed}


def step0_samples(params: Params, prompts: list[dict]) -> list[tuple[Sample, float]] | None:
    """The rollout stage's samples for the step-0 prompts, when the policy and sampling params are the same.

    Step 0 samples from the unchanged base policy, so the rollout stage's responses are valid step-0 samples. They
    are reused when the rollouts cover every step-0 prompt with at least G samples (the rollout stage rolls out the
    first prompts of training's order for `rollout.seed`, so `rollout.seed == train.seed` covers them, as does
    `rollout.num_prompts: null`) and the sampling params match; otherwise the trainer samples step 0 itself."""
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


def fresh_run_dir(root: Path, subset: dict) -> Path:
    """Where the replicate checkpoints, in a folder named by the params hash: a rerun with the same params resumes, a
    run with changed params starts fresh instead of resuming someone else's optimizer state (the other folders, stale,
    are removed)."""
    run_dir = root / ".runs" / params_hash(subset)
    for stale in (root / ".runs").glob("*") if (root / ".runs").exists() else []:
        if stale != run_dir:
            shutil.rmtree(stale, ignore_errors=True)
    return run_dir


@stage_task(name="train")
def train_policy(policy: Policy, prompts: list[dict], params: Params, variant: str, run_dir: Path,
                 initial: list[tuple[Sample, float]] | None) -> TrainResult:
    """`train.steps` steps of the variant's update; the trainer logs one line per step (eapo.train)."""
    return train(policy, prompts, params.train, variant, params.variants[variant], params.model, params.reward,
                 run_dir, initial_samples=initial,
                 # the stage deletes its checkpoints once the model is committed (flows/train.py): none after the end
                 final_checkpoint=False)


def train_inputs(params: Params, initial: list | None) -> dict[str, str]:
    inputs = {"prompts_train": params.paths.prompts_train}
    if initial is not None:
        inputs["rollouts"] = params.paths.rollouts
    return inputs


def steps_rows(result: TrainResult) -> list[dict]:
    """The steps artifact: every step's metrics but the wall times (those go to the run record)."""
    return [{k: v for k, v in r.items() if k not in WALL_TIME_KEYS} for r in result.steps]


def run_info(result: TrainResult) -> dict:
    """What the run record holds: wall time and whether the run resumed are not data."""
    return {"resumed_from": result.resumed_from, "seconds": result.seconds,
            "steps": [{k: r[k] for k in ("step", *WALL_TIME_KEYS)} for r in result.steps]}


def write_curves(path: Path, steps: list[dict]) -> None:
    """curves.csv, the `dvc plots` view of the training curves."""
    with open(path, "w", newline="") as fh:
        cols = ["step", "reward_mean", "entropy_mean", "response_length", "clip_frac", "grad_norm"]
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(steps)


def final_metrics(params: Params, variant: str, seed: int, result: TrainResult) -> dict:
    first, last = result.steps[0], result.steps[-1]
    return {"variant": variant, "seed": seed, "train_seed": params.train.seed, "steps": len(result.steps),
            "reward_start": first["reward_mean"],
            "reward_end": last["reward_mean"], "entropy_start": first["entropy_mean"],
            "entropy_end": last["entropy_mean"], "seconds": round(result.seconds, 1)}


def publications(params: Params, variant: str, seed: int, paths: dict[str, Path], subset: dict, result: TrainResult,
                 initial: list | None, final: dict) -> list[Publication]:
    name = f"{variant}-seed{seed}"
    return [
        Table(f"train-{name}-final", [final], f"Final training metrics of {variant} (seed {seed})"),
        Markdown(f"train-{name}-summary", "\n".join([
            f"# train@{variant}-{seed}", "", f"- weighting: `{json.dumps(subset[f'variants.{variant}'])}`",
            f"- study seed {seed} (trainer seed train.seed + {seed} = {params.train.seed})",
            f"- checkpoint: `{paths['model']}`", f"- steps: `{paths['steps']}`",
            f"- step-0 samples reused from the rollout stage: {initial is not None}", "",
            markdown_table([{k: r[k] for k in ("step", "reward_mean", "entropy_mean", "response_length", "loss")}
                            for r in result.steps])]), f"Training summary of {variant} (seed {seed})"),
    ]
