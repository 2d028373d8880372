"""Steps of stage `annotate` (flows/annotate.py): per-token entropy/advantage/quadrant table, quadrant statistics, the
CMI probe and plots."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa

from eapo import plots
from eapo.annotate import FlatTokens, ProbeResult, TokenAnnotation, annotate_rollouts, cmi_comparison, cmi_probe
from eapo.config import AnnotateConfig, Params
from eapo.contracts import read_artifact
from eapo.policy import Policy
from eapo.reward import RewardScorer
from tasks import stage_task
from tasks.publish import Links, Markdown, Publication, Table, markdown_table

PARAMS_KEYS = ("model", "annotate", "reward")
PLOT_FILES = ("entropy_hist.png", "quadrant_shares.png", "cmi_vs_entropy.png", "quadrant_shares.csv",
              "cmi_points.csv")


@stage_task(name="load-rollouts")
def load_rollouts(path: str) -> pa.Table:
    """The rollouts artifact, its data hash checked and its contract validated."""
    return read_artifact(path, "rollouts")[0]


@stage_task(name="annotate")
def annotate_tokens(rollouts: pa.Table, cfg: AnnotateConfig) -> TokenAnnotation:
    """τ, quadrant, gradient-norm proxy and advantage of every response token, and the quadrant statistics."""
    cols = rollouts.select(["prompt_id", "reward", "response_ids", "entropies", "logprobs", "sum_p_sq"]).to_pydict()
    return annotate_rollouts(cols, cfg.advantage, cfg.rho, cfg.tau)


@stage_task(name="cmi-probe")
def probe_cmi(policy: Policy, rollouts: pa.Table, flat: FlatTokens, tau: float, params: Params) -> list[ProbeResult]:
    """The CMI probe at positions stratified on τ (`eapo.annotate.cmi_probe`)."""
    cfg = params.annotate.cmi
    cols = rollouts.select(["prompt_ids", "response_ids", "answer"]).to_pydict()
    with RewardScorer.from_config(params.reward) as scorer:
        return cmi_probe(policy.model, policy.tokenizer, cols["prompt_ids"], cols["response_ids"], cols["answer"],
                         flat, scorer, positions=cfg.positions, k=cfg.k, m=cfg.m, max_new_tokens=cfg.max_new_tokens,
                         n_boot=cfg.bootstrap, ci=cfg.ci, seed=cfg.seed, tau=tau, high_share=cfg.high_share,
                         estimator=cfg.estimator)


def token_table(rollouts: pa.Table, tokens: TokenAnnotation, policy: Policy) -> pa.Table:
    """The rows of the tokens artifact: one per response token."""
    flat = tokens.flat
    pid, sidx = rollouts.column("prompt_id").to_pylist(), rollouts.column("sample_idx").to_pylist()
    return pa.table({
        "prompt_id": [pid[i] for i in flat.seq], "sample_idx": [sidx[i] for i in flat.seq],
        "position": flat.position, "token_id": flat.token_id,
        "token_text": policy.tokenizer.convert_ids_to_tokens(flat.token_id.tolist()), "entropy": flat.entropy,
        "logprob": flat.logprob, "advantage": flat.advantage, "reward": flat.reward, "quadrant": tokens.labels,
        "grad_norm": tokens.grad_norm,
    })


def cmi_rows(rollouts: pa.Table, flat: FlatTokens, probes: list[ProbeResult], cfg: AnnotateConfig) -> list[dict]:
    """The rows of the cmi artifact: one per probed position."""
    pid, sidx = rollouts.column("prompt_id").to_pylist(), rollouts.column("sample_idx").to_pylist()
    return [{
        "prompt_id": pid[flat.seq[p.token_index]], "sample_idx": sidx[flat.seq[p.token_index]],
        "position": int(flat.position[p.token_index]), "entropy": p.entropy, "entropy_decile": p.decile,
        "cmi": p.cmi, "cmi_lo": p.lo, "cmi_hi": p.hi, "p_mean": p.p_mean, "k": cfg.cmi.k, "m": cfg.cmi.m,
        "bound_holds": bool(p.lo <= p.entropy + 1e-6), "cmi_plugin": p.cmi_plugin, "estimator": cfg.cmi.estimator,
        "high": p.high,
    } for p in probes]


def summarize(tokens: TokenAnnotation, responses: int, probes: list[ProbeResult], rows: list[dict],
              cfg: AnnotateConfig) -> dict:
    """quadrant_stats.json: τ, the quadrant statistics and the CMI probe's high-vs-low comparison."""
    informative = [r for r in rows if 0 < r["p_mean"] < 1]
    comparison = cmi_comparison(probes, n_boot=cfg.cmi.bootstrap, ci=cfg.cmi.ci, seed=cfg.cmi.seed)
    return {
        "tau": tokens.tau, "rho": cfg.rho, "tokens": len(tokens.labels), "responses": responses,
        "quadrants": tokens.stats,
        "cmi": {
            "estimator": cfg.cmi.estimator, "k": cfg.cmi.k, "m": cfg.cmi.m, "ci": cfg.cmi.ci,
            "positions": len(rows), "bound_holds_share": bound_share(rows),
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
            "corr_cmi_entropy": _corr([r["entropy"] for r in rows], [r["cmi"] for r in rows]),
        },
    }


