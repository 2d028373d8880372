"""Stage `annotate`: per-token entropy/advantage/quadrant table, quadrant statistics, the CMI probe and plots."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from eapo import plots
from eapo.annotate import annotate_rollouts, cmi_comparison, cmi_probe
from eapo.config import Params
from eapo.contracts import read_artifact, write_artifact
from eapo.lineage import make_lineage, write_json_artifact
from eapo.reward import RewardScorer
from eapo.stageio import StageOutputs
from tasks.publish import markdown_table, publish_links, publish_markdown, publish_table, record_assets
from tasks.rollout import load_base_policy

PARAMS_KEYS = ("model", "annotate", "reward")
PLOT_FILES = ("entropy_hist.png", "quadrant_shares.png", "cmi_vs_entropy.png", "quadrant_shares.csv",
              "cmi_points.csv")


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@task(name="annotate", cache_policy=NO_CACHE)
def annotate_task(params: Params) -> dict:
    p = params.paths
    with StageOutputs("annotate", [p.tokens, p.cmi, p.quadrant_stats, p.annotate_plots]) as staged:
        summary, quadrant_table, tau, bound_share, n_cmi, n_tokens = _annotate(params, staged)
    cfg = params.annotate
    out = Path(p.annotate_plots)
    record_assets([p.tokens, p.cmi, p.quadrant_stats], [p.rollouts], "annotate")
    publish_table("annotate-quadrants", quadrant_table, f"Four Quadrant Decomposition (tau = {tau:.3f} nats)")
    publish_markdown("annotate-summary", "\n".join([
        "# annotate", "", f"- τ = {tau:.4f} nats (top {cfg.rho:.0%} of {n_tokens} response tokens)",
        f"- CMI probe: {n_cmi} positions; CMI ≤ H within the interval at **{bound_share:.0%}**",
        *_cmi_lines(summary["cmi"]), "", markdown_table(quadrant_table)]), "Annotate stage summary")
    publish_links("annotate-plot", [out / f for f in PLOT_FILES if f.endswith(".png")], "Annotate plots")
    return summary


def _annotate(params: Params, staged: StageOutputs):
    """Compute and write every annotate output into the staging area; the caller commits them together."""
    cfg = params.annotate
    table, _ = read_artifact(params.paths.rollouts, "rollouts")
    cols = table.to_pydict()
    tokens = annotate_rollouts(cols, cfg.advantage, cfg.rho, cfg.tau)
    flat, tau, labels, grad, stats = tokens.flat, tokens.tau, tokens.labels, tokens.grad_norm, tokens.stats

    policy = load_base_policy(params)
    with RewardScorer.from_config(params.reward) as scorer:
        probes = cmi_probe(policy.model, policy.tokenizer, cols["prompt_ids"], cols["response_ids"], cols["answer"],
                           flat, scorer, positions=cfg.cmi.positions, k=cfg.cmi.k, m=cfg.cmi.m,
                           max_new_tokens=cfg.cmi.max_new_tokens, n_boot=cfg.cmi.bootstrap, ci=cfg.cmi.ci,
                           seed=cfg.cmi.seed, tau=tau, high_share=cfg.cmi.high_share, estimator=cfg.cmi.estimator)

    lineage = make_lineage("annotate", params.subset(*PARAMS_KEYS), inputs={"rollouts": params.paths.rollouts},
                           seed=cfg.cmi.seed, extra={"tau": tau, "rho": cfg.rho, "tau_scope": "fixed" if cfg.tau
                                                     is not None else "batch", "model": policy.info})
    pid, sidx = cols["prompt_id"], cols["sample_idx"]
    token_text = policy.tokenizer.convert_ids_to_tokens(flat.token_id.tolist())
    write_artifact(pa.table({
        "prompt_id": [pid[i] for i in flat.seq], "sample_idx": [sidx[i] for i in flat.seq],
        "position": flat.position, "token_id": flat.token_id, "token_text": token_text, "entropy": flat.entropy,
        "logprob": flat.logprob, "advantage": flat.advantage, "reward": flat.reward, "quadrant": labels,
        "grad_norm": grad,
    }), staged.path(params.paths.tokens), "tokens", lineage)

    cmi_rows = [{
        "prompt_id": pid[flat.seq[p.token_index]], "sample_idx": sidx[flat.seq[p.token_index]],
        "position": int(flat.position[p.token_index]), "entropy": p.entropy, "entropy_decile": p.decile,
        "cmi": p.cmi, "cmi_lo": p.lo, "cmi_hi": p.hi, "p_mean": p.p_mean, "k": cfg.cmi.k, "m": cfg.cmi.m,
        "bound_holds": bool(p.lo <= p.entropy + 1e-6), "cmi_plugin": p.cmi_plugin, "estimator": cfg.cmi.estimator,
        "high": p.high,
    } for p in probes]
    write_artifact(cmi_rows, staged.path(params.paths.cmi), "cmi", lineage)

    bound_share = float(np.mean([r["bound_holds"] for r in cmi_rows])) if cmi_rows else 0.0
    informative = [r for r in cmi_rows if 0 < r["p_mean"] < 1]
    comparison = cmi_comparison(probes, n_boot=cfg.cmi.bootstrap, ci=cfg.cmi.ci, seed=cfg.cmi.seed)
    summary = {
        "tau": tau, "rho": cfg.rho, "tokens": len(labels), "responses": len(pid),
        "quadrants": stats,
        "cmi": {
            "estimator": cfg.cmi.estimator, "k": cfg.cmi.k, "m": cfg.cmi.m, "ci": cfg.cmi.ci,
            "positions": len(cmi_rows), "bound_holds_share": bound_share,
            "informative_positions": len(informative),
            "n_high": comparison["high"]["n"], "n_low": comparison["low"]["n"],
            "mean_cmi_high": comparison["high"]["mean_cmi"],
            "mean_cmi_low": comparison["low"]["mean_cmi"],
            "cmi_over_h_high": comparison["high"]["cmi_over_h"],
            "cmi_over_h_low": comparison["low"]["cmi_over_h"],
            "diff_high_low": comparison["diff_high_low"],
            "diff_high_low_lo": comparison["diff_high_low_lo"],
            "diff_high_low_hi": comparison["diff_high_low_hi"],
            "strata": {k: comparison[k] for k in ("high", "low")},
            "corr_cmi_entropy": _corr([r["entropy"] for r in cmi_rows], [r["cmi"] for r in cmi_rows]),
        },
    }
    write_json_artifact(staged.path(params.paths.quadrant_stats), summary, lineage)

    out = staged.path(params.paths.annotate_plots)
    out.mkdir(parents=True, exist_ok=True)
    plots.entropy_histogram(flat.entropy, tau, out / "entropy_hist.png")
    plots.quadrant_shares(stats, out / "quadrant_shares.png")
    plots.cmi_vs_entropy(*(np.array([r[c] for r in cmi_rows], dtype=float) for c in ("entropy", "cmi", "cmi_lo",
                                                                                    "cmi_hi")),
                         out / "cmi_vs_entropy.png")
    quadrant_table = [{"quadrant": q, "count": s["count"], "token_share": s["share"], "grad_share": s["grad_share"],
                       "mean_entropy": s["mean_entropy"], "mean_abs_adv": s["mean_abs_adv"]} for q, s in stats.items()]
    _write_csv(out / "quadrant_shares.csv", quadrant_table)
    _write_csv(out / "cmi_points.csv", [{k: r[k] for k in ("entropy", "cmi", "cmi_lo", "cmi_hi")} for r in cmi_rows]
               or [{"entropy": 0.0, "cmi": 0.0, "cmi_lo": 0.0, "cmi_hi": 0.0}])
    return summary, quadrant_table, tau, bound_share, len(cmi_rows), len(labels)


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:+.4f}"


def _cmi_lines(c: dict) -> list[str]:
    """The high-vs-low CMI comparison in words, from the (bias-corrected) estimates."""
    lines = [f"- estimator: {c['estimator']} (K = {c['k']}, M = {c['m']}); intervals at {c['ci']:.0%}"]
    for name, label in (("high", "H ≥ τ"), ("low", "H < τ")):
        s = c["strata"][name]
        lines.append(f"- {label}: n = {s['n']}, mean CMI {_fmt(s['mean_cmi'])} [{_fmt(s['mean_cmi_lo'])}, "
                     f"{_fmt(s['mean_cmi_hi'])}] nats, CMI/H = {_fmt(s['cmi_over_h'])} "
                     f"(plug-in mean {_fmt(s['mean_cmi_plugin'])})")
    lines.append(f"- high − low: {_fmt(c['diff_high_low'])} [{_fmt(c['diff_high_low_lo'])}, "
                 f"{_fmt(c['diff_high_low_hi'])}] nats")
    return lines


def _corr(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])
