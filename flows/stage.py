"""What every stage entry point shares: argument parsing, params loading with `-S` overrides, and run tagging.

    python -m flows.<stage> [--params params.yaml] [-S key=value ...]

`-S` takes dotted keys with YAML values, as `dvc exp run -S` does (floats in any notation: `-S train.lr=1e-6`). Every
value, the stage's own arguments (`--variant`, `--name`) included, is checked before Prefect or any model starts: a bad
one exits 2 with one line naming the key. When the whole-pipeline flow drives DVC it sets
`EAPO_PARENT_RUN`, and each stage's flow run is tagged with it so the UI groups them. A stage that runs inside a
DVC experiment (`dvc exp run`, queued or not) is tagged `dvc-exp:<name>` from DVC's `DVC_EXP_NAME`, so the runs of
parallel queue jobs can be told apart in the UI.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import yaml

from eapo.config import ConfigError, Params, load_params, parse_yaml
from eapo.stageio import StageLocked

StageCheck = Callable[[Params, argparse.Namespace], None]


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["train.lr=1e-6", ...]` -> `{"train.lr": 1e-06}`; ConfigError naming the item for a malformed one."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"-S expects key=value, got {item!r}")
        try:
            overrides[key] = parse_yaml(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"-S {key}: cannot read the value {value!r} as YAML ({problem})") from None
    return overrides


def run_stage(flow: Callable[..., Any], argv: list[str] | None = None, check: StageCheck | None = None,
              **extra_args: Callable[[argparse.ArgumentParser], None]) -> Any:
    """Parse the command line and run `flow(params_path, overrides, **stage_args)`.

    Params are loaded once here too, and `check(params, args)` vets the stage's own arguments, so a config error
    exits 2 before Prefect or torch is started. The flow itself takes plain JSON parameters (a path and overrides),
    so the same flow can be triggered from the Prefect UI."""
    parser = argparse.ArgumentParser(prog=f"python -m flows.{flow.name}", description=flow.description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params key, as `dvc exp run -S` does")
    for add in extra_args.values():
        add(parser)
    args = parser.parse_args(argv)
    # Prefect attaches its console and API handlers to "eapo" (PREFECT_LOGGING_EXTRA_LOGGERS, flows/__init__.py);
    # INFO makes the per-step training lines visible there.
    logging.getLogger("eapo").setLevel(logging.INFO)
    try:
        overrides = parse_overrides(args.overrides)
        params = load_params(args.params, overrides)
        if check is not None:
            check(params, args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    stage_args = {k: v for k, v in vars(args).items() if k not in ("params", "overrides")}
    run_tags = []
    if parent := os.environ.get("EAPO_PARENT_RUN"):
        run_tags.append(f"pipeline-run:{parent}")
    if experiment := os.environ.get("DVC_EXP_NAME"):
        run_tags.append(f"dvc-exp:{experiment}")
    ctx = contextlib.nullcontext()
    if run_tags:
        from prefect import tags

        ctx = tags(*run_tags)
    with ctx:
        try:
            return flow(params_path=args.params, overrides=overrides, **stage_args)
        except StageLocked as exc:  # another run of this stage is writing the same outputs: say who, no traceback
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from exc


def apply_threads(params: Params) -> None:
    if params.model.threads:
        import torch

        torch.set_num_threads(params.model.threads)
