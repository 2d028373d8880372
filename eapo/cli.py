"""The `eapo` command: inspect artifacts (validate, lineage) and serve the pipeline as a Prefect deployment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Entropy-aware RLVR pipeline: inspect artifacts and serve the pipeline.")


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

    Console(width=140).print(lineage_renderable(tree, depth))


def lineage_renderable(tree: dict[str, Any], depth: int = 20):
    """The rich Tree `eapo lineage` prints for a `lineage_tree` result."""
    from rich.tree import Tree

    root = Tree(_label(tree))
    _grow(root, tree, depth)
    return root


def lineage_text(path: str | Path, depth: int = 20) -> str:
    """What `eapo lineage PATH` prints, as plain text (no colours): for the Prefect UI's lineage artifacts."""
    import io

    from rich.console import Console

    from eapo.lineage import lineage_tree

    buf = io.StringIO()
    console = Console(file=buf, width=140, color_system=None, highlight=False)
    console.print(lineage_renderable(lineage_tree(path), depth))
    return buf.getvalue().rstrip()


def _label(node: dict[str, Any], name: str | None = None) -> str:
    lin = node["lineage"]
    head = f"[bold]{name + ': ' if name else ''}{node['path']}[/bold]"
    if lin is None:
        return head + ("  (no lineage)" if node["exists"] else "  [red](missing)[/red]")
    code = lin.get("code") or {}
    version = code.get("git_commit") or next((v for v in code.values() if isinstance(v, str) and v), "no-git")
    commit = version[:10] + ("+dirty" if code.get("git_dirty") else "")
    stale = "  [red]STALE: changed since it was consumed[/red]" if node.get("stale") else ""
    created = f" created={lin['created_at']}" if lin.get("created_at") else ""
    lines = [
        head + stale,
        f"stage={lin.get('stage')} artifact={_kind(node['path'], lin)} seed={lin.get('seed')}",
        f"params_hash={lin.get('params_hash')} params={', '.join(lin.get('params') or {})}",
        f"code={commit}{created} data_sha256={(lin.get('data_sha256') or '')[:16]}",
    ]
    extra = lin.get("extra") or {}
    if extra:
        lines.append("extra: " + ", ".join(f"{k}={_short(v)}" for k, v in extra.items()))
    return "\n".join(lines)


def _kind(path: str, lin: dict[str, Any]) -> str:
    if lin.get("artifact"):
        return f"{lin['artifact']} v{lin.get('schema_version')}"
    return "directory" if Path(path).is_dir() else (Path(path).suffix.lstrip(".") or "file")


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def _grow(branch, node: dict[str, Any], depth: int) -> None:
    if depth <= 0:
        return
    for name, child in node["inputs"].items():
        _grow(branch.add(_label(child, name)), child, depth - 1)


@app.command()
def contracts():
    """List the artifact contracts and their expectations."""
    from eapo.contracts import CONTRACTS

    for c in CONTRACTS.values():
        typer.echo(f"{c.name} (v{c.version}): {c.doc}")
        typer.echo("  columns: " + ", ".join(f"{f.name}:{f.type}" for f in c.schema))
        for e in c.expectations:
            typer.echo(f"  - {e.type} {json.dumps(e.kwargs)}")


@app.command()
def serve(cron: str = typer.Option(None, help='Schedule, e.g. "0 2 * * *"; without it the deployment runs on demand.'),
          name: str = typer.Option("eapo-study", help="Deployment name."),
          project_dir: Path = typer.Option(Path("."), help="The DVC project to reproduce.")):
    """Serve the whole-pipeline flow as a Prefect deployment (trigger or schedule it from the UI).

    Start a server first (`make server` or `prefect server start`) and point PREFECT_API_URL at it."""
    from flows.pipeline import serve as serve_pipeline

    serve_pipeline(cron=cron, name=name, project_dir=str(project_dir))


if __name__ == "__main__":
    app()
