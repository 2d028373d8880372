"""Issue 11 on real stages (tiny model): every artifact validates, reads check the data hash, stages replace their
outputs all-or-nothing under a lock, and a rerun with the same inputs writes the same bytes."""

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eapo.config import load_params
from eapo.contracts import ContractError, data_sha256, read_artifact
from eapo.lineage import read_lineage
from tests.conftest import ROOT, copy_project, dvc, stage_env, write_tiny_params


@pytest.fixture(scope="module")
def tiny(prefect_api, tmp_path_factory):
    """Every stage that writes a Parquet artifact, on the tiny model, run in process (report and the evaluation of a
    trained variant write no other kind: tests/test_report.py and tests/test_evaluate.py run them)."""
    from flows.annotate import annotate_flow
    from flows.evaluate import evaluate_flow
    from flows.prepare import prepare_flow
    from flows.rollout import rollout_flow
    from flows.train import train_flow

    root = tmp_path_factory.mktemp("tiny-artifacts")
    params_path = str(write_tiny_params(root, data_root=root, **{"study.variants": ["grpo"]}))
    prepare_flow(params_path=params_path)
    rollout_flow(params_path=params_path)
    annotate_flow(params_path=params_path)
    train_flow(variant="grpo", params_path=params_path)
    evaluate_flow(params_path=params_path, name="base")
    return load_params(params_path), params_path, root


def _digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode() + p.read_bytes())
    return h.hexdigest()


def test_eapo_validate_accepts_every_artifact_the_pipeline_writes(tiny):
    params, _, root = tiny
    parquet = sorted(root.rglob("*.parquet"))
    assert len(parquet) == 7  # prompts x2, rollouts, tokens, cmi, steps, samples
    from typer.testing import CliRunner

    from eapo.cli import app

    result = CliRunner().invoke(app, ["validate", *map(str, parquet)])  # `eapo validate`, in process
    assert result.exit_code == 0, result.output[-3000:]
    assert result.output.count(": valid '") == len(parquet)
    # Each consumer recorded the hash of the data it read, which is the data on disk.
    tokens = read_lineage(params.paths.tokens)
    assert tokens.inputs["rollouts"]["data_sha256"] == data_sha256(pq.read_table(params.paths.rollouts))
    # Nothing of the stage machinery is left but locks and run records.
    leftovers = [p for p in root.rglob(".eapo-staging-*")] + [p for p in root.rglob("*.tmp")]
    assert not leftovers
    record = (Path(params.paths.train_dir) / "grpo" / "seed0" / ".eapo-run-train@grpo-0.json").read_text()
    assert '"seconds"' in record and '"git_commit"' in record


def test_tampered_rollouts_fail_in_annotate_and_leave_its_outputs(tiny, tmp_path):
    from flows.annotate import annotate_flow

    params, params_path, _ = tiny
    table = pq.read_table(params.paths.rollouts)
    rewards = table["reward"].to_pylist()
    rewards[0] = 1.0 - rewards[0]  # one reward changed, the footer (with the old data hash) kept
    tampered = tmp_path / "rollouts.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("reward"), "reward",
                                    pa.array(rewards, pa.float32())).replace_schema_metadata(table.schema.metadata),
                   tampered)
    before = {p: _digest(Path(p)) for p in (params.paths.tokens, params.paths.cmi, params.paths.quadrant_stats)}
    with pytest.raises(ContractError) as err:
        annotate_flow(params_path=params_path, overrides={"paths.rollouts": str(tampered)})
    msg = str(err.value)
    assert str(tampered) in msg and read_lineage(tampered).data_sha256 in msg
    assert {p: _digest(Path(p)) for p in before} == before


