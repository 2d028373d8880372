"""DVC stage `report`: `python -m flows.report`. The study report (Four Quadrant ablation table, sample efficiency,
quadrants, CMI): load every model's metrics, samples and steps, build the report (tasks/report.py), then the shared
tail (tasks/tail.py)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from eapo.config import load_params
from flows.stage import run_stage
from tasks.report import PARAMS_KEYS, build, load_inputs, outputs, publications, report_files
from tasks.tail import Assets, StageTail


@flow(name="report", description="The study report: Four Quadrant ablation table, sample efficiency, quadrants, CMI.")
def report_flow(params_path: str = "params.yaml", overrides: dict | None = None) -> dict:
    params = load_params(params_path, overrides)
    final = Path(params.paths.report_dir)
    # Every report file is replaced together, or none is; a second report run fails at once.
    with StageTail("report", report_files(params)) as tail:
        inputs, paths = load_inputs(params)
        rep = build(inputs, params.report)
        tail.finish(outputs(params, rep), params=params.subset(*PARAMS_KEYS), inputs=paths, seed=params.report.seed,
                    assets=Assets([final / "report.md", final / "summary.json"], list(paths.values())),
                    publish=publications(params, rep))
    return {"report": str(final / "report.md"), "summary": rep.summary}


if __name__ == "__main__":
    run_stage(report_flow)
