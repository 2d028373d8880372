"""Orchestration overhead: a default-sized stage run as (a) pure compute (the library functions called directly) vs
(b) the real stage flow (``flows.<stage>``: Prefect flow + task, GX validation, Parquet write, lineage, UI artifacts).
Target (DESIGN §7): overhead < 5% of the stage's wall time; a no-op ``dvc repro`` < 10 s.

Stages (params.yaml defaults; outputs go to a temp dir through ``paths.*`` overrides, so the repo's data/ is untouched):

- ``prepare``: (a) ``tasks.prepare.build_splits`` (generate + dedupe + filter + split) vs (b) ``flows.prepare``.
- ``rollout``: (a) ``load_base_policy`` + ``eapo.rollouts.sample_and_score`` (32 prompts x G=4, 48 tokens, SmolLM2) vs
  (b) ``flows.rollout``. Long (about a minute or more each), so 1 rep by default (``--rollout-reps``).

The flows talk to the already running local Prefect server (``flows.server``: PREFECT_API_URL, else
127.0.0.1:4200), as ``make run`` arranges; this benchmark never starts one. Because a difference of two noisy
minute-long timings cannot resolve a few percent, the overhead is also measured by its parts, each timed on its own:
``prefect``, an empty task in an empty flow against the same server, and ``write``, ``write_artifact`` of the stage's
rows (GX validation + Parquet + lineage). Separately: the per-process ephemeral Prefect server start that a stage pays
when NO server is running (a fresh ``python`` running a trivial flow with PREFECT_API_URL unset, minus the same
process without the flow), and the no-op ``dvc repro``: in a scratch copy of the project
(``tests.conftest.copy_project``) ``dvc repro prepare`` runs once for real, then the no-op repro is timed (only
prepare: the full pipeline's rollout and annotate would take minutes to reproduce first; ``--dvc-stage`` changes it).
``dvc status`` on the real repo (read-only) is timed as well.

    .venv/bin/python benchmarks/bench_orchestration.py               # ~4-5 min on a loaded machine
    .venv/bin/python benchmarks/bench_orchestration.py --skip-rollout --reps 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "bench_orchestration"

EPHEMERAL_SNIPPET = """
import os, sys, time
sys.path.insert(0, {root!r})
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
import eapo
from prefect import flow, task
@task
def noop_task():
    return 1
@flow
def noop_flow():
    return noop_task()
t0 = time.perf_counter()
if {run_flow}:
    noop_flow()
