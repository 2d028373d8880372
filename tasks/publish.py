"""Prefect UI artifacts for a stage: a table, a markdown summary, links to the files it wrote, and the lineage tree of
each output (what `eapo lineage` prints), published by `record_assets`. A stage names what it shows as `Table`,
`Markdown` and `Links` values; the stage tail (`tasks/tail.py`) publishes them after the outputs are in place.

The open-source Prefect UI shows these under the flow run's **Artifacts** tab and on the Artifacts page; the asset
materialization events appear in the **Event Feed**. The asset graph itself is a Prefect Cloud feature."""

from __future__ import annotations

import re
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Table:
    """A table artifact: `rows` (one dict per row) under `key`."""

    key: str
    rows: list[dict[str, Any]]
    description: str

    def publish(self) -> None:
        publish_table(self.key, self.rows, self.description)


@dataclass(frozen=True)
class Markdown:
    """A markdown artifact under `key`."""

    key: str
    text: str
    description: str

    def publish(self) -> None:
        publish_markdown(self.key, self.text, self.description)


@dataclass(frozen=True)
class Links:
    """One link artifact per file, keyed `<key>-<file stem>`."""

    key: str
    paths: list[str | Path]
    description: str

    def publish(self) -> None:
        publish_links(self.key, self.paths, self.description)


Publication = Table | Markdown | Links


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


def asset_key(path: str | Path) -> str:
    """A Prefect asset key for a file or directory: its file:// URI (spaces and reserved characters escaped)."""
    from urllib.parse import quote

    return "file://" + quote(str(Path(path).resolve()), safe="/._-~:@")


def lineage_markdown(outputs: list[str | Path], stage: str) -> str:
    """Markdown with the lineage tree of each output, exactly as `eapo lineage <output>` prints it."""
    from eapo.lineage_view import lineage_text

    parts = [f"# Lineage of what `{stage}` wrote", "",
             "Each tree walks from an output back through the inputs it was made from (as `eapo lineage` prints it)."]
    for path in outputs:
        parts += ["", f"## `{path}`", "", "```text", lineage_text(path), "```"]
    return "\n".join(parts)


def publish_lineage(outputs: list[str | Path], stage: str) -> None:
    """A markdown artifact `<stage>-lineage` with the lineage tree of each output."""
    publish_markdown(f"{stage}-lineage", lineage_markdown(outputs, stage),
                     f"Lineage of the outputs of {stage} (as `eapo lineage` prints it)")


def record_assets(outputs: list[str | Path], inputs: list[str | Path], stage: str) -> None:
    """Declare the stage's outputs as Prefect assets materialized from its inputs, and publish their lineage trees.

    The materializations appear in the open-source UI's Event Feed (the asset graph needs Prefect Cloud); the lineage
    trees appear as a markdown artifact `<stage>-lineage` beside the stage's summary. A materializing task is built at
    run time because the asset keys come from params (paths are declared once)."""
    from prefect.assets import materialize

    @materialize(*[asset_key(p) for p in outputs], asset_deps=[asset_key(p) for p in inputs],
                 name=f"{stage}-assets", by="eapo")
    def _materialized() -> list[str]:
        return [str(p) for p in outputs]

    _materialized()
    publish_lineage(outputs, stage)
