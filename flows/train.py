"""DVC stage `train@<variant>-<seed>`: `python -m flows.train --variant eapo --seed 0`. Online RLVR of the base policy
under one token weighting: load prompts and policy, reuse the rollout stage's step-0 samples when they fit, train
(tasks/train.py), then the shared tail (tasks/tail.py).

`--seed s` is the study replicate (one of `study.seeds`): the trainer runs with seed `train.seed + s` and writes
`<train_dir>/<variant>/seed<s>/`.

On a GPU box: `accelerate launch -m flows.train --variant eapo` (each process samples its shard of the prompts)."""

from __future__ import annotations

import argparse
from functools import partial

from prefect import flow

from eapo.config import ConfigError, Params, load_params
from eapo.layout import train_paths
from flows.stage import run_stage
from tasks.rollout import base_model_path, load_base, load_prompts
from tasks.tail import Assets, File, Parquet, StageTail
from tasks.train import (
    final_metrics,
    fresh_run_dir,
    publications,
    replicate_params,
    run_info,
    run_params,
    step0_samples,
    steps_rows,
    train_inputs,
    train_policy,
    write_curves,
)


@flow(name="train", description="Online RLVR of the base policy under one token weighting (variant).")
def train_flow(variant: str, params_path: str = "params.yaml", overrides: dict | None = None, seed: int = 0) -> dict:
    """Train `variant` as study replicate `seed` (trainer seed `train.seed + seed`)."""
    params = replicate_params(load_params(params_path, overrides), variant, seed)
    paths, subset = train_paths(params, variant, seed), run_params(params, variant, seed)
    # The model, the steps table and the curves are replaced together, or none is; a second run of this replicate
    # fails at once naming the holder of the lock.
    with StageTail(f"train@{variant}-{seed}", [paths["model"], paths["steps"], paths["curves"]],
                   key=f"train-{variant}-seed{seed}") as tail:
        prompts = load_prompts(params.paths.prompts_train, None)
        policy = load_base(params)
        initial = step0_samples(params, prompts)
        result = train_policy(policy, prompts, params, variant, fresh_run_dir(paths["root"], subset), initial)
        inputs = train_inputs(params, initial)
        final = final_metrics(params, variant, seed, result)
        tail.finish({paths["model"]: File(result.model_dir.replace, lineage=True),
                     paths["steps"]: Parquet(steps_rows(result), "steps"),
                     paths["curves"]: File(partial(write_curves, steps=result.steps))},
                    params=subset, inputs=inputs, seed=params.train.seed,
                    extra={"variant": variant, "study_seed": seed, "train_seed": params.train.seed,
                           "base_model": policy.info, "reused_rollouts": initial is not None},
                    run_info=run_info(result), cleanup=[paths["root"] / ".runs"],  # checkpoints: for resuming only
                    assets=Assets([paths["model"], paths["steps"]],
                                  [*inputs.values(), base_model_path(params, policy)]),
                    publish=publications(params, variant, seed, paths, subset, result, initial, final))
    return final


def check_variant(params: Params, args: argparse.Namespace) -> None:
    """`--variant` must be a key of `variants` in the params file, and `--seed` one of `study.seeds`."""
    if args.variant not in params.variants:
        raise ConfigError(f"--variant: unknown variant {args.variant!r} (defined in variants: "
                          f"{', '.join(params.variants)})")
    if args.seed not in params.study.seeds:
        raise ConfigError(f"--seed: {args.seed} is not one of study.seeds {list(params.study.seeds)}")


def main(argv: list[str] | None = None):
    return run_stage(train_flow, argv, check=check_variant,
                     variant=lambda p: p.add_argument("--variant", required=True, help="a key of variants"),
                     seed=lambda p: p.add_argument("--seed", type=int, default=0,
                                                   help="study replicate (trainer seed = train.seed + SEED)"))


if __name__ == "__main__":
    main()
