"""DVC stage `annotate`: `python -m flows.annotate`. The per-token entropy/advantage/quadrant table, the quadrant
statistics, the CMI probe and plots: load the rollouts, annotate every token, probe CMI with the base policy
(tasks/annotate.py), then the shared tail (tasks/tail.py)."""

from __future__ import annotations

from functools import partial

from prefect import flow

from eapo.config import load_params
from flows.stage import run_stage
from tasks.annotate import (
    PARAMS_KEYS,
    annotate_tokens,
    cmi_rows,
    load_rollouts,
    probe_cmi,
    publications,
    summarize,
    token_table,
    write_plots,
)
from tasks.rollout import load_base
from tasks.tail import Assets, File, Json, Parquet, StageTail


@flow(name="annotate", description="Token entropy/advantage/quadrant table, quadrant stats, CMI probe and plots.")
def annotate_flow(params_path: str = "params.yaml", overrides: dict | None = None) -> dict:
    params = load_params(params_path, overrides)
    p, cfg = params.paths, params.annotate
    with StageTail("annotate", [p.tokens, p.cmi, p.quadrant_stats, p.annotate_plots]) as tail:
        rollouts = load_rollouts(p.rollouts)
        tokens = annotate_tokens(rollouts, cfg)
        policy = load_base(params)
        probes = probe_cmi(policy, rollouts, tokens.flat, tokens.tau, params)
        rows = cmi_rows(rollouts, tokens.flat, probes, cfg)
        summary = summarize(tokens, rollouts.num_rows, probes, rows, cfg)
        tail.finish({p.tokens: Parquet(token_table(rollouts, tokens, policy), "tokens"), p.cmi: Parquet(rows, "cmi"),
                     p.quadrant_stats: Json(summary), p.annotate_plots: File(partial(write_plots, tokens=tokens,
                                                                                    rows=rows))},
                    params=params.subset(*PARAMS_KEYS), inputs={"rollouts": p.rollouts}, seed=cfg.cmi.seed,
                    extra={"tau": tokens.tau, "rho": cfg.rho, "tau_scope": "batch" if cfg.tau is None else "fixed",
                           "model": policy.info},
                    assets=Assets([p.tokens, p.cmi, p.quadrant_stats], [p.rollouts]),
                    publish=publications(params, tokens, summary, rows))
    return summary


if __name__ == "__main__":
    run_stage(annotate_flow)
