"""DVC stage `evaluate@<name>` as a Prefect flow: `python -m flows.evaluate --name <base|variant>`."""

from __future__ import annotations

import argparse

from prefect import flow

from eapo.config import ConfigError, Params, load_params
from flows.stage import run_stage
from tasks.evaluate import BASE, evaluate_task


def add_name_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True,
                        help="model to evaluate: `base` (params.model) or a variant of study.variants "
                             "(its checkpoint <train_dir>/<variant>/model)")


@flow(name="evaluate", flow_run_name="evaluate-{name}",
      description="Greedy accuracy, avg@k and unbiased pass@k of one model on the test prompts and benchmarks.")
def evaluate_flow(params_path: str = "params.yaml", overrides: dict | None = None, name: str = "base") -> dict:
    return evaluate_task(load_params(params_path, overrides), name)


def check_name(params: Params, args: argparse.Namespace) -> None:
    """`--name` must be `base` or one of `study.variants` (the models the evaluate matrix covers)."""
    if args.name != BASE and args.name not in params.study.variants:
        raise ConfigError(f"--name: unknown model {args.name!r}; expected {BASE!r} or one of study.variants "
                          f"({', '.join(params.study.variants)})")


def main(argv: list[str] | None = None):
    return run_stage(evaluate_flow, argv, check=check_name, name=add_name_arg)


if __name__ == "__main__":
    main()
