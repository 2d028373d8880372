"""The study across machines: `eapo deploy --pool`, two process workers in their own checkouts, a local directory as the
DVC remote; and the parent's pure helpers (stale pairs, stage names, failure report)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flows.pools import (
    MATRIX_STAGES,
    Child,
    dvc_stage_names,
    failure_report,
    output_tail,
    push_stages,
    restore_stage,
    settle,
    stage_address,
    stale_pairs,
    uncommitted,
)
from tests.conftest import ROOT, copy_project, dvc, stage_env, write_tiny_params
from tests.pipeline.test_pipeline_server import prefect_server  # noqa: F401  (fixture)


def test_stage_address_names_dvc_matrix_stages():
    assert stage_address("train", "grpo", 0) == "train@grpo-0"
    assert stage_address("evaluate", "eapo", 2) == "evaluate@eapo-2"
    assert stage_address("report") == "report"
    with pytest.raises(ValueError, match="variant and seed"):
        stage_address("train", "grpo")
    with pytest.raises(ValueError, match="takes no variant"):
        stage_address("report", "grpo", 0)


def test_deployable_stages_are_dvc_yaml_stage_definitions():
    names = dvc_stage_names(ROOT)
    assert set(MATRIX_STAGES) <= set(names) and {"prepare", "report", "evaluate_base"} <= set(names)
    assert not any("@" in n for n in names)


def test_stale_pairs_follow_dvc_status():
    pairs = [("grpo", 0), ("grpo", 1), ("eapo", 0), ("eapo", 1)]
    status = {"train@grpo-1": [{"changed deps": {}}], "evaluate@eapo-0": [{"changed outs": {}}],
              "evaluate_base": [], "train@top20-0": []}
    assert stale_pairs(status, pairs) == [("grpo", 1), ("eapo", 0)]
    assert stale_pairs({}, pairs) == []


def test_failure_report_names_each_child_and_its_error():
    text = failure_report([("evaluate@grpo-1", "FAILED: dvc repro failed"), ("evaluate@eapo-0", "CRASHED: oom")], 3,
                          "gpus")
    lines = text.splitlines()
    assert lines[0] == "2 of 3 stage runs on pool 'gpus' failed:"
    assert lines[1:] == ["  evaluate@grpo-1: FAILED: dvc repro failed", "  evaluate@eapo-0: CRASHED: oom"]
    assert output_tail("\n".join(str(i) for i in range(100)), 3) == "97\n98\n99"


def test_settle_restores_the_finished_pairs_even_when_another_failed():
    """A rerun resubmits only what is still stale: the pairs that finished are restored before the parent fails."""
    from prefect.states import Completed, Crashed, Failed

    class NotFound(Exception):
        pass

    calls = []

    def restore(address):
        calls.append(address)
        if address == "evaluate@top20-0":
            raise NotFound(address)
        return address != "train@eapo-0"  # already up to date here

    finished = [(Child("grpo", 0, "evaluate@grpo-0", 1), Failed(message="StageRunFailed: dvc repro failed")),
                (Child("eapo", 0, "evaluate@eapo-0", 2), Completed()),
                (Child("top20", 0, "evaluate@top20-0", 3), Completed()),
                (Child("eapo", 1, "evaluate@eapo-1", 4), Crashed(message="worker killed"))]
    restored, failed = settle(finished, restore, NotFound)
    assert calls == ["train@eapo-0", "evaluate@eapo-0", "train@top20-0", "evaluate@top20-0"]
    assert restored == ["evaluate@eapo-0", "train@top20-0"]
    assert [name for name, _ in failed] == ["evaluate@grpo-0", "evaluate@top20-0", "evaluate@eapo-1"]
    assert failed[0][1] == "FAILED: StageRunFailed: dvc repro failed"
    assert "no run-cache entry" in failed[1][1] and failed[2][1] == "CRASHED: worker killed"


def test_uncommitted_lists_changes_the_workers_would_miss(tmp_path):
    _git(tmp_path, "init", "-q")
    for name in ("params.yaml", "dvc.lock", "code.py", "data/x.json"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("a\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "c")
    assert uncommitted(tmp_path) == []
    for name in ("params.yaml", "dvc.lock", "code.py", "data/x.json"):
        (tmp_path / name).write_text("b\n")
    (tmp_path / "new.py").write_text("untracked\n")
    assert uncommitted(tmp_path) == ["code.py"]


TOY_DVC_YAML = """stages:
  up:
    cmd: cp src.txt up.txt
    deps: [src.txt]
    outs: [up.txt]
  down:
    cmd: cat up.txt up.txt > down.txt && (cat up.txt; echo metric) > m.json
    deps: [up.txt]
    outs: [down.txt]
    metrics:
      - m.json:
          cache: false
