"""DVC stage `evaluate@<variant>-<seed>` / `evaluate_base`: `python -m flows.evaluate --name <variant> --seed <s>` or
`python -m flows.evaluate --name base`. Greedy accuracy, avg@k and pass@k of one model: load the datasets and the
model, sample and score (tasks/evaluate.py), the metrics, then the shared tail (tasks/tail.py)."""

from __future__ import annotations

import argparse

import pandas as pd
from prefect import flow

from eapo.config import ConfigError, Params, load_params
from eapo.evaluation import SAMPLE_COLUMNS, compute_metrics
from eapo.layout import BASE, metrics_path, samples_path
from flows.stage import run_stage
from tasks.evaluate import (
    PARAMS_KEYS,
    check_name,
    datasets,
    evaluate_inputs,
    evaluate_model,
    load_model,
    publications,
    replicate,
)
from tasks.rollout import base_model_path
from tasks.tail import Assets, Json, Parquet, StageTail


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
    """Evaluate `base` (seed None) or variant `name` trained as study replicate `seed` (default: the first of
    study.seeds)."""
    params = load_params(params_path, overrides)
    cfg = params.evaluate
    ckpt = check_name(params, name, seed)  # fail before loading anything
    seed = replicate(params, name, seed)
    label = name if seed is None else f"{name}-{seed}"
    out_samples, out_metrics = samples_path(params, name, seed), metrics_path(params, name, seed)
    # The samples and the metrics are replaced together, or neither is; a second run for this model fails at once.
    with StageTail(f"evaluate@{label}", [out_samples, out_metrics], lineage_stage="evaluate",
                   key=f"evaluate-{label}") as tail:
        sets = datasets(params)
        policy = load_model(params, name, seed)
        rows = evaluate_model(policy, sets, params, name)
        metrics = compute_metrics(pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS)), cfg.pass_k)
        inputs = evaluate_inputs(params, ckpt)
        identity = {"name": name, "checkpoint": str(ckpt) if ckpt else None, **policy.info}
        tail.finish({out_samples: Parquet(rows, "samples"), out_metrics: Json(metrics)},
                    params=params.subset(*PARAMS_KEYS), inputs=inputs, seed=cfg.seed,
                    extra={"model": identity, "model_name": name, "study_seed": seed},
                    assets=Assets([out_samples, out_metrics],
                                  [*inputs.values(), *([] if ckpt else [base_model_path(params, policy)])]),
                    publish=publications(params, label, identity, out_samples, out_metrics, metrics))
    return metrics


def check_args(params: Params, args: argparse.Namespace) -> None:
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
    return run_stage(evaluate_flow, argv, check=check_args, name=add_name_arg)


if __name__ == "__main__":
    main()
