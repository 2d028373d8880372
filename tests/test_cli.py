"""`eapo validate` and `eapo lineage` on any file: one line naming the file and the problem, exit 1, no traceback."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from eapo.cli import app
from eapo.lineage import make_lineage, write_json_artifact


def _parquet(path):
    pq.write_table(pa.table({"a": list(range(2000)), "b": [str(i) for i in range(2000)]}), path)
    return path


def _bad_files(tmp_path):
    good = _parquet(tmp_path / "good.parquet").read_bytes()
    (tmp_path / "truncated.parquet").write_bytes(good[: len(good) // 2])
    corrupt = bytearray(good)
    corrupt[8: len(good) // 2] = b"\xff" * (len(good) // 2 - 8)  # data pages destroyed, footer intact
    (tmp_path / "corrupt.parquet").write_bytes(bytes(corrupt))
    (tmp_path / "random.parquet").write_bytes(bytes(range(256)) * 16)
    (tmp_path / "text.parquet").write_text("prompt,answer\nWhat is 1+1?,2\n")
    (tmp_path / "notes.txt").write_text("not an artifact\n")
    return {
        "truncated.parquet": "not a readable Parquet file",
        "random.parquet": "not a readable Parquet file",
        "text.parquet": "not a readable Parquet file",
        "corrupt.parquet": "",
        "notes.txt": "",
        "missing.parquet": "no such file or directory",
        "plain.parquet": "",
    }


def _one_line(result):
    out = (result.stdout + result.stderr).strip()
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    return out


@pytest.mark.parametrize("command", ["validate", "lineage"])
def test_bad_files_get_one_line_and_exit_1(tmp_path, command):
    expected = _bad_files(tmp_path)
    _parquet(tmp_path / "plain.parquet")  # a readable Parquet file without eapo lineage
    runner = CliRunner()
    for name, needle in expected.items():
        path = tmp_path / name
        result = runner.invoke(app, [command, str(path)])
        line = _one_line(result)
        assert result.exit_code == 1, (name, line)
        assert line.startswith(f"{path}: ") and needle in line, (name, line)
        assert line.count(str(path)) == 1, line
        assert (result.stdout if command == "validate" else result.stderr).strip() == line  # report vs error


def test_validate_reports_each_file_and_fails_if_any_is_bad(tmp_path):
    _bad_files(tmp_path)
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "truncated.parquet"), str(tmp_path / "text.parquet")])
    assert result.exit_code == 1
    out = (result.stdout + result.stderr).strip().splitlines()
    assert len(out) == 2 and "truncated.parquet" in out[0] and "text.parquet" in out[1]


def test_lineage_with_a_damaged_input_or_sidecar_is_one_line(tmp_path):
    source = _parquet(tmp_path / "source.parquet")
    metric = tmp_path / "metric.json"
    write_json_artifact(metric, {"acc": 0.5}, make_lineage("prepare", {}, inputs={"source": source}))
    ok = CliRunner().invoke(app, ["lineage", "--json", str(metric)])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["lineage"]["stage"] == "prepare"

    source.write_bytes(source.read_bytes()[:100])  # the input is truncated after it was consumed
    line = _one_line(result := CliRunner().invoke(app, ["lineage", str(metric)]))
    assert result.exit_code == 1 and "cannot read its lineage" in line

    (tmp_path / "metric.json.lineage.json").write_text("{not json")
    line = _one_line(result := CliRunner().invoke(app, ["lineage", str(metric)]))
    assert result.exit_code == 1 and line.startswith(f"{metric}: cannot read its lineage"), line


def _imported_modules(path):
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_the_library_imports_neither_flows_nor_tasks():
    """eapo/__init__.py's layering: the library knows nothing of the flows and tasks that compose it (the CLI that
    serves and deploys flows lives in flows/cli.py)."""
    from tests.conftest import ROOT

    offenders = sorted(f"{path.relative_to(ROOT)}: {name}" for path in (ROOT / "eapo").rglob("*.py")
                       for name in _imported_modules(path) if name.split(".")[0] in ("flows", "tasks"))
    assert offenders == []


def test_the_eapo_script_is_the_flows_cli_with_the_inspection_commands():
    import tomllib

    from tests.conftest import ROOT

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["eapo"] == "flows.cli:app"
    from flows.cli import app as full

    def names(a):
        return {c.name or c.callback.__name__ for c in a.registered_commands}

    assert names(app) == {"validate", "lineage", "contracts"}
    assert names(full) == {"validate", "lineage", "contracts", "serve", "deploy"}
    result = CliRunner().invoke(full, ["contracts"])
    assert result.exit_code == 0 and "rollouts" in result.stdout


def test_deploy_rejects_an_unknown_stage_before_touching_prefect(tmp_path):
    from flows.cli import app as full
    from tests.conftest import ROOT

    result = CliRunner().invoke(full, ["deploy", "--pool", "p", "--stage", "nope", "--project-dir", str(ROOT)])
    assert result.exit_code == 2
    assert "unknown stage(s) nope; dvc.yaml defines prepare" in result.stderr
