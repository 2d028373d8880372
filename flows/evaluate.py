"""DVC stage `evaluate@<variant>-<seed>` / `evaluate_base` as a Prefect flow:
`python -m flows.evaluate --name <variant> --seed <s>` or `python -m flows.evaluate --name base`."""

from __future__ import annotations

import argparse

from prefect import flow

from eapo.config import load_params
from flows.stage import run_stage
from tasks.evaluate import evaluate_task


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


if __name__ == "__main__":
    run_stage(evaluate_flow, name=add_name_arg)
