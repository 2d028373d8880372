"""The study matrix in parallel on one machine: DVC's experiment queue (`dvc exp run --queue`, `dvc queue start`).

Queued experiments run in temporary copies of the project (`.dvc/tmp/exps/tmp*`), a git checkout of the stashed
commit plus its DVC outputs, started by queue workers that inherit the environment of `dvc queue start`. What that
breaks, and the fixes checked here: a relative `paths.model_cache` would be empty in every copy (each job converting
the model again), so the stages take it from `$DVC_ROOT`, the project the experiment was queued from; concurrent
conversions into the shared cache build once under a file lock; `$EAPO_THREADS` divides the cores among jobs without
being a param; each stage's Prefect run is tagged with its experiment.

The end-to-end test queues two seeds of one variant on the tiny model, runs them with `--jobs 2`, compares them in
`dvc exp show --json`, and then assembles the two-seed matrix in the workspace from DVC's run-cache without training.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from eapo.config import load_params
from eapo.policy import THREADS_ENV, _publish_once, job_threads, resolve_cache_dir
from tests.conftest import ROOT, copy_project, dvc, write_tiny_params

VARIANT = "entropy_bonus"  # its loss has a gradient even when every reward is 0, as on the random tiny model


# ----------------------------------------------------------------------------------------------------------------------
# the fixes, one by one (fast)


def test_relative_model_cache_is_taken_from_the_dvc_project_root(tmp_path, monkeypatch):
    assert resolve_cache_dir(".cache/models", "/proj") == Path("/proj/.cache/models")
    assert resolve_cache_dir(".cache/models", None) == Path(".cache/models")
    assert resolve_cache_dir("/abs/models", "/proj") == Path("/abs/models")

    from tasks.rollout import model_cache_dir

    params = load_params(ROOT / "params.yaml")
    assert params.paths.model_cache == ".cache/models"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "proj"))
    assert model_cache_dir(params) == tmp_path / "proj" / ".cache" / "models"
    monkeypatch.delenv("DVC_ROOT")
    assert model_cache_dir(params) == Path(".cache/models")  # outside DVC: from the working directory, as before


def test_eapo_threads_overrides_model_threads(monkeypatch):
    assert job_threads(2, None) == 2
    assert job_threads(2, "") == 2
    assert job_threads(None, "3") == 3
    assert job_threads(2, " 1 ") == 1
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ValueError, match=THREADS_ENV):
            job_threads(2, bad)

    from tasks.rollout import apply_job_threads

    params = load_params(ROOT / "params.yaml", {"model.threads": 2})
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(THREADS_ENV, "1")
        apply_job_threads(params)
        assert torch.get_num_threads() == 1
        monkeypatch.delenv(THREADS_ENV)
        apply_job_threads(params)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_concurrent_builds_of_one_cache_entry_build_once(tmp_path):
    """Two jobs that both find the converted model missing: one converts, the other waits and reuses it (before the
    lock, both converted, ~1 min and ~1 GB each for SmolLM2, and the second one's work was thrown away)."""
    target = tmp_path / "models" / "smollm2-135m-instruct-abc"
    builds, start = [], threading.Barrier(2)

    def build(tmp: Path) -> None:
        builds.append(tmp)
        time.sleep(0.5)
        (tmp / "weights.bin").write_bytes(b"w" * 1000)
        (tmp / "config.json").write_text("{}")

    def job() -> None:
        start.wait()
        _publish_once(target, "config.json", build)

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(builds) == 1
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "weights.bin"]
    assert [p.name for p in target.parent.iterdir() if ".tmp-" in p.name] == []  # no half-built directory left


def test_stage_runs_are_tagged_with_their_dvc_experiment(monkeypatch):
    from prefect.context import TagsContext

    from flows.stage import run_stage

    seen = []

    def flow(params_path, overrides):
        seen.append(set(TagsContext.get().current_tags))

    flow.name, flow.description = "probe", "probe"
    monkeypatch.delenv("EAPO_PARENT_RUN", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "lr-high")
    run_stage(flow, ["--params", str(ROOT / "params.yaml")])
    monkeypatch.setenv("EAPO_PARENT_RUN", "1234")
    run_stage(flow, ["--params", str(ROOT / "params.yaml")])
    monkeypatch.delenv("DVC_EXP_NAME")
    monkeypatch.delenv("EAPO_PARENT_RUN")
    run_stage(flow, ["--params", str(ROOT / "params.yaml")])
    assert seen == [{"dvc-exp:lr-high"}, {"dvc-exp:lr-high", "pipeline-run:1234"}, set()]


# ----------------------------------------------------------------------------------------------------------------------
# end to end: two queued experiments, two jobs


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _git(project: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=project, check=True,
                          capture_output=True, text=True).stdout


def _experiments(project: Path, api_url: str) -> dict[str, dict]:
    """Experiment name -> its metrics files (path -> values), from `dvc exp show --json`."""
    out = {}
    for row in json.loads(_ok(dvc(project, "exp", "show", "--json", api_url=api_url))):
        for exp in [e for ex in row.get("experiments") or [] for e in ex.get("revs") or []]:
            metrics = ((exp.get("data") or {}).get("metrics") or {})
            out[exp.get("name")] = {path: m.get("data") for path, m in metrics.items()}
    return out


