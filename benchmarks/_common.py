"""Shared helpers for the benchmarks: timing statistics, markdown tables, JSON results, child processes.

Every benchmark measures its baseline in the same run, interleaved with the thing it compares (A, B, A, B, ...), and
reports the median and the spread (min-max and IQR) of each, plus the ratio of the medians. The machine is a shared,
loaded 2-core CPU: single timings mean little, the interleaved medians and their ratio are what to read.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
MODEL_CACHE = ROOT / ".cache" / "models"
SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-random-llama"
CHILD_TAG = "BENCH_CHILD_RESULT "

if str(ROOT) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/ first on the path, not the repo root
    sys.path.insert(0, str(ROOT))

# Telemetry off (as the Makefile does) before any of these libraries is imported.
for _k, _v in {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
               "GX_ANALYTICS_ENABLED": "false", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)


def summarize(xs: list[float]) -> dict[str, float]:
    """median, min, max, q1, q3 (IQR) and n of a list of measurements."""
    xs = sorted(float(x) for x in xs)
    if not xs:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "q1": float("nan"),
                "q3": float("nan"), "n": 0}
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "q1": q1, "q3": q3, "n": len(xs)}


def after_warmup(xs: list) -> list:
    """The measurements after the first, which is a warm-up, when there are at least two (else all of them)."""
    return list(xs[1:]) if len(xs) >= 2 else list(xs)


def fmt_stat(s: dict[str, float], digits: int = 3) -> str:
    """'median [min-max]'."""
    f = f"{{:.{digits}g}}"
    if s["n"] <= 1:
        return f.format(s["median"])
    return f"{f.format(s['median'])} [{f.format(s['min'])}-{f.format(s['max'])}]"


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "_(no rows)_"
    cols = columns or list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_cell(r.get(c)) for c in cols) + " |")
    return "\n".join(out)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def machine_info() -> dict[str, Any]:
    import torch

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "loadavg_at_end": load, "platform": platform.platform(),
            "note": "shared, loaded 2-core CPU: read medians and ratios, not single timings"}


def write_results(name: str, payload: dict[str, Any], results_dir: str | Path | None = None) -> Path:
    out_dir = Path(results_dir) if results_dir else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    payload = {"benchmark": name, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
               **payload}
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


def add_common_args(parser, *, reps: int, model: str = SMOLLM2) -> None:
    parser.add_argument("--reps", type=int, default=reps, help=f"interleaved repetitions (default {reps})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on 2 shared, loaded cores 2 threads can be "
                             "20x slower)")
    parser.add_argument("--model", action="append", default=None,
                        help=f"policy name or path; repeatable (default: {model})")
    parser.add_argument("--results-dir", default=None, help="where <name>.json goes (default benchmarks/results)")
    parser.add_argument("--quiet", action="store_true", help="do not print the table")


def set_threads(n: int | None) -> None:
    from eapo.policy import set_threads as _set

    _set(n)


def load(name: str, seed: int = 0):
    from eapo.policy import load_policy

    return load_policy(name, cache_dir=MODEL_CACHE, seed=seed)


def maxrss_bytes() -> int:
    """Peak resident set size of this process's memory so far.

    Linux: ``VmHWM`` from ``/proc/self/status``. Not ``getrusage().ru_maxrss``: that also folds in the peak of the
    pre-exec image, i.e. of the parent at fork time (a child spawned by a 600 MB benchmark process reports >= 600 MB
    whatever it does), and ``clear_refs`` does not reset that part. Elsewhere: ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) * (1 if sys.platform == "darwin" else 1024)


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``), so that
    the transient peak of model loading does not hide a smaller peak measured after it. False where unsupported."""
    import gc

    gc.collect()
    try:  # hand freed heap back to the OS, so that RSS is what is live (else new allocations reuse resident pages)
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def emit_child_result(obj: dict[str, Any]) -> None:
    """A child process's answer: one tagged JSON line on stdout."""
    print(CHILD_TAG + json.dumps(obj, default=str), flush=True)


def run_child(script: Path, args: list[str], timeout: float = 1800, env: dict[str, str] | None = None) -> dict:
    """Run ``python script args`` and return the JSON it emitted with ``emit_child_result``."""
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=ROOT, env={**os.environ, **(env or {})})
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(CHILD_TAG):
            return json.loads(line[len(CHILD_TAG):])
    raise RuntimeError(f"child {script.name} {' '.join(args)} failed (rc={proc.returncode}):\n"
                       f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        return False
