"""The whole study as one Prefect flow, driven through DVC's Python API so DVC's cache decides what reruns.

    python -m flows.pipeline [--variants grpo eapo] [--seeds 0 1 2] [--seed 1] [-S variants.eapo.alpha=0.7] [--force]
    python -m flows.pipeline --profile configs/replicated.params.yaml   # a profile's keys as `dvc exp run -S`
    eapo serve [--cron "0 2 * * *"]     # the same flow as a deployment, triggered or scheduled from the Prefect UI

Two kinds of seed: `--seeds 0 1 2` sets `study.seeds`, the training replicates of every variant on the same data
(train/evaluate run per variant x seed; the report's intervals include the seed variance); `--seed N` sets the seed of
every stage (prepare, rollout, CMI probe, train.seed, evaluate), a different draw of the whole study. Replicate s of
`--seed N` trains with seed N + s.

Overrides are applied as `dvc exp run -S` applies them: the experiment is run in the workspace with the changed params
and recorded as a DVC experiment (`dvc exp show`). Without overrides it is a plain `dvc repro`. Each stage's own
flow run (a separate process started by DVC) is tagged `pipeline-run:<this run's id>`, so the UI groups them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from eapo.config import load_params, params_from_dict, set_dotted
from flows.stage import parse_overrides


def flatten_profile(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A profile (a partial params file) as dotted keys: mappings recurse, everything else is a value."""
    if not isinstance(raw, dict):
        raise ValueError(f"a profile must be a mapping of params sections, got {type(raw).__name__}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_profile(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def load_profile(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"profile not found: {path}")
    return flatten_profile(yaml.safe_load(path.read_text()) or {})


def study_overrides(variants: list[str] | None, seed: int | None, overrides: dict[str, Any] | None,
                    seeds: list[int] | None = None) -> dict[str, Any]:
    """The pipeline's parameters as dotted params keys: `seed` seeds every sampling and training stage, `seeds` are
    the training replicates (`study.seeds`)."""
    out: dict[str, Any] = {}
    if variants:
        out["study.variants"] = list(variants)
    if seeds:
        out["study.seeds"] = list(seeds)
    if seed is not None:
        for key in ("prepare.seed", "rollout.seed", "train.seed", "evaluate.seed", "annotate.cmi.seed"):
            out[key] = seed
    out.update(overrides or {})
    return out


def _check(params_path: Path, overrides: dict[str, Any]) -> None:
    """Validate the overridden params before DVC starts anything: a bad key fails here, naming it."""
    import yaml

    raw = yaml.safe_load(params_path.read_text())
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    params_from_dict(raw)


def dvc_set_args(overrides: dict[str, Any]) -> list[str]:
    """Dotted overrides as `dvc exp run -S key=value` arguments: YAML flow-style values, as the CLI would parse them,
    each on one line (YAML wraps long lists at 80 columns, and DVC's Hydra override parser rejects a newline)."""
    import yaml

    return [f"{k}={yaml.safe_dump(v, default_flow_style=True, width=float('inf')).strip().removesuffix('...').strip()}"
            for k, v in overrides.items()]


@task(name="dvc-repro", cache_policy=NO_CACHE)
def dvc_repro(root: str, overrides: dict[str, Any], targets: list[str] | None, force: bool, warm: bool = True
              ) -> dict:
    """`warm`: DVC's stage processes are forked from a warm server (flows/warm.py), as under `make run`."""
    from dvc.repo import Repo

    from flows.warm import serving

    logger = get_run_logger()
    t0 = time.perf_counter()
    with serving() if warm else contextlib.nullcontext(), Repo(root) as repo:
        if overrides:
            sets = dvc_set_args(overrides)
            logger.info("dvc exp run %s", " ".join(f"-S {s}" for s in sets))
            results = repo.experiments.run(targets=targets or None, params=sets, force=force)
            ran = sorted(results) if results else []
        else:
            logger.info("dvc repro %s", " ".join(targets or []))
            stages = repo.reproduce(targets=targets or None, force=force)
            ran = [s.addressing for s in stages]
    return {"ran": ran, "seconds": round(time.perf_counter() - t0, 1)}


@flow(name="pipeline", description="Reproduce the whole EAPO study through DVC (cache-aware).")
def pipeline_flow(variants: list[str] | None = None, seed: int | None = None,
                  overrides: dict[str, Any] | None = None, targets: list[str] | None = None,
                  force: bool = False, project_dir: str = ".", seeds: list[int] | None = None,
                  pool: str | None = None, warm: bool = True) -> dict:
    """`pool`: run the stale (variant, seed) stages on this Prefect work pool (flows/pools.py); `targets` and `force`
    do not apply then. `warm`: without a pool, fork the stage processes from a warm server (flows/warm.py), which
    imports torch, transformers, Prefect and GX once for all of them."""
    root = Path(project_dir).resolve()
    if pool and (targets or force):
        raise ValueError("--pool fans out the stale (variant, seed) stages: --targets and --force do not apply to it")
    sets = study_overrides(variants, seed, overrides, seeds)
    _check(root / "params.yaml", sets)
    run_id = flow_run.get_id()
    previous = os.environ.get("EAPO_PARENT_RUN")
    os.environ["EAPO_PARENT_RUN"] = str(run_id)  # inherited by the stage processes DVC starts
    cwd = os.getcwd()
    try:
        os.chdir(root)
        if pool:
            from flows.pools import run_study_on_pool

            result = run_study_on_pool(root, pool, sets)
        else:
            result = dvc_repro(str(root), sets, targets, force, warm)
    finally:
        os.chdir(cwd)
        if previous is None:
            os.environ.pop("EAPO_PARENT_RUN", None)
        else:
            os.environ["EAPO_PARENT_RUN"] = previous
    return {**result, "overrides": sets, "pipeline_run": str(run_id)}


def serve(cron: str | None = None, name: str = "eapo-study", project_dir: str = ".") -> None:
    """Serve `pipeline_flow` as a deployment: trigger it from the UI, or on `cron`."""
    load_params(Path(project_dir) / "params.yaml")  # fail fast on a broken params file
    pipeline_flow.serve(name=name, cron=cron, parameters={"project_dir": str(Path(project_dir).resolve())},
                        tags=["eapo"], description="Reproduce the EAPO study through DVC")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", help="variants to train/evaluate (study.variants)")
    parser.add_argument("--seed", type=int, help="seed for every sampling and training stage")
    parser.add_argument("--seeds", type=int, nargs="+", help="training replicates per variant (study.seeds)")
    parser.add_argument("--profile", help="a partial params file whose keys are applied as -S overrides (e.g. "
                                          "configs/replicated.params.yaml); it wins over --variants, --seeds and "
                                          "--seed, and -S wins over it")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--targets", nargs="+", help="DVC stages to reproduce (default: all)")
    parser.add_argument("--force", action="store_true", help="rerun even if DVC thinks nothing changed")
    parser.add_argument("--pool", help="run the stale (variant, seed) stages on this Prefect work pool's workers "
                                       "(after `eapo deploy --pool NAME`), sharing artifacts through the DVC remote")
    parser.add_argument("--cold", action="store_true", help="start every stage in a fresh process, not forked from "
                                                             "a warm server (flows/warm.py)")
    args = parser.parse_args(argv)
    overrides = {**(load_profile(args.profile) if args.profile else {}), **parse_overrides(args.overrides)}
    return pipeline_flow(variants=args.variants, seed=args.seed, overrides=overrides, targets=args.targets,
                         force=args.force, seeds=args.seeds, pool=args.pool, warm=not args.cold)


if __name__ == "__main__":
    print(main())
