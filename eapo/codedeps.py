"""The project code a stage runs: the import closure of `flows/<stage>.py` within the project, and its content hash.

The closure follows every `import` / `from ... import` statement (also those inside functions) that names a module of
the project's packages (`eapo`, `tasks`, `flows`), including each package's `__init__.py`. It is what `dvc.yaml` must
list as a stage's code deps (tests/pipeline/test_stage_deps.py checks it), and its content hash stands for "the code"
in an artifact's lineage in place of a git commit, so the artifact's bytes do not change when unrelated code or the
commit does. The hash is taken over each file's syntax tree (`ast.dump`), so comment-only edits do not change it.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("eapo", "tasks", "flows")


def _module_file(module: str, root: Path) -> Path | None:
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = root.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _imports(path: Path, root: Path) -> set[Path]:
    """Project files named by the imports of one file (a module's parent packages included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    else:
        package = package.removesuffix(".__init__")
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.append(mod)
            names += [f"{mod}.{a.name}" for a in node.names]  # `from eapo import plots` imports eapo/plots.py
    found = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py too
            f = _module_file(".".join(parts[:i]), root)
            if f is not None:
                found.add(f)
    return found


def import_closure(entry: str | Path, root: Path = ROOT) -> list[Path]:
    """Every project file `python -m <entry module>` imports (the entry itself included), sorted, relative to root."""
    root = Path(root)
    start = (root / entry) if not Path(entry).is_absolute() else Path(entry)
    seen: set[Path] = set()
    todo = [start, *_imports(start, root)]
    # `python -m flows.x` imports the package flows first.
    todo += [f for f in (_module_file(start.relative_to(root).parts[0], root),) if f is not None]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo += [g for g in _imports(f, root) if g not in seen]
    return sorted(p.relative_to(root) for p in seen)


def stage_module(stage: str) -> str:
    """The flow file of a DVC stage name: `train@grpo` -> flows/train.py, `evaluate_base` -> flows/evaluate.py."""
    name = stage.split("@")[0]
    name = {"evaluate_base": "evaluate"}.get(name, name)
    return f"flows/{name}.py"


@cache
def _file_digest(path: Path, mtime_ns: int) -> str:
    return hashlib.sha256(ast.dump(ast.parse(path.read_text())).encode()).hexdigest()


def code_hash(stage: str, root: Path = ROOT) -> dict[str, object]:
    """{sha256, files}: the content hash of the code a stage runs (its import closure), for lineage."""
    entry = root / stage_module(stage)
    if not entry.is_file():
        return {"sha256": None, "files": 0}
    h = hashlib.sha256()
    files = import_closure(entry, root)
    for rel in files:
        p = root / rel
        h.update(str(rel).encode() + b"\0" + _file_digest(p, p.stat().st_mtime_ns).encode() + b"\n")
    return {"sha256": h.hexdigest(), "files": len(files)}
