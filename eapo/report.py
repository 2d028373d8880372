"""The study report (DESIGN §3 `report`, §4 "Evaluation"): pure functions, dataframes/dicts in, dicts/markdown out.

No file I/O here: `tasks/report.py` reads the artifacts, calls `build_report` and writes what it returns.

- **Four Quadrant ablation table**: per model, test avg@k and greedy accuracy, and the deltas vs `base` and vs `grpo`
  with PAIRED bootstrap intervals over prompts (`paired_bootstrap_diff` on per-prompt accuracies: the k-sample mean
  for avg@k, the 0/1 greedy reward for greedy). A delta whose interval contains 0 is labelled "within noise".
- **Head to head**: EAPO vs GRPO vs top20 (80/20), the same paired deltas.
- **Sample efficiency** from the training `steps` curves: normalised area under the reward curve (`curve_auc`), first
  step reaching `reward_threshold` (`steps_to_threshold`), reward start/end, entropy start -> end (collapse).
- **Quadrant shares** (annotate's token and GRPO-gradient shares, plus each variant's mean weighted gradient share
  from its steps), and the **CMI vs entropy** summary.
- **Lineage**: stage, params hash and code version of every input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from eapo.core.stats import bootstrap_ci, curve_auc, paired_bootstrap_diff, steps_to_threshold
from eapo.evaluation import per_prompt_accuracy

QUADRANTS = ("pos_high", "pos_low", "neg_high", "neg_low")
WITHIN_NOISE = "within noise"
BASE = "base"
REFERENCE = "grpo"
HEAD_TO_HEAD = (("eapo", "grpo"), ("eapo", "top20"), ("top20", "grpo"))


@dataclass(frozen=True)
class Boot:
    """Bootstrap settings (`params.report`)."""

    n_boot: int = 2000
    ci: float = 0.95
    seed: int = 0


# --------------------------------------------------------------------------------------------------------------------
# Paired deltas
# --------------------------------------------------------------------------------------------------------------------


def noise_label(lo: float, hi: float) -> str:
    """'within noise' when the interval contains 0, else the direction of a detected difference."""
    if lo <= 0.0 <= hi:
        return WITHIN_NOISE
    return "better" if lo > 0 else "worse"


def paired_delta(a: pd.Series, b: pd.Series, boot: Boot = Boot()) -> dict[str, Any]:
    """mean(a - b) over the prompts both share, with a paired bootstrap interval and its label.

    a, b: per-prompt accuracies indexed by prompt_id. Different prompt sets are an error (the pairing would be
    silently partial), so both models must have been evaluated on the same prompts."""
    if set(a.index) != set(b.index):
        only_a, only_b = sorted(set(a.index) - set(b.index)), sorted(set(b.index) - set(a.index))
        raise ValueError(f"paired comparison over different prompt sets: {len(only_a)} prompt(s) only in one model "
                         f"(e.g. {only_a[:3]}), {len(only_b)} only in the other (e.g. {only_b[:3]})")
    idx = sorted(a.index)
    est, lo, hi = paired_bootstrap_diff(a.loc[idx].to_numpy(float), b.loc[idx].to_numpy(float),
                                        n_boot=boot.n_boot, seed=boot.seed, ci=boot.ci)
    return {"est": est, "lo": lo, "hi": hi, "label": noise_label(lo, hi), "prompts": len(idx)}


@dataclass
class ModelScores:
    """Per-prompt accuracies of one model on one dataset."""

    sample: pd.Series
    greedy: pd.Series | None = None

    @classmethod
    def from_samples(cls, samples: pd.DataFrame, dataset: str = "test") -> ModelScores:
        sample = per_prompt_accuracy(samples, dataset, "sample")
        greedy = per_prompt_accuracy(samples, dataset, "greedy")
        if sample.empty:
            raise ValueError(f"no sampled rows for dataset {dataset!r}")
        return cls(sample, greedy if len(greedy) else None)


def ablation_table(scores: Mapping[str, ModelScores], boot: Boot = Boot(), base: str = BASE,
                   reference: str = REFERENCE) -> list[dict[str, Any]]:
    """One row per model: avg@k and greedy accuracy with deltas vs `base` and vs `reference` (paired bootstrap).

    A delta is None for the model itself or when the other model is absent."""
    rows = []
    for name, s in scores.items():
        row: dict[str, Any] = {"model": name, "prompts": len(s.sample), "avg_acc": float(s.sample.mean()),
                               "greedy_acc": float(s.greedy.mean()) if s.greedy is not None else None}
        for tag, other in (("base", base), ("ref", reference)):
            o = scores.get(other)
            row[f"d_{tag}"] = paired_delta(s.sample, o.sample, boot) if o is not None and other != name else None
            row[f"dg_{tag}"] = (paired_delta(s.greedy, o.greedy, boot)
                                if o is not None and other != name and s.greedy is not None
                                and o.greedy is not None else None)
        rows.append(row)
    return rows


def head_to_head(scores: Mapping[str, ModelScores], pairs: Sequence[tuple[str, str]] = HEAD_TO_HEAD,
                 boot: Boot = Boot()) -> list[dict[str, Any]]:
    """Paired deltas for the named pairs (EAPO vs GRPO vs top20 by default); pairs with an absent model are skipped."""
    rows = []
    for a, b in pairs:
        if a not in scores or b not in scores:
            continue
        sa, sb = scores[a], scores[b]
        rows.append({"a": a, "b": b, "avg": paired_delta(sa.sample, sb.sample, boot),
                     "greedy": (paired_delta(sa.greedy, sb.greedy, boot)
                                if sa.greedy is not None and sb.greedy is not None else None)})
    return rows


def accuracy_rows(scores: Mapping[str, ModelScores], boot: Boot = Boot()) -> list[dict[str, Any]]:
    """Per model: avg@k with a (non-paired) bootstrap interval over prompts, and greedy accuracy: `accuracy.csv`."""
    rows = []
    for name, s in scores.items():
        acc, lo, hi = bootstrap_ci(s.sample.to_numpy(float), n_boot=boot.n_boot, seed=boot.seed, ci=boot.ci)
        rows.append({"variant": name, "acc": acc, "lo": lo, "hi": hi,
                     "greedy": float(s.greedy.mean()) if s.greedy is not None else None})
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------------------------------------


def curves_frame(steps: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Long table step, variant, reward_mean, entropy_mean, response_length: `curves.csv` for DVC plots."""
    frames = []
    for variant, df in steps.items():
        d = df.sort_values("step")
        frames.append(pd.DataFrame({"step": d["step"].astype(int).to_numpy(), "variant": variant,
                                    "reward_mean": d["reward_mean"].astype(float).to_numpy(),
                                    "entropy_mean": d["entropy_mean"].astype(float).to_numpy(),
                                    "response_length": d["response_length"].astype(float).to_numpy()}))
    if not frames:
        return pd.DataFrame(columns=["step", "variant", "reward_mean", "entropy_mean", "response_length"])
    return pd.concat(frames, ignore_index=True)


