"""DVC stage `prepare` as a Prefect flow: `python -m flows.prepare`."""

from __future__ import annotations

from prefect import flow

from eapo.config import load_params
from flows.stage import run_stage
from tasks.prepare import prepare_task


@flow(name="prepare", description="Build prompts_train / prompts_test from the synthetic task and benchmark files.")
def prepare_flow(params_path: str = "params.yaml", overrides: dict | None = None) -> dict:
    params = load_params(params_path, overrides)
    return prepare_task(params)


if __name__ == "__main__":
    run_stage(prepare_flow)
