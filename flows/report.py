"""DVC stage `report` as a Prefect flow: `python -m flows.report`."""

from __future__ import annotations

from prefect import flow

from eapo.config import load_params
from flows.stage import run_stage
from tasks.report import report_task


@flow(name="report", description="The study report: Four Quadrant ablation table, sample efficiency, quadrants, CMI.")
def report_flow(params_path: str = "params.yaml", overrides: dict | None = None) -> dict:
    return report_task(load_params(params_path, overrides))


if __name__ == "__main__":
    run_stage(report_flow)