def _wait_for_queue(project: Path, api_url: str, names: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = _ok(dvc(project, "queue", "status", api_url=api_url))
        rows = {line.split()[1]: line.split()[-1] for line in status.splitlines()[1:]
                if len(line.split()) >= 3 and line.split()[1] in names}
        if rows.keys() == names and all(s in ("Success", "Failed") for s in rows.values()):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"queue not done after {timeout:.0f} s:\n{status}")
        time.sleep(10)  # each `dvc queue status` is a DVC process: poll gently, the jobs need the cores


def _project_cache(project: Path) -> Path:
    """The copy's own model cache (copy_project links the repo's): the tokenizer the tiny model needs, copied in."""
    (project / ".cache").unlink(missing_ok=True)
    models = project / ".cache" / "models"
    models.mkdir(parents=True)
    source = ROOT / ".cache" / "models"
    for entry in source.glob("smollm2-tokenizer-*") if source.exists() else []:
        if entry.is_dir():  # not its .lock
            shutil.copytree(entry, models / entry.name)
    for memo in source.glob("*.gguf.sha256.json") if source.exists() else []:
        shutil.copy2(memo, models / memo.name)
    return models


@pytest.mark.slow
@pytest.mark.minutes(2)
def test_two_queued_seeds_run_in_parallel_and_fill_the_matrix(prefect_api, tmp_path):
    project = copy_project(tmp_path / "proj")
    cache = _project_cache(project)
    write_tiny_params(project, **{"study.variants": [VARIANT], "study.seeds": [0], "train.lr": 3e-3})
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["paths"]["model_cache"] = ".cache/models"  # relative, as in the default params: the case the queue broke
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    # The inputs every experiment shares, once, in the workspace; the experiments check them out of the DVC cache.
    t0 = time.monotonic()
    _ok(dvc(project, "repro", "rollout", api_url=prefect_api))
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "baseline: prompts and rollouts")

    names = {"seed0", "seed1"}
    for seed in (0, 1):
        _ok(dvc(project, "exp", "run", "--queue", f"evaluate@{VARIANT}-{seed}", "--name", f"seed{seed}",
                "-S", f"study.seeds=[{seed}]", api_url=prefect_api))
    assert set(_ok(dvc(project, "queue", "status", api_url=prefect_api)).split()) >= {"seed0", "seed1", "Queued"}
    started = time.monotonic()
    baseline = started - t0
    try:
        _ok(dvc(project, "queue", "start", "--jobs", "2", api_url=prefect_api))
        status = _wait_for_queue(project, prefect_api, names, timeout=900)
    finally:
        dvc(project, "queue", "stop", "--kill", api_url=prefect_api)
    wall = time.monotonic() - started
    logs = {n: dvc(project, "queue", "logs", n, api_url=prefect_api).stdout for n in names}
    assert status.count("Success") == 2, f"{status}\n{logs}"
    for seed in (0, 1):
        log = logs[f"seed{seed}"]
        assert f"Running stage 'train@{VARIANT}-{seed}'" in log and "Running stage 'rollout'" not in log, log

    # Both in `dvc exp show`, each with its own metrics; the seeds trained different models.
    exps = _experiments(project, prefect_api)
    assert names <= exps.keys(), exps.keys()
    m0 = exps["seed0"][f"data/metrics/{VARIANT}/seed0.json"]["test"]
    m1 = exps["seed1"][f"data/metrics/{VARIANT}/seed1.json"]["test"]
    assert f"data/metrics/{VARIANT}/seed1.json" not in exps["seed0"]
    assert m0["prompts"] == m1["prompts"] == 4
    assert m0["mean_entropy"] != m1["mean_entropy"], (m0, m1)
    md = _ok(dvc(project, "exp", "show", "--md", api_url=prefect_api))
    assert "seed0" in md and "seed1" in md

    # The jobs used the project's model cache through $DVC_ROOT: evaluating a checkpoint memoises its weight hashes
    # there, keyed by the job's own copy under .dvc/tmp/exps.
    memo_paths = [json.loads(p.read_text())["path"] for p in (cache / "hashes").glob("*.json")]
    assert any("/.dvc/tmp/exps/" in p for p in memo_paths), memo_paths

    # Both stages of each job went to the server in PREFECT_API_URL (inherited from `dvc queue start`), tagged with
    # their experiment.
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    async def tagged(tag):
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))
            return sorted(r.state_name for r in runs)

    for name in names:
        assert asyncio.run(tagged(f"dvc-exp:{name}")) == ["Completed", "Completed"], name

    # The matrix assembled: with both seeds in the workspace, DVC's run-cache (filled by the jobs) restores every
    # train/evaluate stage instead of running it, and the metrics are the experiments' own.
    raw["study"]["seeds"] = [0, 1]
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    t1 = time.monotonic()
    assembled = _ok(dvc(project, "repro", "evaluate", api_url=prefect_api))
    assembly = time.monotonic() - t1
    assert "Running stage" not in assembled, assembled
    for seed in (0, 1):
        assert f"Stage 'evaluate@{VARIANT}-{seed}' is cached - skipping run" in assembled, assembled
    assert json.loads((project / f"data/metrics/{VARIANT}/seed0.json").read_text())["test"] == m0
    assert json.loads((project / f"data/metrics/{VARIANT}/seed1.json").read_text())["test"] == m1
    print(f"baseline repro rollout {baseline:.0f} s; two queued experiments, --jobs 2: {wall:.0f} s; "
          f"matrix from the run-cache: {assembly:.0f} s")