print("SECONDS", time.perf_counter() - t0)
"""


def _tmp_overrides(tmp: Path) -> dict:
    keys = {"prompts_train": "prepare/prompts_train.parquet", "prompts_test": "prepare/prompts_test.parquet",
            "prepare_summary": "prepare/summary.json", "rollouts": "rollout/rollouts.parquet",
            "rollout_metrics": "rollout/metrics.json"}
    return {f"paths.{k}": str(tmp / v) for k, v in keys.items()}


def ephemeral_start(reps: int) -> dict:
    """Wall time of a trivial flow in a fresh process with no server configured, minus the same process without it."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = tempfile.mkdtemp(prefix="bench-prefect-home-")  # a fresh DB, as a first stage would see
    out = {"with_flow": [], "without_flow": []}
    for _ in range(reps):
        for run_flow in (True, False):
            code = EPHEMERAL_SNIPPET.format(root=str(C.ROOT), run_flow=run_flow)
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                                  check=False,
                                  cwd=C.ROOT)
            wall = time.perf_counter() - t0
            inner = [float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("SECONDS")]
            if proc.returncode != 0 or not inner:
                raise RuntimeError(f"ephemeral prefect run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            out["with_flow" if run_flow else "without_flow"].append({"wall": wall, "flow_call": inner[0]})
    shutil.rmtree(env["PREFECT_HOME"], ignore_errors=True)
    return out


def dvc_noop(reps: int, stage: str, api_url: str | None) -> dict:
    from tests.conftest import copy_project, dvc

    tmp = Path(tempfile.mkdtemp(prefix="bench-dvc-"))
    try:
        proj = copy_project(tmp / "proj")
        t0 = time.perf_counter()
        first = dvc(proj, "repro", stage, api_url=api_url, timeout=1800)
        first_s = time.perf_counter() - t0
        if first.returncode != 0:
            raise RuntimeError(f"dvc repro {stage} failed in the scratch copy:\n{first.stdout[-2000:]}\n"
                               f"{first.stderr[-2000:]}")
        times, outputs = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            r = dvc(proj, "repro", stage, api_url=api_url)
            times.append(time.perf_counter() - t0)
            outputs.append((r.returncode, (r.stdout + r.stderr)[-300:]))
        noop_ok = all(rc == 0 and ("didn't change" in out or "up to date" in out.lower()) for rc, out in outputs)
        st_times = []
        for _ in range(reps):  # read-only, on the real repository
            t0 = time.perf_counter()
            s = dvc(C.ROOT, "status")
            st_times.append(time.perf_counter() - t0)
        return {"stage": stage, "first_run_s": first_s, "noop_s": times, "noop_outputs": outputs,
                "noop_confirmed": noop_ok, "real_repo_status_s": st_times,
                "real_repo_status": (s.stdout + s.stderr)[-600:]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, reps=3)
    p.add_argument("--rollout-reps", type=int, default=1, help="interleaved reps of the rollout stage (default 1)")
    p.add_argument("--skip-rollout", action="store_true", help="only the prepare stage")
    p.add_argument("--rollout-prompts", type=int, default=None, help="override rollout.num_prompts (default: params)")
    p.add_argument("--skip-ephemeral", action="store_true", help="do not measure the ephemeral server start")
    p.add_argument("--skip-dvc", action="store_true", help="do not time dvc repro / dvc status")
    p.add_argument("--dvc-stage", default="prepare", help="stage for the no-op dvc repro (default prepare)")
    args = p.parse_args(argv)

    from flows.server import api_url as default_api_url
    from flows.server import healthy

    url = os.environ.get("PREFECT_API_URL")
    if not (url and healthy(url)):
        url = default_api_url() if healthy(default_api_url()) else None
    if url:
        os.environ["PREFECT_API_URL"] = url
    server_note = f"running server {url}" if url else "no server running: each flow below used an ephemeral API"

    C.set_threads(args.threads)
    from prefect import flow, task

    import flows  # noqa: F401  (sets the ephemeral startup timeout)
    from eapo.config import load_params
    from eapo.contracts import write_artifact
    from eapo.lineage import make_lineage
    from eapo.reward import RewardScorer
    from eapo.rollouts import sample_and_score
    from flows.prepare import prepare_flow
    from flows.rollout import rollout_flow
    from tasks.prepare import PARAMS_KEYS as PREP_KEYS
    from tasks.prepare import build_splits
    from tasks.rollout import first_prompts, load_base_policy, rollout_rows

    @task(name="bench-noop")
    def noop_task():
        return 1

    @flow(name="bench-noop")
    def noop_flow():
        return noop_task()

    tmp = Path(tempfile.mkdtemp(prefix="bench-orch-"))
    overrides = _tmp_overrides(tmp)
    if args.model:
        overrides["model.name_or_path"] = args.model[0]
    if args.rollout_prompts:
        overrides["rollout.num_prompts"] = args.rollout_prompts
    params = load_params(C.ROOT / "params.yaml", overrides)
    params_path = str(C.ROOT / "params.yaml")
    from dataclasses import asdict

    def pure_prepare():
        return build_splits(params)

    def write_prepare(train, test):
        lin = make_lineage("prepare", params.subset(*PREP_KEYS), seed=params.prepare.seed)
        for split, recs, path in (("train", train, tmp / "w/train.parquet"), ("test", test, tmp / "w/test.parquet")):
            write_artifact([{**asdict(r), "split": split} for r in recs], path, "prompts", lin)

    res: dict = {"server": server_note}
    try:
        # warm-up: imports (GX ~5 s), first flow registration
        tr, te, _ = pure_prepare()
        write_prepare(tr, te)
        prepare_flow(params_path=params_path, overrides=overrides)
        noop_flow()
        m = {k: [] for k in ("pure", "flow", "write", "prefect")}
        for rep in range(args.reps):
            for k in (("pure", "flow", "write", "prefect") if rep % 2 == 0 else ("prefect", "write", "flow", "pure")):
                t0 = time.perf_counter()
                if k == "pure":
                    pure_prepare()
                elif k == "flow":
                    prepare_flow(params_path=params_path, overrides=overrides)
                elif k == "write":
                    write_prepare(tr, te)
                else:
                    noop_flow()
                m[k].append(time.perf_counter() - t0)
        res["prepare"] = m

        if not args.skip_rollout:
            prompts = first_prompts(params.paths.prompts_train, params.rollout.num_prompts)
            r = {k: [] for k in ("pure", "flow", "write", "prefect")}

            def pure_rollout():
                policy = load_base_policy(params)
                with RewardScorer(timeout_s=params.reward.timeout_s, workers=params.reward.workers,
                                  fallback=params.reward.fallback) as scorer:
                    scored, _ = sample_and_score(policy, [q["prompt"] for q in prompts],
                                                 [q["answer"] for q in prompts], params.rollout, params.model,
                                                 scorer, n=params.rollout.group_size, seed=params.rollout.seed,
                                                 progress=False)
                return scored

            for rep in range(args.rollout_reps):
                for k in (("pure", "flow") if rep % 2 == 0 else ("flow", "pure")):
                    t0 = time.perf_counter()
                    if k == "pure":
                        scored = pure_rollout()
                    else:
                        rollout_flow(params_path=params_path, overrides=overrides)
                    r[k].append(time.perf_counter() - t0)
                rows = rollout_rows(scored, prompts)
                lin = make_lineage("rollout", params.subset("model", "rollout", "reward"))
                for _ in range(3):
                    t0 = time.perf_counter()
                    write_artifact(rows, tmp / "w/rollouts.parquet", "rollouts", lin)
                    r["write"].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    noop_flow()
                    r["prefect"].append(time.perf_counter() - t0)
            res["rollout"] = r
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if not args.skip_ephemeral:
        res["ephemeral"] = ephemeral_start(1)
    if not args.skip_dvc:
        res["dvc"] = dvc_noop(max(args.reps, 1), args.dvc_stage, url)

    rows = []
    verdict = {}
    for stage in ("prepare", "rollout"):
        if stage not in res:
            continue
        s = {k: C.summarize(v) for k, v in res[stage].items()}
        flow_med = s["flow"]["median"]
        diff_share = (flow_med - s["pure"]["median"]) / flow_med
        parts_share = (s["write"]["median"] + s["prefect"]["median"]) / flow_med
        verdict[stage] = {"overhead_share_by_difference": diff_share, "overhead_share_by_parts": parts_share,
                          "target": "< 0.05", "met": parts_share < 0.05}
        rows.append({"stage": stage, "pure compute s": C.fmt_stat(s["pure"]), "through flow s": C.fmt_stat(s["flow"]),
                     "GX+Parquet write s": C.fmt_stat(s["write"]), "Prefect flow+task s": C.fmt_stat(s["prefect"]),
                     "overhead share (flow-pure)/flow": diff_share,
                     "overhead share (write+prefect)/flow": parts_share})
    extra_rows = []
    if "ephemeral" in res:
        e = res["ephemeral"]
        w = C.summarize([x["flow_call"] for x in e["with_flow"]])["median"]
        wo = C.summarize([x["flow_call"] for x in e["without_flow"]])["median"]
        ww = C.summarize([x["wall"] for x in e["with_flow"]])["median"]
        wwo = C.summarize([x["wall"] for x in e["without_flow"]])["median"]
        res["ephemeral_start_s"] = w - wo
        extra_rows.append({"what": "ephemeral Prefect API start + trivial flow, per process (no server running)",
                           "seconds": w - wo, "note": f"process wall {ww:.1f} s vs {wwo:.1f} s without the flow"})
    if "dvc" in res:
        d = res["dvc"]
        sd = C.summarize(d["noop_s"])
        verdict["dvc_noop"] = {"seconds": sd["median"], "target": "< 10", "met": sd["median"] < 10,
                               "stage": d["stage"]}
        extra_rows.append({"what": f"no-op `dvc repro {d['stage']}` (scratch copy, after one real run of "
                                   f"{d['first_run_s']:.0f} s)", "seconds": sd["median"],
                           "note": f"[{sd['min']:.2f}-{sd['max']:.2f}] over {sd['n']}"})
        ss = C.summarize(d["real_repo_status_s"])
        extra_rows.append({"what": "`dvc status` on the real repo (read-only, whole pipeline)", "seconds": ss["median"],
                           "note": f"[{ss['min']:.2f}-{ss['max']:.2f}] over {ss['n']}"})
    table = C.markdown_table(rows)
    extra = C.markdown_table(extra_rows) if extra_rows else ""
    result = {"rows": rows, "extra_rows": extra_rows, "raw": res, "verdict": verdict, "table": table,
              "extra_table": extra, "config": vars(args)}
    path = C.write_results(NAME, result, args.results_dir)
    if not args.quiet:
        print(f"## {NAME}: stage wall time, pure compute vs Prefect flow + GX + Parquet ({server_note}; prepare "
              f"{args.reps} reps, rollout {0 if args.skip_rollout else args.rollout_reps}, threads={args.threads})\n")
        print(table)
        if extra:
            print()
            print(extra)
        for k, v in verdict.items():
            print(f"\n{k}: {v}")
        print(f"\nresults: {path}")
    return result


if __name__ == "__main__":
    main()
