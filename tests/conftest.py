"""Shared fixtures. Heavy ones (a Prefect server, a project copy) are session-scoped: each costs 10-20 s here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import eapo  # noqa: F401  (telemetry off)

if "MUTANT_UNDER_TEST" in os.environ:
    # Under mutmut (`make mutate`) every mutant's tests run in a child forked from a process that collected them.
    # Whatever the tests import lazily is imported again in each child: sympy (math-verify's grader, torch's
    # gradcheck) and torch._dynamo (a TorchDispatchMode) cost ~3-4 s a mutant each. Import them once, before the fork.
    import math_verify  # noqa: F401
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Passthrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    torch.autograd.gradcheck(lambda z: z.softmax(-1), (torch.ones(1, 2, dtype=torch.float64, requires_grad=True),))
    with _Passthrough():
        torch.ones(1, dtype=torch.bfloat16).float().sum()

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT.parent / "shared" / "data" / "benchmarks"


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs `-n N --dist worksteal`), lay the tests out so that the long ones start
    first and are spread over the workers. worksteal hands worker k the k-th contiguous block of the collection (then
    balances by stealing from the tails), so block k gets the long tests (``@pytest.mark.minutes(m)``) that a greedy
    longest-first assignment gives it, then its share of the rest, in collection order."""
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    if workers < 2:
        return

    def minutes(item) -> float:
        mark = item.get_closest_marker("minutes")
        return float(mark.args[0]) if mark else 0.0

    long_first = sorted((i for i in items if minutes(i)), key=minutes, reverse=True)
    rest = [i for i in items if not minutes(i)]
    blocks: list[list] = [[] for _ in range(workers)]
    load = [0.0] * workers
    for item in long_first:
        k = min(range(workers), key=load.__getitem__)
        blocks[k].append(item)
        load[k] += minutes(item)
    left = len(items)
    for k, block in enumerate(blocks):  # worksteal's split: node k gets left // (nodes remaining)
        size = left // (workers - k)
        take = max(size - len(block), 0)
        block += rest[:take]
        rest = rest[take:]
        left -= len(block)
    blocks[-1] += rest
    items[:] = [i for block in blocks for i in block]


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


# Small enough for seconds per stage on the tiny random Llama.
TINY_OVERRIDES = {
    "model.name_or_path": "tiny-random-llama",
    "model.threads": 1,
    "prepare.synthetic.n": 40,
    "rollout.num_prompts": 4,
    "rollout.group_size": 4,
    "rollout.max_new_tokens": 8,
    "annotate.cmi.positions": 4,
    "annotate.cmi.k": 2,
    "annotate.cmi.m": 2,
    "annotate.cmi.max_new_tokens": 4,
    "annotate.cmi.bootstrap": 50,
    "reward.workers": 1,
    "train.steps": 2,
    "train.prompts_per_step": 2,
    "train.group_size": 4,
    "train.max_new_tokens": 8,
    "train.micro_batch_size": 4,
    "train.checkpoint_every": 1,
    "evaluate.num_prompts": 4,
    "evaluate.k": 2,
    "evaluate.pass_k": [1, 2],
    "evaluate.max_new_tokens": 8,
    "report.bootstrap": 200,
}


def write_tiny_params(dest_dir: Path, *, data_root: Path | None = None, **extra) -> Path:
    """params.yaml for the tiny profile. With data_root, every artifact path is moved under it."""
    import yaml

    from eapo.config import set_dotted

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in {**TINY_OVERRIDES, **extra}.items():
        set_dotted(raw, key, value)
    raw["paths"]["model_cache"] = str(ROOT / ".cache" / "models")
    if data_root is not None:
        for key, value in raw["paths"].items():
            if key != "model_cache":
                raw["paths"][key] = str(data_root / value)
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
