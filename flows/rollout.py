"""DVC stage `rollout` as a Prefect flow: `python -m flows.rollout`."""

from __future__ import annotations

from prefect import flow

from eapo.config import load_params
from flows.stage import run_stage
from tasks.rollout import rollout_task


@flow(name="rollout", description="Sample G responses per training prompt with exact per-token log-probs/entropy.")
def rollout_flow(params_path: str = "params.yaml", overrides: dict | None = None) -> dict:
    return rollout_task(load_params(params_path, overrides))


if __name__ == "__main__":
    run_stage(rollout_flow)
