"""Reward pool under adversarial load (issue 12): a batch of N responses of which a share hangs math-verify (each
runs into the per-item timeout) must finish within timeout_s × (adversarial items / workers) + a small constant.

    python benchmarks/bench_reward_pool.py        # 1,000 responses, 10% adversarial, timeout 1 s, 2 workers
    python benchmarks/bench_reward_pool.py --n 200 --timeout-s 0.5

Prints one JSON line: wall seconds, the bound, the overhead beyond timeout_s × adversarial / workers, the failure
counts and the accuracy on the normal items (which must all be graded right). tests/test_reward_pool.py runs the
same check at 200 responses.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter


def adversarial_batch(n: int, share: float, seed: int = 0) -> tuple[list[str], list[str], list[bool]]:
    """(responses, golds, is_adversarial): every 1/share-th item hangs math-verify (a huge factorial, distinct per
    item so that no verdict is shared); the others are ordinary answers, right ones, in the forms the grader reads
    (boxed, "answer is", a final sentence, fractions through math-verify)."""
    import random

    rng = random.Random(seed)
    every = max(int(round(1 / share)), 1)
    responses, golds, adv = [], [], []
    for i in range(n):
        if i % every == every - 1:
            responses.append(f"\\boxed{{{100_000_000 + i}!}}")
            golds.append("1")
            adv.append(True)
            continue
        a = rng.randint(1, 10_000)
        kind = i % 4
        if kind == 0:
            responses.append(f"So the total is \\boxed{{{a:,}}}.")
        elif kind == 1:
            responses.append(f"Adding everything up, the answer is {a} dollars.")
        elif kind == 2:
            responses.append(f"First 3 + 4 = 7.\nSo she has {a} apples in total.")
        else:
            responses.append(f"\\boxed{{\\frac{{{2 * a}}}{{{2 * a + 2}}}}}")
            a = f"\\frac{{{a}}}{{{a + 1}}}"
        golds.append(str(a))
        adv.append(False)
    return responses, golds, adv


def run(n: int, share: float, timeout_s: float, workers: int) -> dict:
    from eapo.reward import RewardScorer

    responses, golds, adv = adversarial_batch(n, share)
    n_adv = sum(adv)
    with RewardScorer(timeout_s=timeout_s, workers=workers) as scorer:
        t0 = time.perf_counter()
        scorer.start()
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = scorer.score(responses, golds)
        wall = time.perf_counter() - t0
    ideal = timeout_s * n_adv / workers
    normal = [r for r, a in zip(results, adv) if not a]
    return {
        "n": n, "adversarial": n_adv, "timeout_s": timeout_s, "workers": workers,
        "startup_s": round(startup, 2), "wall_s": round(wall, 2), "ideal_s": round(ideal, 2),
        "overhead_s": round(wall - ideal, 2),
        "failures": dict(Counter(r.failure for r in results)),
        "normal_accuracy": sum(r.reward for r in normal) / max(len(normal), 1),
        "adversarial_timeouts": sum(r.failure == "timeout" for r, a in zip(results, adv) if a),
        "load_average_1min": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--share", type=float, default=0.1)
    ap.add_argument("--timeout-s", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    print(json.dumps(run(args.n, args.share, args.timeout_s, args.workers)))


if __name__ == "__main__":
    main()
