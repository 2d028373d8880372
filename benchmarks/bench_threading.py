"""Threading that survives a noisy laptop: one training step (forward + backward + AdamW) with 1 and 2 torch threads,
alone and beside a one-core competing load, under OpenMP's default wait policy and under ``OMP_WAIT_POLICY=PASSIVE``.

Why the wait policy: torch's CPU build runs its intra-op threads on libgomp. By default a thread that reaches a
barrier first spins for a while before it sleeps. When another process takes one of the two cores, the spinning
thread burns the share of the CPU its descheduled partner needs to reach the barrier, so every parallel region waits
longer than the lost core explains. PASSIVE makes waiting threads sleep at once. The variable is read when libgomp
starts, so it must be in the environment before torch is imported: `eapo/__init__.py` sets it (``setdefault``: a
user's own value wins); each child here sets its cell's value before importing torch.

Each (threads, policy, load) cell is a fresh child process (the policy cannot change inside one); cells are
interleaved over ``--reps`` rounds; "default" is libgomp's own (spin a while, then sleep); ``spin=N`` is the default
policy with ``GOMP_SPINCOUNT=N`` (spin N rounds before sleeping: the ground between the two). The competing load is one
pure-Python busy loop (one core), started before the child and stopped after it. Reported: the median step time per
cell and, per (threads, policy), the ratio loaded / alone. Target (issue 14): the default's loaded step costs at most
1.6x its unloaded step. The fair-share floor on 2 cores is 1.5x for a job that keeps both cores busy (three runnable
threads share two cores).

    .venv/bin/python benchmarks/bench_threading.py                       # SmolLM2, batch 8 x 160 tokens, 3 reps
    .venv/bin/python benchmarks/bench_threading.py --model tiny-random-llama --reps 1 --steps 2
    .venv/bin/python benchmarks/bench_threading.py --thread-counts 2 --policies PASSIVE spin=1000 spin=20000
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "bench_threading"
POLICIES = ("default", "PASSIVE")
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # what libgomp reads for how long a waiting thread spins


def policy_arg(value: str) -> str:
    """argparse type: one of POLICIES, or ``spin=N`` (libgomp's default policy with ``GOMP_SPINCOUNT=N``)."""
    if value in POLICIES or (value.startswith("spin=") and value[5:].isdigit()):
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: expected one of {', '.join(POLICIES)} or spin=N (N a whole number)")


def set_wait_policy(policy: str) -> None:
    """Put `policy` in this process's environment; libgomp reads it when torch loads it, so call before import."""
    for var in WAIT_VARS:
        os.environ.pop(var, None)  # the parent's environment may carry eapo's PASSIVE or a user's value
    if policy.startswith("spin="):
        os.environ["GOMP_SPINCOUNT"] = policy[5:]
    elif policy != "default":
        os.environ["OMP_WAIT_POLICY"] = policy


def child(name: str, threads: int, policy: str, batch: int, tokens: int, steps: int) -> None:
    """--child: median seconds of `steps` timed training steps (after one warm-up) with `threads` torch threads."""
    set_wait_policy(policy)  # before torch and eapo (which sets PASSIVE by default) are imported
    import torch

    # what libgomp read: it parses the environment once, when importing torch loads it (eapo's setdefault comes later)
    env = {v: os.environ.get(v) for v in WAIT_VARS}

    C.set_threads(threads)
    model = C.load(name).model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens), generator=gen)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step is a warm-up (allocator, lazy init)
            times.append(time.perf_counter() - t0)
    C.emit_child_result({"seconds": sorted(times)[len(times) // 2], "threads": torch.get_num_threads(),
                         "env": env})


def run_cell(model: str, threads: int, policy: str, loaded: bool, batch: int, tokens: int, steps: int) -> dict:
    """One child's result (seconds, threads, the wait-policy environment it ran under), beside a busy loop if loaded."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if loaded else None
    try:
        out = C.run_child(Path(__file__), ["--child", model, str(threads), policy, str(batch), str(tokens), str(steps)])
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser, reps=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per child (after one warm-up)")
    parser.add_argument("--thread-counts", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), type=policy_arg,
                        help="wait policies to compare: default, PASSIVE, spin=N (default: default and PASSIVE)")
    args = parser.parse_args(argv)
    model = (args.model or [C.SMOLLM2])[0]  # --model is repeatable (add_common_args); the default is SmolLM2
    cells = list(itertools.product(args.thread_counts, args.policies, (False, True)))
    times: dict[tuple, list[float]] = {c: [] for c in cells}
    child_env: dict[str, dict] = {}
    for rep in range(args.reps):
        for cell in (cells if rep % 2 == 0 else cells[::-1]):  # interleave: A B ... B A
            out = run_cell(model, *cell, args.batch, args.tokens, args.steps)
            times[cell].append(out["seconds"])
            child_env[cell[1]] = out["env"]
    rows = []
    for threads, policy in itertools.product(args.thread_counts, args.policies):
        alone, loaded = (C.summarize(times[(threads, policy, x)]) for x in (False, True))
        rows.append({"threads": threads, "wait policy": policy, "alone s": C.fmt_stat(alone),
                     "loaded s": C.fmt_stat(loaded), "loaded / alone": round(loaded["median"] / alone["median"], 2)})
    payload = {"model": model, "batch": args.batch, "tokens": args.tokens, "reps": args.reps, "rows": rows,
               "raw": {f"t{t}-{p}-{'loaded' if x else 'alone'}": v for (t, p, x), v in times.items()},
               "child_env": child_env,
               "machine": C.machine_info()}
    if not args.quiet:
        print(f"## {NAME}: one training step ({model}, batch {args.batch} x {args.tokens} tokens), "
              f"alone vs beside a one-core busy loop\n")
        print(C.markdown_table(rows))
    C.write_results(NAME, payload, args.results_dir)
    return payload


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        name, threads, policy, batch, tokens, steps = sys.argv[2:8]
        child(name, int(threads), policy, int(batch), int(tokens), int(steps))
    else:
        main()
