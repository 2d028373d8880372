"""Prefect UI artifacts for a stage: a table, a markdown summary and links to the files it wrote."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def publish_table(key: str, rows: list[dict[str, Any]], description: str) -> None:
    create_table_artifact(table=rows, key=artifact_key(key), description=description)


def publish_markdown(key: str, markdown: str, description: str) -> None:
    create_markdown_artifact(markdown=markdown, key=artifact_key(key), description=description)


def publish_links(key: str, paths: list[str | Path], description: str) -> None:
    for path in paths:
        path = Path(path)
        create_link_artifact(link=path.resolve().as_uri(), link_text=str(path),
                             key=artifact_key(key, path.stem), description=description)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_(no rows)_"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        out.append("| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
