"""What each stage of a run cost: one row per stage from the run records (``.eapo-run-<stage>.json``, written by
`eapo.stageio.StageOutputs` next to the outputs) under a data folder.

Columns: the stage process's seconds from process start to commit (start-up and imports included; DVC's own work
between stages is not; for a stage forked from a warm server, ``warm``, from the fork), its CPU seconds, its peak RSS
and the peak RSS of its largest child (reward workers), and the wall-time breakdown the stage recorded itself where it
did (train: ``wall_seconds``). Not a timed benchmark: it reads what the last `dvc repro` measured, so the README's
per-stage table can be regenerated after any run.

    .venv/bin/python benchmarks/stage_costs.py            # data/ of this checkout
    .venv/bin/python benchmarks/stage_costs.py --data /path/to/other/checkout/data --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C


def stage_rows(data: Path) -> list[dict]:
    rows = []
    for path in sorted(data.rglob(".eapo-run-*.json")):
        rec = json.loads(path.read_text())
        cost = rec.get("process") or {}
        rows.append({"stage": rec.get("stage", path.name), "seconds": cost.get("seconds"),
                     "cpu s": cost.get("cpu_seconds"), "peak RSS MiB": cost.get("peak_rss_mib"),
                     "child peak MiB": cost.get("children_peak_rss_mib"), "warm": cost.get("warm", False),
                     "finished": rec.get("finished")})
    order = ["prepare", "rollout", "annotate", "train", "evaluate", "report"]
    rows.sort(key=lambda r: (next((i for i, s in enumerate(order) if r["stage"].startswith(s)), len(order)),
                             r["stage"]))
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(C.ROOT / "data"), help="the data folder of a run (default: data/)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    args = parser.parse_args(argv)
    rows = stage_rows(Path(args.data))
    if not rows:
        raise SystemExit(f"no run records (.eapo-run-*.json) under {args.data}: run the pipeline first")
    timed = [r["seconds"] for r in rows if r["seconds"] is not None]
    peaks = [r["peak RSS MiB"] for r in rows if r["peak RSS MiB"] is not None]
    payload = {"rows": rows, "total_stage_seconds": round(sum(timed), 1), "max_peak_rss_mib": max(peaks, default=None)}
    print(json.dumps(payload, indent=1) if args.json else
          C.markdown_table(rows) + f"\n\nsum of stage seconds: {payload['total_stage_seconds']}; "
          f"largest peak RSS: {payload['max_peak_rss_mib']} MiB")
    return payload


if __name__ == "__main__":
    main()
