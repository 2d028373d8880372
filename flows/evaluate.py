"""DVC stage `evaluate@<variant>-<seed>` / `evaluate_base` as a Prefect flow:
`python -m flows.evaluate --name <variant> --seed <s>` or `python -m flows.evaluate --name base`."""

from __future__ import annotations

import argparse

from prefect import flow

from eapo.config import ConfigError, Params, load_params
from flows.stage import run_stage
from tasks.evaluate import BASE, evaluate_task


def add_name_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True,
                        help="model to evaluate: `base` (params.model) or a variant of study.variants "
                             "(its checkpoint <train_dir>/<variant>/seed<SEED>/model)")
    parser.add_argument("--seed", type=int, default=None,
                        help="study replicate of the variant (one of study.seeds; default: the first); "
                             "not for base")


@flow(name="evaluate", flow_run_name="evaluate-{name}",
      description="Greedy accuracy, avg@k and unbiased pass@k of one model on the test prompts and benchmarks.")
def evaluate_flow(params_path: str = "params.yaml", overrides: dict | None = None, name: str = "base",
                  seed: int | None = None) -> dict:
    return evaluate_task(load_params(params_path, overrides), name, seed)


def check_name(params: Params, args: argparse.Namespace) -> None:
    """`--name` must be `base` or one of `study.variants` (the models the evaluate matrix covers); `--seed`, given for a
    variant only, one of `study.seeds`."""
    if args.name != BASE and args.name not in params.study.variants:
        raise ConfigError(f"--name: unknown model {args.name!r}; expected {BASE!r} or one of study.variants "
                          f"({', '.join(params.study.variants)})")
    if args.seed is not None and args.name == BASE:
        raise ConfigError(f"--seed: {BASE!r} is the untrained policy and has no study seed")
    if args.seed is not None and args.seed not in params.study.seeds:
        raise ConfigError(f"--seed: {args.seed} is not one of study.seeds {list(params.study.seeds)}")


def main(argv: list[str] | None = None):
    return run_stage(evaluate_flow, argv, check=check_name, name=add_name_arg)


if __name__ == "__main__":
    main()
