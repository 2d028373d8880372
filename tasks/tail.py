"""The tail every stage shares, as one helper: lineage → write (all-or-nothing) → assets → publish.

    with StageTail("rollout", [p.rollouts, p.rollout_metrics]) as tail:  # the stage's lock, taken first
        ...                                                              # the stage's tasks compute
        tail.finish({p.rollouts: Parquet(rows, "rollouts"), p.rollout_metrics: Json(metrics)},
                    params=params.subset(*PARAMS_KEYS), inputs={...}, seed=cfg.seed,
                    assets=Assets([p.rollouts], [p.prompts_train]), publish=[Table(...), Markdown(...)])
    # here every output is in place, recorded as a Prefect asset with its lineage tree, and the artifacts published

`finish` makes the lineage (`eapo.lineage.make_lineage`) and writes each output with it into the staging area of
`eapo.stageio.StageOutputs`; leaving the block commits them together and then records the assets and publishes. A
failure anywhere in the block replaces nothing and publishes nothing. The lock is held from the start of the block, so
a second run of the same stage fails at once, before loading a model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from eapo.contracts import write_artifact
from eapo.lineage import Lineage, make_lineage, write_json_artifact, write_sidecar
from eapo.stageio import StageOutputs
from tasks.publish import Publication, record_assets

__all__ = ["Assets", "File", "Json", "Output", "Parquet", "StageTail"]


@dataclass(frozen=True)
class Parquet:
    """A Parquet artifact validated against `contract`, its lineage in the footer."""

    data: list[dict] | pa.Table
    contract: str

    def write(self, path: Path, lineage: Lineage) -> None:
        write_artifact(self.data, path, self.contract, lineage)


@dataclass(frozen=True)
class Json:
    """A JSON artifact (a DVC metric, stats), its lineage in a sidecar."""

    obj: Any

    def write(self, path: Path, lineage: Lineage) -> None:
        write_json_artifact(path, self.obj, lineage)


@dataclass(frozen=True)
class File:
    """Any other file or directory: `write(path)` makes it; with `lineage`, a sidecar records its content hash."""

    write_to: Callable[[Path], None]
    lineage: bool = False

    def write(self, path: Path, lineage: Lineage) -> None:
        self.write_to(path)
        if self.lineage:
            write_sidecar(path, lineage)


Output = Parquet | Json | File


@dataclass(frozen=True)
class Assets:
    """The outputs declared as Prefect assets, materialized from `inputs` (artifact paths, a base model's path)."""

    outputs: Sequence[str | Path]
    inputs: Sequence[str | Path] = field(default_factory=list)


class StageTail:
    """One stage run's outputs, from lock to publication. `name` is the stage as DVC and the lock know it
    (`train@grpo-0`); `lineage_stage` the stage its lineage records (default `name`); `key` prefixes its Prefect asset
    and lineage artifact keys (default `name`)."""

    def __init__(self, name: str, outputs: Sequence[str | Path], *, lineage_stage: str | None = None,
                 key: str | None = None):
        self.staged = StageOutputs(name, outputs)
        self.lineage_stage = lineage_stage or name
        self.key = key or name
        self._assets: Assets | None = None
        self._publish: Sequence[Publication] = ()

    def __enter__(self) -> StageTail:
        self.staged.__enter__()
        return self

    def finish(self, outputs: Mapping[str | Path, Output], *, params: dict[str, Any],
               inputs: Mapping[str, str | Path] | None = None, seed: int | None = None,
               extra: dict[str, Any] | None = None, assets: Assets, publish: Sequence[Publication] = (),
               run_info: Mapping[str, Any] | None = None, cleanup: Sequence[Path] = ()) -> Lineage:
        """Write every declared output, in order, with one lineage (`params`: the params subset the stage reads;
        `inputs`: artifact name -> path; `seed`, `extra` as in `make_lineage`). `run_info` goes to the run record,
        `cleanup` is removed after the commit; `assets` and `publish` happen once the outputs are in place."""
        lineage = make_lineage(self.lineage_stage, params, inputs=dict(inputs or {}), seed=seed, extra=extra)
        for final, output in outputs.items():
            output.write(self.staged.path(final), lineage)
        self.staged.run_info.update(run_info or {})
        self.staged.cleanup.extend(cleanup)
        self._assets, self._publish = assets, publish
        return lineage

    def __exit__(self, exc_type, exc, tb) -> None:
        self.staged.__exit__(exc_type, exc, tb)  # commits, or (on an exception) drops the staging area
        if exc_type is not None:
            return
        if self._assets is None:
            raise RuntimeError(f"stage {self.staged.stage!r}: StageTail.finish was not called")
        record_assets(list(self._assets.outputs), list(self._assets.inputs), self.key)
        for item in self._publish:
            item.publish()
