"""DVC stage `prepare`: `python -m flows.prepare`. The train/test prompt sets from the synthetic task and the benchmark
files: split (tasks/prepare.py), then the shared tail (tasks/tail.py)."""

from __future__ import annotations

from prefect import flow

from eapo.config import load_params
from flows.stage import run_stage
from tasks.prepare import PARAMS_KEYS, prompt_rows, source_counts, split_prompts, summary_markdown
from tasks.publish import Markdown, Table
from tasks.tail import Assets, Json, Parquet, StageTail


@flow(name="prepare", description="Build prompts_train / prompts_test from the synthetic task and benchmark files.")
def prepare_flow(params_path: str = "params.yaml", overrides: dict | None = None) -> dict:
    params = load_params(params_path, overrides)
    p, sources = params.paths, [s.path for s in params.prepare.sources]
    # All three outputs are replaced together, or (on any error) none is; a second prepare run fails at once.
    with StageTail("prepare", [p.prompts_train, p.prompts_test, p.prepare_summary]) as tail:
        train, test, info = split_prompts(params)
        table = source_counts(train, test)
        summary = {"train": len(train), "test": len(test), **info, "per_source": table}
        tail.finish({p.prompts_train: Parquet(prompt_rows(train, "train"), "prompts"),
                     p.prompts_test: Parquet(prompt_rows(test, "test"), "prompts"),
                     p.prepare_summary: Json(summary)},
                    params=params.subset(*PARAMS_KEYS), seed=params.prepare.seed, extra={"sources": sources},
                    assets=Assets([p.prompts_train, p.prompts_test], sources),
                    publish=[Table("prepare-counts", table, "Prompts per source and split"),
                             Markdown("prepare-summary", summary_markdown(params, summary),
                                      "Prompt sets written by the prepare stage")])
    return summary


if __name__ == "__main__":
    run_stage(prepare_flow)
