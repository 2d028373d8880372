"""Inspect artifacts: `python -m eapo.cli validate|lineage|contracts`.

The `eapo` console script is `flows.cli:app`: these commands plus the ones that compose flows (`serve`, `deploy`).
They live in `flows/`, since the library must not import the flows (eapo/__init__.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Entropy-aware RLVR pipeline: inspect artifacts.")


def _reason(exc: BaseException) -> str:
    """An exception as one short line: its first line of text, else its type."""
    lines = str(exc).strip().splitlines()
    return " ".join(lines[0].split()) if lines else type(exc).__name__


def _read_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged or foreign file raises (Arrow, JSON, decoding, I/O): reported as one line, exit 1."""
    import pyarrow as pa

    return OSError, ValueError, TypeError, KeyError, pa.ArrowException


def _unreadable(path: Path, parquet: bool) -> str | None:
    """Why `path` cannot be opened as an artifact, in a few words, or None. With `parquet` (or a .parquet name) its
    Parquet footer must be readable: this catches truncated files, random bytes and text files."""
    if not path.exists():
        return "no such file or directory"
    if not (parquet or path.suffix == ".parquet"):
        return None
    if not path.is_file():
        return "not a file (expected a Parquet artifact)"
    import pyarrow.parquet as pq

    try:
        pq.ParquetFile(path).close()
    except _read_errors() as exc:
        return f"not a readable Parquet file ({_reason(exc)})"
    return None


def _fail(path: Path, problem: str, label: str = "INVALID: ", err: bool = False) -> None:
    typer.echo(f"{path}: {label}{problem.removeprefix(f'{path}: ')}", err=err)


@app.command()
def validate(paths: list[Path] = typer.Argument(..., help="Parquet artifacts to check against their contracts.")):
    """Check artifacts against their contracts. Exit 0 if all are valid, 1 with a readable report if not.

    A missing, truncated, corrupt or non-Parquet file gets one line naming the file and the problem."""
    from eapo.contracts import validate_file

    ok = True
    for path in paths:
        problem = _unreadable(path, parquet=True)
        if problem is None:
            try:
                report = validate_file(path)
            except _read_errors() as exc:
                problem = f"cannot read it ({_reason(exc)})"
        if problem is not None:
            _fail(path, problem)
            ok = False
            continue
        if not report.success and all(f["expectation"] == "readable" for f in report.failures):
            _fail(path, "; ".join(" ".join(str(v).split()) for f in report.failures for v in f["example_values"]))
        else:
            typer.echo(report.render(path))
        ok &= report.success
    raise typer.Exit(0 if ok else 1)


@app.command()
def lineage(path: Path = typer.Argument(..., help="Any artifact: Parquet, metric JSON, report, checkpoint dir."),
            as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
            depth: int = typer.Option(20, help="How far up the inputs to walk.")):
    """Print where an artifact came from, walking up to its inputs as a tree."""
    from eapo.lineage import lineage_tree

    problem = _unreadable(path, parquet=False)
    if problem is None:
        try:
            tree = lineage_tree(path)
        except _read_errors() as exc:  # a damaged file, sidecar or input in the tree
            problem = f"cannot read its lineage ({_reason(exc)})"
    if problem is not None:
        _fail(path, problem, label="", err=True)
        raise typer.Exit(1)
    if tree["lineage"] is None:
        typer.echo(f"{path}: has no eapo lineage (not written by this pipeline?)", err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(tree, indent=2, default=str))
        return
    from rich.console import Console

    from eapo.lineage_view import lineage_renderable

    Console(width=140).print(lineage_renderable(tree, depth))


@app.command()
def contracts():
    """List the artifact contracts and their expectations."""
    from eapo.contracts import CONTRACTS

    for c in CONTRACTS.values():
        typer.echo(f"{c.name} (v{c.version}): {c.doc}")
        typer.echo("  columns: " + ", ".join(f"{f.name}:{f.type}" for f in c.schema))
        for e in c.expectations:
            typer.echo(f"  - {e.type} {json.dumps(e.kwargs)}")


if __name__ == "__main__":
    app()
