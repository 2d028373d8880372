"""Experiments compare: metrics are committed with each revision and experiment, so `dvc exp show` has values for
`main` and every experiment, and `dvc exp run -S train.lr=1e-6` (written back as `lr: 1e-06`) gets past config loading.

Only the prepare stage runs, twice (seconds each on the session's Prefect server): it writes a metric, and every
stage loads the whole params file, so it is the cheapest stage that exercises both. The second experiment changes a
param prepare does not read, so DVC reruns nothing and only commits the experiment."""

import json
import subprocess
from pathlib import Path

import pytest

from eapo.config import load_params
from tests.conftest import copy_project, dvc, write_tiny_params


def _git(project, *args):
    return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=project, check=True,
                          capture_output=True, text=True).stdout


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.minutes(1.2)
def test_two_experiments_compare_through_dvc_exp_show(prefect_api, tmp_path):
    project = copy_project(tmp_path / "proj")
    write_tiny_params(project)
    _ok(dvc(project, "repro", "prepare", api_url=prefect_api))
    # The metric is not git-ignored (cache: false in dvc.yaml), so a commit holds it.
    assert subprocess.run(["git", "check-ignore", "-q", "data/prepare/summary.json"], cwd=project).returncode == 1
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "baseline")
    assert "data/prepare/summary.json" in _git(project, "ls-files", "data")

    # Each experiment starts from the workspace the last one left: run the one that changes nothing first.
    other = _ok(dvc(project, "exp", "run", "prepare", "--name", "other", "-S", "report.ci=0.9", api_url=prefect_api))
    assert "Running stage 'prepare'" not in other
    _ok(dvc(project, "exp", "run", "prepare", "--name", "half", "-S", "prepare.test_fraction=0.5",
            "-S", "train.lr=1e-6", api_url=prefect_api))
    assert "lr: 1e-06" in (project / "params.yaml").read_text()  # DVC's notation; YAML 1.1 reads it as a string
    assert load_params(project / "params.yaml").train.lr == 1e-6  # so train@* loads it too

    rows = json.loads(_ok(dvc(project, "exp", "show", "--json", api_url=prefect_api)))
    metrics = {}
    for row in rows:
        for exp in [row, *[e for ex in row.get("experiments") or [] for e in ex.get("revs") or []]]:
            data = (exp.get("data") or {})
            summary = (data.get("metrics") or {}).get("data/prepare/summary.json", {}).get("data")
            name = exp.get("name") or exp.get("rev")
            metrics[name] = summary
    assert {"half", "other"} <= set(metrics), metrics.keys()
    base = next(v for k, v in metrics.items() if k not in ("half", "other", "workspace"))
    assert base is not None and metrics["half"] is not None and metrics["other"] is not None, metrics
    total = base["train"] + base["test"]
    assert (base["test"], metrics["half"]["test"]) == (round(total * 0.25), round(total * 0.5))
    assert metrics["other"] == base

    diff = json.loads(_ok(dvc(project, "metrics", "diff", "HEAD", "half", "--json", api_url=prefect_api)))
    assert diff["data/prepare/summary.json"]["test"]["new"] == metrics["half"]["test"]


def test_uncached_outputs_are_committed_and_cached_ones_ignored():
    """Every `cache: false` output of dvc.yaml (metrics, plot CSVs, report.md) is one git commits, so revisions and
    experiments hold it; every cached output stays git-ignored (DVC holds it). Catches a new metric or a moved path
    that .gitignore does not follow."""
    from dvc.repo import Repo

    from tests.conftest import ROOT

    with Repo(str(ROOT)) as repo:
        outs = [(str(out.fs_path), out.use_cache) for stage in repo.index.stages for out in stage.outs]
    assert outs
    rel = {str(Path(p).relative_to(ROOT)): cached for p, cached in outs}
    ignored = set(subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, input="\n".join(rel),
                                 capture_output=True, text=True).stdout.split())
    assert [p for p, cached in rel.items() if not cached and p in ignored] == []
    assert [p for p, cached in rel.items() if cached and p not in ignored] == []
