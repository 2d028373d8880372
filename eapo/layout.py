"""Where each model's outputs live: one owner for the per-(variant, seed) file layout under `params.paths`.

The base policy is untrained, so it has no study seed: its files sit directly under its name. A trained variant has
one replicate per study seed `s`, under `seed<s>`. Train, evaluate and report all read their paths from here, and
dvc.yaml spells the same layout with `${item.variant}/seed${item.seed}` (tests/pipeline/test_layout.py holds the two
equal).
"""

from __future__ import annotations

from pathlib import Path

from eapo.config import Params

BASE = "base"
"""The untrained base policy's name in evaluate and report."""


def replicate_dir(params: Params, variant: str, seed: int) -> Path:
    """`<train_dir>/<variant>/seed<seed>`: one replicate's checkpoint, steps table and curves."""
    return Path(params.paths.train_dir) / variant / f"seed{seed}"


def train_paths(params: Params, variant: str, seed: int) -> dict[str, Path]:
    """The train stage's outputs for one replicate, by name (`root`, `model`, `steps`, `curves`)."""
    root = replicate_dir(params, variant, seed)
    return {"root": root, "model": root / "model", "steps": root / "steps.parquet", "curves": root / "curves.csv"}


def samples_path(params: Params, name: str, seed: int | None = None) -> Path:
    """The evaluate stage's samples of model `name` (`seed` None for the base policy)."""
    root = Path(params.paths.evaluate_dir) / name
    return (root if seed is None else root / f"seed{seed}") / "samples.parquet"


def metrics_path(params: Params, name: str, seed: int | None = None) -> Path:
    """The evaluate stage's metrics JSON of model `name` (`seed` None for the base policy)."""
    root = Path(params.paths.metrics_dir)
    return root / f"{name}.json" if seed is None else root / name / f"seed{seed}.json"
