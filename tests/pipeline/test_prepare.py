import subprocess
import sys

import pytest
import yaml

from eapo.config import load_params
from eapo.contracts import read_artifact
from tests.conftest import BENCHMARKS, ROOT, copy_project, dvc, stage_env


def test_prepare_flow_under_prefect(prefect_api, tmp_path):
    from flows.prepare import prepare_flow

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in ("prompts_train", "prompts_test", "prepare_summary"):
        raw["paths"][key] = str(tmp_path / f"{key}.out")
    raw["paths"]["prompts_train"] += ".parquet"
    raw["paths"]["prompts_test"] += ".parquet"
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(raw))
    summary = prepare_flow(params_path=str(params_path), overrides={"prepare.synthetic.n": 40})
    assert summary["train"] + summary["test"] == 40
    p = load_params(params_path)
    train, lin = read_artifact(p.paths.prompts_train, "prompts")
    test, _ = read_artifact(p.paths.prompts_test, "prompts")
    assert train.num_rows == summary["train"] and test.num_rows == summary["test"]
    assert not set(train["id"].to_pylist()) & set(test["id"].to_pylist())
    assert lin.params["prepare"]["synthetic"]["n"] == 40  # lineage records the params actually used

    # Same params and seed: identical data.
    first = train["id"].to_pylist()
    prepare_flow(params_path=str(params_path), overrides={"prepare.synthetic.n": 40})
    again, lin2 = read_artifact(p.paths.prompts_train, "prompts")
    assert again["id"].to_pylist() == first and lin2.data_sha256 == lin.data_sha256


@pytest.mark.skipif(not BENCHMARKS.exists(), reason=f"benchmark files not found at {BENCHMARKS}")
def test_prepare_with_benchmark_sources(prefect_api, tmp_path):
    from flows.prepare import prepare_flow

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["paths"].update({"prompts_train": str(tmp_path / "tr.parquet"), "prompts_test": str(tmp_path / "te.parquet"),
                         "prepare_summary": str(tmp_path / "s.json")})
    raw["prepare"]["synthetic"]["enabled"] = False
    raw["prepare"]["sources"] = [
        {"kind": "gsm8k", "path": str(BENCHMARKS / "gsm8k/test.jsonl"), "limit": 60, "split": "train"},
        {"kind": "amc23", "path": str(BENCHMARKS / "amc23/test.jsonl"), "split": "test"},
        {"kind": "aime24", "path": str(BENCHMARKS / "aime24/test.jsonl")},
    ]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    summary = prepare_flow(params_path=str(tmp_path / "params.yaml"))
    counts = {(r["source"], r["split"]): r["prompts"] for r in summary["per_source"]}
    assert counts[("gsm8k", "train")] == 60 and counts[("amc23", "test")] == 40
    assert sum(v for (s, _), v in counts.items() if s == "aime24") == 30


def test_bad_source_fails_with_file_line_field_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "What is 1+1?", "answer": "2"}\n{"prompt": "x", "answer": ""}\n')
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["paths"].update({"prompts_train": str(tmp_path / "tr.parquet"), "prompts_test": str(tmp_path / "te.parquet"),
                         "prepare_summary": str(tmp_path / "s.json")})
    raw["prepare"]["sources"] = [{"kind": "jsonl", "path": str(bad)}]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    # A subprocess with an unreachable API: the error must come from the data, before Prefect matters.
    proc = subprocess.run([sys.executable, "-m", "flows.prepare", "--params", str(tmp_path / "params.yaml")],
                          cwd=ROOT, capture_output=True, text=True, env=stage_env(None), timeout=600)
    assert proc.returncode != 0
    assert "bad.jsonl" in proc.stderr and "line 2" in proc.stderr and "answer" in proc.stderr
    assert not (tmp_path / "tr.parquet").exists() and not (tmp_path / "te.parquet").exists()


def test_config_error_exits_2_before_compute(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flows.prepare", "-S", "prepare.test_fraction=1.5"],
                          cwd=ROOT, capture_output=True, text=True, env=stage_env(None), timeout=120)
    assert proc.returncode == 2 and "prepare.test_fraction" in proc.stderr


def test_dvc_repro_prepare_caches_and_reruns_on_param_change(prefect_api, tmp_path):
    project = copy_project(tmp_path / "proj")
    first = dvc(project, "repro", "prepare", api_url=prefect_api)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Running stage 'prepare'" in first.stdout
    read_artifact(project / "data/prepare/prompts_train.parquet", "prompts")
    second = dvc(project, "repro", "prepare", api_url=prefect_api)
    assert second.returncode == 0 and "Running stage 'prepare'" not in second.stdout
    assert "didn't change" in second.stdout or "skipping" in second.stdout.lower()
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["prepare"]["seed"] = 7
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    third = dvc(project, "repro", "prepare", api_url=prefect_api)
    assert third.returncode == 0 and "Running stage 'prepare'" in third.stdout
    # The CLI on the real output: lineage names the stage and params hash; a corrupted copy fails validation.
    eapo = [sys.executable, "-m", "eapo.cli"]
    out = subprocess.run([*eapo, "lineage", "data/prepare/prompts_test.parquet"], cwd=project, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "stage=prepare" in out.stdout and "params_hash=" in out.stdout
    js = subprocess.run([*eapo, "lineage", "--json", "data/prepare/prompts_test.parquet"], cwd=project,
                        capture_output=True, text=True, timeout=120)
    import json
    assert json.loads(js.stdout)["lineage"]["params"]["prepare"]["seed"] == 7
    blob = (project / "data/prepare/prompts_test.parquet").read_bytes()
    (project / "corrupt.parquet").write_bytes(blob[: len(blob) // 2] + blob[len(blob) // 2 + 64:])
    bad = subprocess.run([*eapo, "validate", "corrupt.parquet"], cwd=project, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and "corrupt.parquet" in bad.stdout
