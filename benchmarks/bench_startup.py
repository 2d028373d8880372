"""Fixed cost of a stage process: a stage run with (almost) no work, end to end, and what its imports cost alone.

Two stages are run as DVC runs them (`python -m flows.<stage>`, a fresh process, against one local Prefect server
started here): `prepare` with 8 synthetic prompts (no model; imports, params, Prefect flow and task runs, GX validation,
Parquet, lineage, UI artifacts) and `evaluate` of the base model on 1 prompt x 1 sample of 1 token (the same plus torch,
transformers and the model load from the converted cache). Beside them, each heavy library's import alone in a fresh
interpreter (`python -c "import X"`) and the bare interpreter (`python -c pass`), the floor. Each stage also runs warm:
the same command under a warm stage server (flows/warm.py, as `make run` runs `dvc repro`), which has imported the
libraries once and forks the stage's process. Runs are interleaved over ``--reps``; medians are reported. Target
(issue 14): <= 3 s of fixed cost per stage process.

    .venv/bin/python benchmarks/bench_startup.py                          # SmolLM2 for evaluate, 2 reps
    .venv/bin/python benchmarks/bench_startup.py --model tiny-random-llama --reps 1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

from flows import warm

NAME = "bench_startup"
LIBRARIES = ("torch", "transformers", "prefect", "great_expectations", "pandas", "pyarrow", "math_verify")


def timed(cmd: list[str], env: dict[str, str], cwd: Path, must_be_warm: bool = False) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    sec = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc={proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-2000:]}")
    if must_be_warm and "warm stage server" in proc.stderr:  # declined or gone: it ran cold, which is not what we time
        raise RuntimeError(f"{' '.join(cmd)} did not run warm:\n{proc.stderr[-2000:]}")
    return sec


def write_params(folder: Path, model: str) -> Path:
    """params.yaml with every path under ``folder`` and the smallest prepare and evaluate."""
    import yaml

    from eapo.config import set_dotted

    raw = yaml.safe_load((C.ROOT / "params.yaml").read_text())
    for key, value in {"model.name_or_path": model, "model.threads": 1, "prepare.synthetic.n": 8,
                       "evaluate.num_prompts": 1, "evaluate.k": 1, "evaluate.pass_k": [1],
                       "evaluate.max_new_tokens": 1, "reward.workers": 1}.items():
        set_dotted(raw, key, value)
    for key, value in raw["paths"].items():
        raw["paths"][key] = str(C.MODEL_CACHE if key == "model_cache" else folder / value)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, reps=2)
    p.add_argument("--skip-imports", action="store_true", help="only the stage runs")
    p.add_argument("--stages", nargs="+", default=["prepare", "evaluate"], choices=["prepare", "evaluate"],
                   help="stages to run (default both)")
    p.add_argument("--api-url", default=None, help="a running Prefect API (default: start a throwaway server)")
    args = p.parse_args(argv)
    model = (args.model or [C.SMOLLM2])[0]
    from flows.server import start, stop_pid

    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        tmp = Path(tmp)
        url, pid = args.api_url, None
        if url is None:  # a throwaway server: its own database (PREFECT_HOME), no UI
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            os.environ.update({"PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_UI_ENABLED": "false"})
            url, pid = start(port=port, state_dir=tmp / "prefect")
        try:
            params = str(write_params(tmp, model))
            env = {**os.environ, "PREFECT_API_URL": url, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
            py = sys.executable
            cells = {"python -c pass": [py, "-c", "pass"]}
            if not args.skip_imports:
                cells.update({f"import {lib}": [py, "-c", f"import {lib}"] for lib in LIBRARIES})
            stages = {"prepare": ("stage prepare (8 prompts)", [py, "-m", "flows.prepare", "--params", params]),
                      "evaluate": ("stage evaluate (1 prompt, 1 token)",
                                   [py, "-m", "flows.evaluate", "--name", "base", "--params", params])}
            cells.update(dict(stages[s] for s in args.stages))
            # The baseline: the same stage with no usable .pyc (an empty PYTHONPYCACHEPREFIX, nothing written), as every
            # stage ran before `make install` compiled the venv's bytecode (uv --compile-bytecode).
            no_pyc = {"PYTHONPYCACHEPREFIX": str(tmp / "no-pyc"), "PYTHONDONTWRITEBYTECODE": "1"}
            cells.update({f"{stages[s][0]}, no .pyc": (stages[s][1], no_pyc) for s in args.stages})
            if "evaluate" in args.stages:  # warm-up (page cache), and it writes the test prompts evaluate reads
                timed(stages["prepare"][1], env, C.ROOT)
            times: dict[str, list[float]] = {k: [] for k in cells}
            with warm.server(env, wait=True) as warm_env:  # one server for every warm cell, as for one `make run`
                if warm.SOCKET_ENV in warm_env:  # not where no server can run (warm.supported)
                    served = {warm.SOCKET_ENV: warm_env[warm.SOCKET_ENV]}
                    cells.update({f"{stages[s][0]}, warm": (stages[s][1], served) for s in args.stages})
                    times.update({f"{stages[s][0]}, warm": [] for s in args.stages})
                for rep in range(args.reps):
                    for name in (list(cells) if rep % 2 == 0 else list(cells)[::-1]):
                        cmd, extra = cells[name] if isinstance(cells[name], tuple) else (cells[name], {})
                        times[name].append(timed(cmd, {**env, **extra}, C.ROOT, must_be_warm=name.endswith(", warm")))
        finally:
            if pid is not None:
                stop_pid(pid)
    floor = C.summarize(times["python -c pass"])["median"]
    rows = [{"what": k, "seconds": C.fmt_stat(C.summarize(v)),
             "over bare interpreter s": round(C.summarize(v)["median"] - floor, 2)} for k, v in times.items()]
    payload = {"model": model, "reps": args.reps, "rows": rows, "raw": times, "machine": C.machine_info()}
    if not args.quiet:
        print(f"## {NAME}: the fixed cost of a stage process ({model}, {args.threads} thread)\n")
        print(C.markdown_table(rows))
        for name in [n for n in times if n.startswith("stage") and not n.endswith(("no .pyc", "warm"))]:
            stage = C.summarize(times[name])["median"]
            before = C.summarize(times[f"{name}, no .pyc"])["median"]
            line = f"\n{name}: {stage:.1f} s cold ({before / stage:.2f}x faster than without .pyc, {before:.1f} s)"
            if f"{name}, warm" in times:
                hot = C.summarize(times[f"{name}, warm"])["median"]
                line += (f", {hot:.1f} s warm ({stage / hot:.2f}x faster than cold); target <= 3 s: "
                         f"{'met' if hot <= 3 else 'missed'} warm, {'met' if stage <= 3 else 'missed'} cold.")
            else:
                line += f"; target <= 3 s: {'met' if stage <= 3 else 'missed'} (no warm server on {sys.platform})."
            print(line)
    C.write_results(NAME, payload, args.results_dir)
    return payload


if __name__ == "__main__":
    main()
