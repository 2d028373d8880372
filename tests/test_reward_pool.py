"""The reward pool under load (issue 12): extraction runs under the per-item timeout, and a batch with 10% items
that hang finishes within timeout_s × (hanging items / workers) plus a small overhead. The 1,000-response version
of the batch check is benchmarks/bench_reward_pool.py (about a minute; too slow for the suite)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

from eapo.reward import RewardScorer, grade

ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_reward_pool import adversarial_batch  # noqa: E402

# pebble checks deadlines every 0.1 s, then kills the worker and forks a warm replacement from the fork server; the
# replacement's start-up is scheduling latency: 0.3-0.7 s of lost worker time per killed item measured on this
# 2-core machine at load average 10-11 (six engineers), far less on an idle one.
KILL_OVERHEAD_S = 0.6
CONSTANT_S = 3.0


def test_extraction_runs_under_the_per_item_timeout():
    """Issue 12: extraction ran in the calling process, outside the timeout (8 crafted responses took 24 s with
    timeout_s=1). A response whose extraction alone takes seconds now ends as "timeout" after timeout_s."""
    timeout_s = 0.5
    # Size the text from this machine's speed, so that in process the whole of it takes about five timeouts.
    unit = "the answer: is not this one " * 7_000
    t0 = time.perf_counter()
    grade(unit + "so 7", "7")
    per_unit = time.perf_counter() - t0
    text = unit * max(1, math.ceil(5 * timeout_s / per_unit)) + "so 7"  # every candidate refused
    t0 = time.perf_counter()
    grade(text, "7")
    assert time.perf_counter() - t0 > 2 * timeout_s  # the premise: in process it overruns the timeout
    with RewardScorer(timeout_s=timeout_s, workers=1, max_chars=len(text)) as scorer:
        scorer.start()
        t0 = time.perf_counter()
        results = scorer.score([text, r"\boxed{7}"], ["7", "7"])
        wall = time.perf_counter() - t0
    assert [(r.reward, r.failure) for r in results] == [(0.0, "timeout"), (1.0, None)]
    assert wall < timeout_s + 2.0, wall


def test_batch_with_ten_percent_hanging_items_finishes_within_the_timeout_budget():
    n, timeout_s, workers = 200, 0.5, 2
    responses, golds, adv = adversarial_batch(n, 0.1)
    n_adv = sum(adv)
    assert n_adv == n // 10
    with RewardScorer(timeout_s=timeout_s, workers=workers) as scorer:
        scorer.start()
        t0 = time.perf_counter()
        results = scorer.score(responses, golds)
        wall = time.perf_counter() - t0
    budget = (timeout_s + KILL_OVERHEAD_S) * n_adv / workers + CONSTANT_S
    assert wall < budget, (wall, budget)
    assert all(r.failure == "timeout" for r, a in zip(results, adv) if a)
    assert all((r.reward, r.failure) == (1.0, None) for r, a in zip(results, adv) if not a)


def test_a_slow_pool_start_is_not_a_stall(monkeypatch):
    """Under heavy load the workers of a fresh pool took longer to start (import math-verify and sympy) than the stall
    window (timeout_s + STALL_GRACE_S without a finished item): the pool was replaced twice and correct answers were
    scored 0 as `worker_crashed`, so 5 of the replicated study's GRPO and top20 runs trained on no signal at all.
    Spawned workers (a fresh interpreter each, seconds to import) against a 0.3 s window make the same race here."""
    import eapo.reward as reward

    monkeypatch.setattr(reward, "STALL_GRACE_S", 0.1)
    with RewardScorer(timeout_s=0.2, workers=2, mp_context="spawn") as scorer:
        results = scorer.score(["The answer is 4.", "so 7", "The answer is 5."], ["4", "7", "6"])
    assert [(r.reward, r.failure) for r in results] == [(1.0, None), (1.0, None), (0.0, None)]


MAIN_MODULE = '''
import os, sys, time
from pathlib import Path

# Counts every execution of this module: the parent's, and any re-import by a process of the reward pool.
with open(os.environ["IMPORTS_LOG"], "a") as log:
    log.write(f"{os.getpid()} {__name__}\\n")

if __name__ == "__main__":
    from eapo.reward import RewardScorer

    with RewardScorer(workers=2, mp_context=sys.argv[1]) as scorer:
        scorer.start()
        print(scorer.score(["so 4", "it is 5"], ["4", "4"])[0].reward, len(scorer.worker_pids))
'''


def test_reward_workers_do_not_re_run_the_stage_module(tmp_path):
    """A stage runs as ``python -m flows.<stage>``, whose module imports torch, transformers, Prefect and the project:
    multiprocessing re-runs such a ``__main__`` (as ``__mp_main__``) in every worker it starts, so each stage's reward
    pool spent ~3 s and ~380 MB per worker importing the stage before grading anything. The pool's tasks are all in
    eapo.reward, so its workers skip that import."""
    (tmp_path / "heavy_stage.py").write_text(MAIN_MODULE)
    log = tmp_path / "imports.log"
    for context in ("forkserver", "spawn"):
        log.write_text("")
        env = {**os.environ, "IMPORTS_LOG": str(log),
               "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}
        out = subprocess.run([sys.executable, "-m", "heavy_stage", context], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["1.0", "2"], out.stdout
        runs = log.read_text().split("\n")
        assert [r.split()[1] for r in runs if r] == ["__main__"], (context, runs)