def sample_efficiency(steps: Mapping[str, pd.DataFrame], threshold: float) -> list[dict[str, Any]]:
    """Per variant: reward AUC (time-average), steps to `threshold`, reward and entropy start/end."""
    rows = []
    for variant, df in steps.items():
        d = df.sort_values("step")
        s, r, h = (d[c].to_numpy(np.float64) for c in ("step", "reward_mean", "entropy_mean"))
        if s.size == 0:
            raise ValueError(f"steps of variant {variant!r} are empty")
        rows.append({"variant": variant, "steps": int(s.size), "reward_auc": curve_auc(s, r),
                     "steps_to_threshold": steps_to_threshold(s, r, threshold),
                     "reward_start": float(r[0]), "reward_end": float(r[-1]),
                     "entropy_start": float(h[0]), "entropy_end": float(h[-1]),
                     "entropy_ratio": float(h[-1] / h[0]) if h[0] > 0 else None})
    return rows


def variant_grad_shares(steps: Mapping[str, pd.DataFrame]) -> list[dict[str, Any]]:
    """Per variant: token share and weighted gradient share per quadrant, averaged over training steps."""
    rows = []
    for variant, df in steps.items():
        counts = df[[f"count_{q}" for q in QUADRANTS]].to_numpy(np.float64).sum(axis=0)
        total = counts.sum()
        row: dict[str, Any] = {"variant": variant}
        for q, c in zip(QUADRANTS, counts):
            row[f"tokens_{q}"] = float(c / total) if total > 0 else None
        for q in QUADRANTS:
            col = df[f"weighted_grad_share_{q}"].astype(float)
            row[f"grad_{q}"] = float(col.mean()) if col.notna().any() else None
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Annotate: quadrants and CMI
# --------------------------------------------------------------------------------------------------------------------