def bound_share(rows: list[dict]) -> float:
    """The share of probed positions whose CMI interval reaches below H (the bound CMI ≤ H holds)."""
    return float(np.mean([r["bound_holds"] for r in rows])) if rows else 0.0


def quadrant_table(stats: dict) -> list[dict]:
    return [{"quadrant": q, "count": s["count"], "token_share": s["share"], "grad_share": s["grad_share"],
             "mean_entropy": s["mean_entropy"], "mean_abs_adv": s["mean_abs_adv"]} for q, s in stats.items()]


def write_plots(out: Path, tokens: TokenAnnotation, rows: list[dict]) -> None:
    """The plots folder: entropy histogram, quadrant shares, CMI vs entropy, and the CSVs `dvc plots` reads."""
    out.mkdir(parents=True, exist_ok=True)
    plots.entropy_histogram(tokens.flat.entropy, tokens.tau, out / "entropy_hist.png")
    plots.quadrant_shares(tokens.stats, out / "quadrant_shares.png")
    plots.cmi_vs_entropy(*(np.array([r[c] for r in rows], dtype=float) for c in ("entropy", "cmi", "cmi_lo",
                                                                                "cmi_hi")),
                         out / "cmi_vs_entropy.png")
    _write_csv(out / "quadrant_shares.csv", quadrant_table(tokens.stats))
    _write_csv(out / "cmi_points.csv", [{k: r[k] for k in ("entropy", "cmi", "cmi_lo", "cmi_hi")} for r in rows]
               or [{"entropy": 0.0, "cmi": 0.0, "cmi_lo": 0.0, "cmi_hi": 0.0}])


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def publications(params: Params, tokens: TokenAnnotation, summary: dict, rows: list[dict]) -> list[Publication]:
    """The quadrant table, a summary with the CMI comparison in words, and links to the plots."""
    cfg, out = params.annotate, Path(params.paths.annotate_plots)
    table = quadrant_table(tokens.stats)
    return [
        Table("annotate-quadrants", table, f"Four Quadrant Decomposition (tau = {tokens.tau:.3f} nats)"),
        Markdown("annotate-summary", "\n".join([
            "# annotate", "",
            f"- τ = {tokens.tau:.4f} nats (top {cfg.rho:.0%} of {len(tokens.labels)} response tokens)",
            f"- CMI probe: {len(rows)} positions; CMI ≤ H within the interval at **{bound_share(rows):.0%}**",
            *_cmi_lines(summary["cmi"]), "", markdown_table(table)]), "Annotate stage summary"),
        Links("annotate-plot", [out / f for f in PLOT_FILES if f.endswith(".png")], "Annotate plots"),
    ]


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
