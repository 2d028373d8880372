"""How `eapo lineage` draws a lineage tree, as a rich Tree for the terminal or plain text for the Prefect UI's
lineage artifacts (tasks/publish.py). Kept out of eapo/cli.py so stages that publish a tree do not import the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
    # This version records the content hash of the code the stage imports; older artifacts a git commit.
    version = code.get("sha256") or code.get("git_commit") or "unknown"
    commit = version[:12] + ("+dirty" if code.get("git_dirty") else "")
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
