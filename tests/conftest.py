"""Shared fixtures. Heavy ones (a Prefect server, a project copy) are session-scoped: each costs 10-20 s here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import eapo  # noqa: F401  (telemetry off)

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT.parent / "shared" / "data" / "benchmarks"


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect API for the whole session: in-process flows use it through the harness's settings, and
    subprocesses (DVC stages) through PREFECT_API_URL, so no stage pays for its own ephemeral server."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=240):
        yield PREFECT_API_URL.value()


def stage_env(api_url: str | None) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def copy_project(dest: Path) -> Path:
    """A fresh git repo holding the project's tracked files (as a clone would), for `dvc repro` tests."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        src = ROOT / rel
        if not src.is_file() or rel.startswith("data/") or rel == "dvc.lock":
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    (dest / "data").mkdir(exist_ok=True)
    cache = ROOT / ".cache"
    if cache.exists():  # converted models: reuse them rather than converting again
        (dest / ".cache").symlink_to(cache)
    run = lambda *a: subprocess.run(a, cwd=dest, check=True, capture_output=True)  # noqa: E731
    run("git", "init", "-q")
    run("git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    run("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy")
    return dest


def dvc(project: Path, *args: str, api_url: str | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=project, env=stage_env(api_url),
                          capture_output=True, text=True, timeout=timeout)