def test_prepare_failing_on_its_second_output_replaces_none(tiny, monkeypatch):
    """Issue 11: a failed prepare replaced prompts_train but left the old prompts_test and summary."""
    import tasks.tail
    from flows.prepare import prepare_flow

    params, params_path, _ = tiny
    outs = [Path(p) for p in (params.paths.prompts_train, params.paths.prompts_test, params.paths.prepare_summary)]
    before = {p: p.read_bytes() for p in outs}
    real, calls = tasks.tail.write_artifact, []

    def fails_on_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise ContractError("prompts_test: failed validation (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks.tail, "write_artifact", fails_on_second)
    with pytest.raises(ContractError, match="injected"):
        prepare_flow(params_path=params_path, overrides={"prepare.seed": 5})  # other data than the old outputs
    assert len(calls) == 2
    assert {p: p.read_bytes() for p in outs} == before
    assert not list(outs[0].parent.glob(".eapo-staging-*"))


def test_train_failing_between_model_and_steps_keeps_the_old_pair(tiny, monkeypatch):
    """Issue 11: a train killed after writing model/ but before steps.parquet left a new model beside the old steps."""
    import tasks.tail
    from flows.train import train_flow

    params, params_path, _ = tiny
    vdir = Path(params.paths.train_dir) / "grpo" / "seed0"
    outs = [vdir / "model", vdir / "steps.parquet", vdir / "curves.csv"]
    before = {p: _digest(p) for p in outs}

    def dies(*args, **kwargs):  # the model is already in the staging area when steps.parquet is written
        raise KeyboardInterrupt("killed between model/ and steps.parquet")

    monkeypatch.setattr(tasks.tail, "write_artifact", dies)
    with pytest.raises(BaseException, match="killed between"):
        train_flow(variant="grpo", params_path=params_path, overrides={"train.lr": 1e-3})
    assert {p: _digest(p) for p in outs} == before
    assert not list(vdir.glob(".eapo-staging-*"))
    read_artifact(vdir / "steps.parquet", "steps")


def test_second_train_of_a_variant_fails_fast_naming_the_holder(tiny, prefect_api):
    import os
    import socket

    from eapo.stageio import StageOutputs

    params, params_path, _ = tiny
    vdir = Path(params.paths.train_dir) / "grpo" / "seed0"
    before = _digest(vdir / "model")
    holder = StageOutputs("train@grpo-0", [vdir / "model", vdir / "steps.parquet", vdir / "curves.csv"])
    holder._acquire()  # this test process is the first run, holding the lock
    try:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "flows.train", "--variant", "grpo", "--params", params_path],
                              cwd=ROOT, capture_output=True, text=True, env=stage_env(prefect_api), timeout=300)
        took = time.perf_counter() - t0
    finally:
        holder._release()
    assert proc.returncode == 1, proc.stderr[-2000:]
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert line and "already running" in line[0] and f"pid {os.getpid()}" in line[0]
    assert socket.gethostname() in line[0] and "train@grpo-0" in line[0]
    assert took < 120, took  # no model load, no training: it stops at the lock
    assert _digest(vdir / "model") == before


def test_dvc_repro_f_prepare_writes_identical_bytes_and_invalidates_nothing(prefect_api, tmp_path):
    project = copy_project(tmp_path / "proj")
    git = lambda *a: subprocess.run(["git", *a], cwd=project, capture_output=True, text=True, check=True)  # noqa: E731
    first = dvc(project, "repro", "prepare", api_url=prefect_api)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    git("add", "-f", "dvc.lock")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "lock")
    before = (project / "data/prepare/prompts_train.parquet").read_bytes()
    again = dvc(project, "repro", "-f", "prepare", api_url=prefect_api)
    assert again.returncode == 0 and "Running stage 'prepare'" in again.stdout, again.stdout[-2000:]
    assert (project / "data/prepare/prompts_train.parquet").read_bytes() == before
    assert git("status", "--porcelain", "dvc.lock").stdout == ""  # the same output hashes: nothing downstream reruns
    status = dvc(project, "status", "prepare", api_url=prefect_api)
    assert "up to date" in status.stdout, status.stdout
