"""Each stage publishes the lineage tree of its outputs (what `eapo lineage` prints) as a Prefect markdown artifact."""

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from eapo.cli import app
from eapo.lineage import make_lineage, write_json_artifact
from tasks.publish import lineage_markdown


def _artifacts(tmp_path):
    source = tmp_path / "source.parquet"
    pq.write_table(pa.table({"a": [1, 2, 3]}), source)
    out = tmp_path / "summary.json"
    write_json_artifact(out, {"n": 3}, make_lineage("prepare", {"prepare": {"seed": 0}}, inputs={"source": source}))
    return out


def test_lineage_markdown_is_what_eapo_lineage_prints(tmp_path):
    out = _artifacts(tmp_path)
    printed = CliRunner().invoke(app, ["lineage", str(out)], terminal_width=200)
    assert printed.exit_code == 0, printed.output
    md = lineage_markdown([out, tmp_path / "not_written.parquet"], "prepare")
    assert md.startswith("# Lineage of what `prepare` wrote")
    assert "\n".join(line.rstrip() for line in printed.stdout.strip().splitlines()) in md
    assert "stage=prepare" in md and "source: " in md and "params=prepare" in md
    assert "not_written.parquet" in md and "(missing)" in md


def test_record_assets_publishes_the_lineage_artifact(prefect_api, tmp_path):
    from prefect import flow
    from prefect.artifacts import Artifact

    from tasks.publish import record_assets

    out = _artifacts(tmp_path)

    @flow(name="lineage-publish-test")
    def stage():
        record_assets([out], [tmp_path / "source.parquet"], "unit-test-stage")

    stage()
    artifact = Artifact.get("unit-test-stage-lineage")
    assert artifact is not None and artifact.type == "markdown"
    assert artifact.data == lineage_markdown([out], "unit-test-stage")
