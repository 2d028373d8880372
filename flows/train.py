"""DVC stage `train@<variant>-<seed>` as a Prefect flow: `python -m flows.train --variant eapo --seed 0`.

`--seed s` is the study replicate (one of `study.seeds`): the trainer runs with seed `train.seed + s` and writes
`<train_dir>/<variant>/seed<s>/`.

On a GPU box: `accelerate launch -m flows.train --variant eapo` (each process samples its shard of the prompts)."""

from __future__ import annotations

import argparse

from prefect import flow

from eapo.config import ConfigError, Params, load_params
from flows.stage import run_stage
from tasks.train import train_task


@flow(name="train", description="Online RLVR of the base policy under one token weighting (variant).")
def train_flow(variant: str, params_path: str = "params.yaml", overrides: dict | None = None, seed: int = 0) -> dict:
    return train_task(load_params(params_path, overrides), variant, seed)


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
