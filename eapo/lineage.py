"""Lineage: where an artifact came from.

A Parquet artifact carries its lineage in the file footer (key-value metadata, key `eapo.lineage`). Anything else (a
JSON metric, a report, a checkpoint directory) carries it in a sidecar: `<file>.lineage.json`, or `lineage.json` inside
a directory. The record names the stage, the contract and schema version, the params subset the stage read and its hash,
the inputs with the content hashes that were read, the code (a content hash of the stage's import closure,
`eapo.codedeps`), library versions and the seed. It holds nothing that changes between two runs with the same data,
params, inputs and code (no creation time, no git commit: those go to the stage's run record, `eapo.stageio`), so
such runs write identical bytes and DVC sees nothing new downstream.

Content hashes are of the *data* (`data_sha256`, see `eapo.contracts.data_sha256`), not of the file bytes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from eapo.codedeps import code_hash
from eapo.config import params_hash
from eapo.stageio import write_text_atomic

LINEAGE_KEY = b"eapo.lineage"
_LIBRARIES = ("eapo", "torch", "transformers", "accelerate", "prefect", "dvc", "great_expectations", "pyarrow",
              "pandas", "numpy", "math-verify")


@dataclass(frozen=True)
class Lineage:
    stage: str
    params: dict[str, Any]
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Input name -> {path, data_sha256, artifact}. Walked by `eapo lineage`."""
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Stage-specific facts a reader needs, e.g. the entropy threshold tau or the model identity."""
    artifact: str | None = None
    schema_version: int | None = None
    data_sha256: str | None = None
    params_hash: str = ""
    code: dict[str, Any] = field(default_factory=dict)
    """{sha256, files}: content hash of the project code the stage imports (`eapo.codedeps.code_hash`)."""
    libraries: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    """Empty in artifacts this version writes (the run record `.eapo-run-<stage>.json` holds the time); kept so
    older artifacts still read."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str | bytes) -> Lineage:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


def make_lineage(stage: str, params: dict[str, Any], inputs: dict[str, str | Path] | None = None, *,
                 seed: int | None = None, extra: dict[str, Any] | None = None) -> Lineage:
    """Record a stage's provenance. `inputs` maps a name to an artifact path: the hash recorded is the one verified
    when this process read it (`read_artifact`), else the one in its own lineage, else the file's content hash."""
    return Lineage(
        stage=stage,
        params=params,
        params_hash=params_hash(params),
        inputs={name: input_record(path) for name, path in (inputs or {}).items()},
        seed=seed,
        extra=extra or {},
        code=code_hash(stage),
        libraries=library_versions(),
    )


_READS: dict[str, dict[str, Any]] = {}


def note_read(path: str | Path, data_sha256: str, artifact: str | None) -> None:
    """Remember the verified data hash of an artifact this process read (called by `read_artifact`)."""
    _READS[os.path.abspath(path)] = {"data_sha256": data_sha256, "artifact": artifact}


def input_record(path: str | Path) -> dict[str, Any]:
    """What a consumer records about one input: its path, its data hash and its contract."""
    path = Path(path)
    seen = _READS.get(os.path.abspath(path))
    if seen is not None:
        return {"path": str(path), **seen}
    lin = read_lineage(path)
    if lin is not None and lin.data_sha256:
        return {"path": str(path), "data_sha256": lin.data_sha256, "artifact": lin.artifact}
    return {"path": str(path), "data_sha256": file_sha256(path), "artifact": None}


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def file_sha256(path: str | Path) -> str:
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path / "lineage.json" if path.is_dir() else path.with_name(path.name + ".lineage.json")


def write_sidecar(path: str | Path, lineage: Lineage) -> None:
    """Lineage for a non-Parquet artifact; the data hash is the file's (or directory's) content hash."""
    path = Path(path)
    side = sidecar_path(path)
    data_hash = file_sha256(path) if not path.is_dir() else _dir_hash_without_sidecar(path)
    lin = Lineage(**{**asdict(lineage), "data_sha256": data_hash})
    write_text_atomic(side, json.dumps(json.loads(lin.to_json()), indent=2, sort_keys=True))


def _dir_hash_without_sidecar(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file() and q.name != "lineage.json"):
        h.update(str(p.relative_to(path)).encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()


def read_lineage(path: str | Path) -> Lineage | None:
    """The lineage of any artifact: Parquet footer first, then the sidecar. None when it has none."""
    path = Path(path)
    if path.suffix == ".parquet" and path.is_file():
        import pyarrow.parquet as pq

        meta = pq.read_schema(path).metadata or {}
        if LINEAGE_KEY in meta:
            return Lineage.from_json(meta[LINEAGE_KEY])
    side = sidecar_path(path)
    if side.is_file():
        return Lineage.from_json(side.read_text())
    return None


def _resolve_input(recorded: Path, consumer: Path) -> Path:
    """Inputs are recorded as the stage saw them: paths relative to the project root (where DVC runs stages). Resolve
    them against the consumer's project (the nearest folder above it with a dvc.yaml), not the reader's cwd."""
    if recorded.is_absolute() or recorded.exists():
        return recorded
    for parent in consumer.resolve().parents:
        if (parent / "dvc.yaml").is_file() and (parent / recorded).exists():
            return parent / recorded
    return recorded


def lineage_tree(path: str | Path, _seen: set[str] | None = None) -> dict[str, Any]:
    """Walk an artifact's inputs recursively. Each node says whether the input on disk still matches the hash the
    consumer recorded (`stale` when it was regenerated with different data since)."""
    path = Path(path)
    seen = _seen if _seen is not None else set()
    lin = read_lineage(path)
    node: dict[str, Any] = {"path": str(path), "exists": path.exists(), "lineage": None, "inputs": {}}
    if lin is None:
        return node
    node["lineage"] = json.loads(lin.to_json())
    key = str(path.resolve())
    if key in seen:
        return node
    seen.add(key)
    for name, rec in lin.inputs.items():
        child_path = _resolve_input(Path(rec["path"]), path)
        child = lineage_tree(child_path, seen)
        current = (child["lineage"] or {}).get("data_sha256") if child["lineage"] else (
            file_sha256(child_path) if child_path.exists() else None)
        child["recorded_sha256"] = rec.get("data_sha256")
        child["stale"] = current is not None and current != rec.get("data_sha256")
        node["inputs"][name] = child
    return node


def write_json_artifact(path: str | Path, obj: Any, lineage: Lineage) -> None:
    """A JSON artifact (a DVC metric, stats) written atomically, with its lineage in a sidecar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=float) + "\n")
    write_sidecar(path, lineage)