"""


def _toy_checkouts(tmp_path):
    """Two checkouts of one DVC project (a stage with a `cache: false` metric, as ours have) and a local remote."""
    from dvc.repo import Repo

    a, remote = tmp_path / "a", tmp_path / "remote"
    a.mkdir()
    remote.mkdir()
    _git(a, "init", "-q")
    with Repo.init(str(a)) as repo, repo.config.edit() as conf:  # = dvc init; dvc remote add -d store REMOTE
        conf["remote"]["store"] = {"url": str(remote)}
        conf["core"]["remote"] = "store"
    (a / "dvc.yaml").write_text(TOY_DVC_YAML)
    (a / "src.txt").write_text("v1\n")
    (a / ".gitignore").write_text("up.txt\ndown.txt\n")
    _git(a, "add", "-A")
    _git(a, "commit", "-qm", "toy")
    _git(tmp_path, "clone", "-q", str(a), "b")
    return a, tmp_path / "b"


def test_a_stage_run_in_one_checkout_is_restored_in_another(tmp_path, monkeypatch):
    """What a worker pushes is what the parent needs to restore the stage, its git-held metric included. DVC's own
    `push --run-cache` leaves that metric's object behind, so the parent cannot restore the stage from it alone."""
    from dvc.repo import Repo
    from dvc.stage.cache import RunCacheNotFoundError

    parent, worker = _toy_checkouts(tmp_path)
    monkeypatch.chdir(worker)  # DVC resolves stage names against the working directory
    with Repo(str(worker)) as repo:
        repo.reproduce(targets=["down"])
        repo.push(targets=["down"], with_deps=True, run_cache=True)
    monkeypatch.chdir(parent)
    with Repo(str(parent)) as repo:
        repo.stage_cache.pull(None)
        assert restore_stage(repo, "up") is True
        with pytest.raises(RunCacheNotFoundError):
            restore_stage(repo, "down")

    monkeypatch.chdir(worker)
    with Repo(str(worker)) as repo:
        assert push_stages(repo, ["down"]) >= 1  # the metric's object
    monkeypatch.chdir(parent)
    with Repo(str(parent)) as repo:
        repo.stage_cache.pull(None)
        assert restore_stage(repo, "down") is True
        assert restore_stage(repo, "down") is False  # now up to date here
        assert repo.status() == {}
    assert (parent / "m.json").read_text() == "v1\nmetric\n" and (parent / "down.txt").read_text() == "v1\nv1\n"
    assert "down:" in (parent / "dvc.lock").read_text()


# ---------------------------------------------------------------------------------------------------------------------
# Two workers against a real server


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def _start_worker(checkout: Path, pool: str, name: str, api_url: str, log_path: Path) -> subprocess.Popen:
    env = {**stage_env(api_url), "PYTHONPATH": str(checkout), "PREFECT_WORKER_QUERY_SECONDS": "2",
           "PREFECT_HOME": str(checkout.parent / f"prefect-home-{name}")}
    return subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--limit", "1",
                             "--name", name], cwd=checkout, env=env, stdout=open(log_path, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _results(project: Path) -> dict[str, str]:
    """The report's summary and every model's metrics: their data hashes (from the lineage sidecar where the file has
    one here) and their bytes."""
    files = [project / "data/report/summary.json", *sorted((project / "data/metrics").rglob("*.json"))]
    out = {}
    for f in files:
        if f.name.endswith(".lineage.json"):
            continue
        out[str(f.relative_to(project))] = f.read_text()
    sidecar = project / "data/report/summary.json.lineage.json"
    out["summary data_sha256"] = json.loads(sidecar.read_text())["data_sha256"]
    return out


def _flow_runs(api_url: str):
    async def query():
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: api_url}):
            async with get_client() as client:
                flows = {f.id: f.name for f in await client.read_flows()}
                runs = await client.read_flow_runs()
                tasks = {t.id: t for t in await client.read_task_runs()}
                return flows, runs, tasks

    return asyncio.run(query())