def quadrant_rows(quadrant_stats: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Annotate's Four Quadrant Decomposition of the base policy's rollouts (token and GRPO-gradient shares)."""
    quads = quadrant_stats.get("quadrants")
    if not isinstance(quads, Mapping):
        raise TypeError("quadrant stats have no 'quadrants' section (a mapping)")
    return [{"quadrant": q, "count": int(s.get("count", 0)), "token_share": s.get("share"),
             "grad_share": s.get("grad_share"), "mean_entropy": s.get("mean_entropy"),
             "mean_abs_adv": s.get("mean_abs_adv")} for q, s in quads.items()]


def cmi_summary(cmi: pd.DataFrame | None, tau: float | None) -> dict[str, Any]:
    """Share of probed positions where CMI <= H holds within the interval (cmi_lo <= H), and mean CMI at high (H >= tau)
    vs low entropy."""
    if cmi is None or len(cmi) == 0:
        return {"positions": 0}
    ent, val, lo = (cmi[c].to_numpy(np.float64) for c in ("entropy", "cmi", "cmi_lo"))
    out: dict[str, Any] = {"positions": len(cmi), "bound_holds_share": float(np.mean(lo <= ent + 1e-6)),
                           "point_bound_share": float(np.mean(val <= ent + 1e-6)), "tau": tau,
                           "informative_positions": int(np.sum((cmi["p_mean"] > 0) & (cmi["p_mean"] < 1)))}
    if tau is not None:
        high, low = ent >= tau, ent < tau
        out["mean_cmi_high"] = float(val[high].mean()) if high.any() else None
        out["mean_cmi_low"] = float(val[low].mean()) if low.any() else None
        out["n_high"], out["n_low"] = int(high.sum()), int(low.sum())
    out["corr_cmi_entropy"] = (float(np.corrcoef(ent, val)[0, 1])
                               if len(ent) >= 3 and np.std(ent) > 0 and np.std(val) > 0 else None)
    return out


def lineage_rows(lineages: Mapping[str, Mapping[str, Any] | None]) -> list[dict[str, Any]]:
    """One row per input: its stage, params hash, code version and data hash (from its lineage record)."""
    rows = []
    for name, lin in lineages.items():
        lin = lin or {}
        code = lin.get("code") or {}
        commit = code.get("git_commit")  # artifacts of older versions; now a content hash of the stage's code
        label = code["sha256"][:10] if code.get("sha256") else (
            (commit[:10] if commit else "?") + ("+dirty" if code.get("git_dirty") else ""))
        model = (lin.get("extra") or {}).get("model") or {}
        rows.append({"input": name, "stage": lin.get("stage"), "params_hash": lin.get("params_hash"),
                     "code": label,
                     "data_sha256": (lin.get("data_sha256") or "")[:12] or None,
                     "model": (f"{model.get('kind')}:{str(model.get('sha256'))[:12]}" if model else None),
                     "created_at": lin.get("created_at")})
    return rows


# --------------------------------------------------------------------------------------------------------------------
# The whole report
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ReportInputs:
    samples: dict[str, pd.DataFrame]
    """Model name ("base" and each variant) -> its `samples` table."""
    metrics: dict[str, dict[str, Any]]
    """Model name -> its metrics JSON ({dataset: {metric: value}})."""
    steps: dict[str, pd.DataFrame]
    """Variant -> its `steps` table."""
    quadrant_stats: dict[str, Any]
    cmi: pd.DataFrame | None = None
    lineages: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    """Input name -> its lineage record (as a dict)."""


@dataclass
class Report:
    markdown: str
    ablation_md: str
    ablation: list[dict[str, Any]]
    head_to_head: list[dict[str, Any]]
    accuracy: list[dict[str, Any]]
    curves: pd.DataFrame
    efficiency: list[dict[str, Any]]
    quadrants: list[dict[str, Any]]
    grad_shares: list[dict[str, Any]]
    cmi: dict[str, Any]
    summary: dict[str, dict[str, float]]
    """Flat-numeric per-model summary (`summary.json`, a DVC metric)."""


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}f}"
    return str(v)


def _pct(v: Any) -> str:
    return "?" if v is None else f"{float(v):.0%}"


def _delta(d: Mapping[str, Any] | None) -> str:
    if d is None:
        return "–"
    return f"{d['est']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] {d['label']}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_f(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def render_ablation(rows: Sequence[Mapping[str, Any]], k: int | None, ci: float, reference: str = REFERENCE) -> str:
    ak = f"avg@{k}" if k else "avg@k"
    header = ["model", ak, "greedy", f"Δ {ak} vs base", f"Δ {ak} vs {reference}", "Δ greedy vs base",
              f"Δ greedy vs {reference}"]
    body = [[r["model"], r["avg_acc"], r["greedy_acc"], _delta(r["d_base"]), _delta(r["d_ref"]),
             _delta(r["dg_base"]), _delta(r["dg_ref"])] for r in rows]
    return (md_table(header, body) + f"\n\nΔ: mean per-prompt difference [{ci:.0%} paired bootstrap interval over "
            "prompts]; an interval that contains 0 is *within noise*.")


def build_report(inputs: ReportInputs, *, boot: Boot = Boot(), reward_threshold: float = 0.5,
                 dataset: str = "test", base: str = BASE, reference: str = REFERENCE) -> Report:
    models = list(inputs.samples)
    scores = {m: ModelScores.from_samples(inputs.samples[m], dataset) for m in models}
    ks = set()
    for m in models:
        df = inputs.samples[m]
        ks.add(int(df[(df["mode"] == "sample") & (df["dataset"] == dataset)].groupby("prompt_id").size().iloc[0]))
    k = ks.pop() if len(ks) == 1 else None
    ablation = ablation_table(scores, boot, base, reference)
    h2h = head_to_head(scores, boot=boot)
    acc = accuracy_rows(scores, boot)
    curves = curves_frame(inputs.steps)
    eff = sample_efficiency(inputs.steps, reward_threshold)
    quads = quadrant_rows(inputs.quadrant_stats)
    grads = variant_grad_shares(inputs.steps)
    cmi = cmi_summary(inputs.cmi, inputs.quadrant_stats.get("tau"))
    ablation_md = render_ablation(ablation, k, boot.ci, reference)

    md: list[str] = ["# EAPO study report", ""]
    md += [(f"Models: {', '.join(f'`{m}`' for m in models)}. Dataset `{dataset}`: {len(scores[models[0]].sample)} "
           f"prompts, k = {k if k else 'mixed'} samples per prompt plus one greedy decode."), ""]
    md += ["## Four Quadrant ablation table", "", ablation_md, ""]

    md += ["## EAPO vs GRPO vs top20 (80/20)", ""]
    if h2h:
        md += [md_table(["comparison", f"Δ avg@{k or 'k'}", "Δ greedy"],
                        [[f"{r['a']} − {r['b']}", _delta(r["avg"]), _delta(r["greedy"])] for r in h2h]), ""]
        for r in h2h:
            d = r["avg"]
            verdict = (f"indistinguishable from `{r['b']}` (within noise)" if d["label"] == WITHIN_NOISE else
                       f"{'above' if d['est'] > 0 else 'below'} `{r['b']}` beyond the bootstrap noise")
            md.append(f"- `{r['a']}` is {verdict}: Δ avg@{k or 'k'} = {d['est']:+.3f} "
                      f"[{d['lo']:+.3f}, {d['hi']:+.3f}].")
        md.append("")
    else:
        md += ["_eapo, grpo and top20 are not all in the study: no head-to-head comparison._", ""]

    other = [ds for ds in next(iter(inputs.metrics.values()), {}) if ds != dataset] if inputs.metrics else []
    if inputs.metrics:
        md += ["## Metrics per dataset", ""]
        keys = ["greedy_acc", f"avg@{k}" if k else None, "pass@1", f"pass@{k}" if k else None, "mean_length",
                "mean_entropy", "extraction_rate"]
        keys = [c for c in dict.fromkeys(keys) if c]
        body = [[m, ds, *[inputs.metrics[m].get(ds, {}).get(c) for c in keys]]
                for ds in [dataset, *other] for m in models if m in inputs.metrics]
        md += [md_table(["model", "dataset", *keys], body), ""]

    md += ["## Sample efficiency (training curves)", "",
           (f"reward AUC = time-average of the training reward (trapezoid, normalised by the step span); "
           f"threshold = {reward_threshold}."), ""]
    md += [md_table(["variant", "steps", "reward AUC", "steps to threshold", "reward start → end",
                     "entropy start → end", "entropy end/start"],
                    [[r["variant"], r["steps"], r["reward_auc"],
                      "never" if r["steps_to_threshold"] is None else int(r["steps_to_threshold"]),
                      f"{r['reward_start']:.3f} → {r['reward_end']:.3f}",
                      f"{r['entropy_start']:.3f} → {r['entropy_end']:.3f}", r["entropy_ratio"]] for r in eff]), ""]
    md += ["Plots: `reward_curves.png`, `entropy_curves.png`, `accuracy.png`, `quadrant_shares.png`.", ""]

    tau = inputs.quadrant_stats.get("tau")
    md += ["## Four Quadrant Decomposition (base policy rollouts, annotate)", "",
           (f"τ = {_f(tau, 4)} nats (top {_pct(inputs.quadrant_stats.get('rho'))} of "
           f"{inputs.quadrant_stats.get('tokens', '?')} response tokens)."), ""]
    md += [md_table(["quadrant", "tokens", "token share", "GRPO gradient share", "mean H", "mean abs(A)"],
                    [[q["quadrant"], q["count"], q["token_share"], q["grad_share"], q["mean_entropy"],
                      q["mean_abs_adv"]] for q in quads]), ""]
    if grads:
        md += ["Per variant, averaged over training steps: token share and *weighted* gradient share per quadrant.", ""]
        md += [md_table(["variant", *[f"tokens {q}" for q in QUADRANTS], *[f"grad {q}" for q in QUADRANTS]],
                        [[g["variant"], *[g[f"tokens_{q}"] for q in QUADRANTS],
                          *[g[f"grad_{q}"] for q in QUADRANTS]] for g in grads]), ""]

    md += ["## CMI vs entropy", ""]
    if cmi.get("positions"):
        md += [f"- {cmi['positions']} probed positions ({cmi['informative_positions']} with mixed outcomes).",
               (f"- CMI ≤ H within the interval (cmi_lo ≤ H) at **{cmi['bound_holds_share']:.0%}** of positions "
               f"(point estimate ≤ H at {cmi['point_bound_share']:.0%})."),
               (f"- mean CMI at high entropy (H ≥ τ, n = {cmi.get('n_high', 0)}): {_f(cmi.get('mean_cmi_high'), 4)} "
               f"nats; at low entropy (n = {cmi.get('n_low', 0)}): {_f(cmi.get('mean_cmi_low'), 4)} nats."),
               f"- correlation(CMI, H): {_f(cmi.get('corr_cmi_entropy'))}.", ""]
    else:
        md += ["_no CMI probe positions._", ""]

    md += ["## Lineage", ""]
    lin = lineage_rows(inputs.lineages)
    md += [md_table(["input", "stage", "params hash", "code", "data sha256", "model", "created"],
                    [[r["input"], r["stage"], r["params_hash"], r["code"], r["data_sha256"], r["model"],
                      r["created_at"]]
                     for r in lin]) if lin else "_no lineage records._", ""]

    summary: dict[str, dict[str, float]] = {}
    eff_by = {r["variant"]: r for r in eff}
    for r in ablation:
        s = {"avg_acc": r["avg_acc"]}
        if r["greedy_acc"] is not None:
            s["greedy_acc"] = r["greedy_acc"]
        for tag, key in (("d_base", "delta_vs_base"), ("d_ref", f"delta_vs_{reference}")):
            if r[tag] is not None:
                s[key], s[f"{key}_lo"], s[f"{key}_hi"] = r[tag]["est"], r[tag]["lo"], r[tag]["hi"]
        e = eff_by.get(r["model"])
        if e:
            s.update({k2: e[k2] for k2 in ("reward_auc", "reward_end", "entropy_end", "steps_to_threshold")
                      if e[k2] is not None})
        summary[r["model"]] = s
    return Report(markdown="\n".join(md), ablation_md=ablation_md, ablation=ablation, head_to_head=h2h,
                  accuracy=acc, curves=curves, efficiency=eff, quadrants=quads, grad_shares=grads, cmi=cmi,
                  summary=summary)
