"""DVC stage `annotate` as a Prefect flow: `python -m flows.annotate`."""

from __future__ import annotations

from prefect import flow

from eapo.config import load_params
from flows.stage import run_stage
from tasks.annotate import annotate_task


@flow(name="annotate", description="Token entropy/advantage/quadrant table, quadrant stats, CMI probe and plots.")
def annotate_flow(params_path: str = "params.yaml", overrides: dict | None = None) -> dict:
    return annotate_task(load_params(params_path, overrides))


if __name__ == "__main__":
    run_stage(annotate_flow)