@pytest.mark.slow
@pytest.mark.minutes(8)
def test_two_workers_share_the_study_through_a_dvc_remote(prefect_server, tmp_path):  # noqa: F811
    api = prefect_server
    study = {"study.variants": ["grpo", "eapo"], "study.seeds": [0], "train.steps": 1}
    parent = copy_project(tmp_path / "parent")
    write_tiny_params(parent, **study)
    remote = tmp_path / "dvc-remote"
    remote.mkdir()
    assert dvc(parent, "remote", "add", "-d", "store", str(remote)).returncode == 0
    _git(parent, "add", "-A")
    _git(parent, "commit", "-qm", "tiny study with a DVC remote")
    checkouts = {}
    for name in ("w1", "w2", "sequential"):
        _git(tmp_path, "clone", "-q", str(parent), name)
        checkouts[name] = tmp_path / name

    # The reference: the same commit, one `dvc repro` (run meanwhile; its checkout has no remote in use).
    sequential = subprocess.Popen([str(Path(sys.executable).parent / "dvc"), "repro"], cwd=checkouts["sequential"],
                                  env=stage_env(api), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    env = {**stage_env(api), "PYTHONPATH": str(parent)}
    deploy = subprocess.run([sys.executable, "-m", "flows.cli", "deploy", "--pool", "tiny"], cwd=parent, env=env,
                            capture_output=True, text=True, timeout=300)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    assert "deployed dvc-stage/train on pool tiny" in deploy.stdout
    assert "deployed dvc-stage/evaluate on pool tiny" in deploy.stdout

    workers = [_start_worker(checkouts[n], "tiny", n, api, tmp_path / f"{n}.log") for n in ("w1", "w2")]
    try:
        proc = subprocess.run([sys.executable, "-m", "flows.pipeline", "--pool", "tiny"], cwd=parent, env=env,
                              capture_output=True, text=True, timeout=1500)
        logs = {n: (tmp_path / f"{n}.log").read_text(errors="replace")[-3000:] for n in ("w1", "w2")}
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:] + json.dumps(logs, indent=1)

        # Both workers took a run: each checkout holds the outputs of exactly the pair it ran.
        ran = {n: sorted(p.parent.parent.name for p in (checkouts[n] / "data/train").glob("*/seed0/model"))
               for n in ("w1", "w2")}
        assert sorted(ran["w1"] + ran["w2"]) == ["eapo", "grpo"], ran

        # One parent in the UI, its two children linked to it, all completed.
        flows, runs, tasks = _flow_runs(api)
        parent_run = next(r for r in runs if flows[r.flow_id] == "pipeline")
        children = [r for r in runs if flows[r.flow_id] == "dvc-stage"]
        assert sorted(c.name for c in children) == ["evaluate@eapo-0", "evaluate@grpo-0"]
        assert all(c.state_type.value == "COMPLETED" for c in children)
        assert all(tasks[c.parent_task_run_id].flow_run_id == parent_run.id for c in children)
        assert not any(flows[r.flow_id] == "train" and f"pipeline-run:{parent_run.id}" in r.tags for r in runs), \
            "the parent trained a variant itself"

        assert sequential.wait(timeout=1500) == 0, sequential.stdout.read()[-4000:]
        pooled, reference = _results(parent), _results(checkouts["sequential"])
        assert set(pooled) == set(reference) and len(pooled) >= 5
        assert pooled == reference

        # A rerun: nothing is stale, so nothing is submitted and the report stands.
        again = subprocess.run([sys.executable, "-m", "flows.pipeline", "--pool", "tiny"], cwd=parent, env=env,
                               capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        flows, runs, _ = _flow_runs(api)
        assert sum(flows[r.flow_id] == "dvc-stage" for r in runs) == 2
        assert _results(parent) == reference

        # A child that fails fails the parent, naming it and its error: the parent moves to a commit the workers
        # do not have, and asks for a new seed (two new stale pairs).
        _git(parent, "commit", "-q", "--allow-empty", "-m", "a commit the workers lack")
        failed = subprocess.run([sys.executable, "-m", "flows.pipeline", "--pool", "tiny", "--seeds", "0", "1"],
                                cwd=parent, env=env, capture_output=True, text=True, timeout=900)
        out = failed.stdout + failed.stderr
        assert failed.returncode != 0
        assert "2 of 2 stage runs on pool 'tiny' failed" in out, out[-4000:]
        for name in ("evaluate@grpo-1", "evaluate@eapo-1"):
            assert f"  {name}: FAILED" in out and "check out the same commit on every worker" in out, out[-4000:]
    finally:
        for w in workers:
            _stop(w)
        if sequential.poll() is None:
            sequential.kill()
