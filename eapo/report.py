"""The study report (DESIGN §3 `report`, §4 "Evaluation"): pure functions, dataframes/dicts in, dicts/markdown out.

No file I/O here: the report stage (`flows/report.py`) reads the artifacts with `tasks/report.py`, calls
`build_report` and writes what it returns through the shared tail (`tasks/tail.py`).

- **Four Quadrant ablation table**: per model, test avg@k and greedy accuracy, and the deltas vs `base` and vs `grpo`
  with PAIRED bootstrap intervals over prompts (`paired_bootstrap_diff` on per-prompt accuracies: the k-sample mean
  for avg@k, the 0/1 greedy reward for greedy). A delta whose interval contains 0 is labelled "within noise".
- **Head to head**: EAPO vs GRPO vs top20 (80/20), the same paired deltas.
- **Sample efficiency** from the training `steps` curves: normalised area under the reward curve (`curve_auc`), first
  step reaching `reward_threshold` (`steps_to_threshold`), reward start/end, entropy start -> end (collapse).
- **Quadrant shares** (annotate's token and GRPO-gradient shares, plus each variant's mean weighted gradient share
  from its steps), and the **CMI vs entropy** summary.
- **Lineage**: stage, params hash and code version of every input.
- **Seeds**: a trained model may have several study seeds (`study.seeds`). Every delta is then a HIERARCHICAL paired
  bootstrap (`eapo.study_stats.hierarchical_bootstrap`: seeds, then prompts within each seed, the same prompts for
  both models); with one seed it is exactly the paired bootstrap over prompts, and the report says that seed variance
  is not included. A per-seed table shows avg@k per variant per seed.
- **Claims**: the paper's predictions tested one by one (`claims`), each with estimate, interval, Holm-adjusted
  p-value across the family, verdict and minimum detectable effect at the study's size (`eapo.study_stats`).
- **Sharpening or new capability?** Per variant vs base: Δ avg@k beside Δ greedy and Δ pass@K at the largest K the
  samples allow (`sharpening`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from eapo.core.quadrants import QUADRANTS
from eapo.core.stats import curve_auc, steps_to_threshold
from eapo.evaluation import pass_at_k_per_prompt, per_prompt_accuracy
from eapo.study_stats import (
    NOT_RUN,
    hierarchical_bootstrap,
    holm,
    mde,
    two_sample_bootstrap,
    verdict,
)

WITHIN_NOISE = "within noise"
BASE = "base"
REFERENCE = "grpo"
HEAD_TO_HEAD = (("eapo", "grpo"), ("eapo", "top20"), ("top20", "grpo"))
ENTROPY_BASELINES = ("clip_cov", "kl_cov", "entropy_bonus", "top20")
"""The entropy-management baselines claim 5 compares EAPO with (those present in the study)."""


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


def _matrix(series: Mapping[int, pd.Series], idx: list) -> np.ndarray:
    return np.stack([series[k].loc[idx].to_numpy(np.float64) for k in sorted(series)])


def _check_prompts(groups: Sequence[Mapping[int, pd.Series]]) -> list:
    ref = set(next(iter(groups[0].values())).index)
    for g in groups:
        for s in g.values():
            if set(s.index) != ref:
                only_a, only_b = sorted(ref - set(s.index)), sorted(set(s.index) - ref)
                raise ValueError(f"paired comparison over different prompt sets: {len(only_a)} prompt(s) only in one "
                                 f"model (e.g. {only_a[:3]}), {len(only_b)} only in the other (e.g. {only_b[:3]})")
    return sorted(ref)


def seeded_delta(a: Mapping[int, pd.Series], b: Mapping[int, pd.Series], boot: Boot = Boot()) -> dict[str, Any]:
    """mean(a - b) over seeds and prompts with a hierarchical paired bootstrap interval and its label.

    a, b: study seed -> per-prompt accuracies indexed by prompt_id. Seeds are paired by seed when both have the same
    seeds; a model with one seed (the untrained base) is compared with every seed of the other. All series must cover
    the same prompts (a partial pairing would be silent)."""
    if not a or not b:
        raise ValueError("seeded_delta needs at least one seed per model")
    idx = _check_prompts([a, b])
    if len(a) > 1 and len(b) > 1 and sorted(a) != sorted(b):
        raise ValueError(f"models trained with different seeds: {sorted(a)} vs {sorted(b)}")
    d = _matrix(a, idx) - _matrix(b, idx)  # [S, P]; a one-seed model (base) broadcasts over the other's seeds
    r = hierarchical_bootstrap(d, n_boot=boot.n_boot, seed=boot.seed, ci=boot.ci)
    return {"est": r.est, "lo": r.lo, "hi": r.hi, "label": noise_label(r.lo, r.hi), "prompts": len(idx),
            "seeds": r.seeds, "se": r.se, "p": r.p}


def paired_delta(a: pd.Series, b: pd.Series, boot: Boot = Boot()) -> dict[str, Any]:
    """mean(a - b) over the prompts both share, with a paired bootstrap interval and its label (one seed each)."""
    return seeded_delta({0: a}, {0: b}, boot)


@dataclass
class ModelScores:
    """Per-prompt accuracies of one model (one seed) on one dataset; `passk` is the unbiased pass@K per prompt at the
    largest K its samples allow (K = samples per prompt)."""

    sample: pd.Series
    greedy: pd.Series | None = None
    passk: pd.Series | None = None

    @classmethod
    def from_samples(cls, samples: pd.DataFrame, dataset: str = "test") -> ModelScores:
        sample = per_prompt_accuracy(samples, dataset, "sample")
        greedy = per_prompt_accuracy(samples, dataset, "greedy")
        if sample.empty:
            raise ValueError(f"no sampled rows for dataset {dataset!r}")
        ds = samples[samples["dataset"] == dataset]
        n = int(ds[ds["mode"] == "sample"].groupby("prompt_id").size().min())
        return cls(sample, greedy if len(greedy) else None, pass_at_k_per_prompt(ds, n))


Scores = Mapping[str, "ModelScores | Mapping[int, ModelScores]"]


def _seeded(scores: ModelScores | Mapping[int, ModelScores]) -> dict[int, ModelScores]:
    return {0: scores} if isinstance(scores, ModelScores) else dict(sorted(scores.items()))


def _part(s: Mapping[int, ModelScores], kind: str) -> dict[int, pd.Series] | None:
    out = {k: getattr(m, kind) for k, m in s.items()}
    return None if any(v is None for v in out.values()) else out


def _delta(a: Mapping[int, ModelScores], b: Mapping[int, ModelScores] | None, kind: str,
           boot: Boot) -> dict[str, Any] | None:
    if b is None:
        return None
    pa, pb = _part(a, kind), _part(b, kind)
    return seeded_delta(pa, pb, boot) if pa is not None and pb is not None else None


def _mean(s: Mapping[int, ModelScores], kind: str) -> float | None:
    part = _part(s, kind)
    return None if part is None else float(np.mean([v.mean() for v in part.values()]))


def ablation_table(scores: Scores, boot: Boot = Boot(), base: str = BASE,
                   reference: str = REFERENCE) -> list[dict[str, Any]]:
    """One row per model: avg@k and greedy accuracy (means over seeds) with deltas vs `base` and vs `reference`
    (hierarchical paired bootstrap). A delta is None for the model itself or when the other model is absent."""
    seeded = {m: _seeded(s) for m, s in scores.items()}
    rows = []
    for name, s in seeded.items():
        row: dict[str, Any] = {"model": name, "prompts": len(next(iter(s.values())).sample), "seeds": len(s),
                               "avg_acc": _mean(s, "sample"), "greedy_acc": _mean(s, "greedy")}
        for tag, other in (("base", base), ("ref", reference)):
            o = seeded.get(other) if other != name else None
            row[f"d_{tag}"] = _delta(s, o, "sample", boot)
            row[f"dg_{tag}"] = _delta(s, o, "greedy", boot)
        rows.append(row)
    return rows


def head_to_head(scores: Scores, pairs: Sequence[tuple[str, str]] = HEAD_TO_HEAD,
                 boot: Boot = Boot()) -> list[dict[str, Any]]:
    """Paired deltas for the named pairs (EAPO vs GRPO vs top20 by default); pairs with an absent model are skipped."""
    rows = []
    for a, b in pairs:
        if a not in scores or b not in scores:
            continue
        sa, sb = _seeded(scores[a]), _seeded(scores[b])
        rows.append({"a": a, "b": b, "avg": _delta(sa, sb, "sample", boot), "greedy": _delta(sa, sb, "greedy", boot)})
    return rows


def per_seed_rows(scores: Scores) -> list[dict[str, Any]]:
    """Per model: avg@k and greedy accuracy of each seed, their mean and standard deviation over seeds."""
    rows = []
    for name, s in scores.items():
        seeded = _seeded(s)
        acc = {k: float(m.sample.mean()) for k, m in seeded.items()}
        vals = np.array(list(acc.values()))
        greedy = _mean(seeded, "greedy")
        rows.append({"model": name, "seeds": acc, "mean": float(vals.mean()),
                     "sd": float(vals.std(ddof=1)) if vals.size > 1 else None, "greedy_mean": greedy})
    return rows


def accuracy_rows(scores: Scores, boot: Boot = Boot()) -> list[dict[str, Any]]:
    """Per model: avg@k with a (hierarchical, non-paired) bootstrap interval over seeds and prompts, and greedy
    accuracy: `accuracy.csv`."""
    rows = []
    for name, s in scores.items():
        seeded = _seeded(s)
        part = _part(seeded, "sample")
        r = hierarchical_bootstrap(_matrix(part, _check_prompts([part])), boot.n_boot, boot.seed, boot.ci)
        rows.append({"variant": name, "acc": r.est, "lo": r.lo, "hi": r.hi, "greedy": _mean(seeded, "greedy")})
    return rows


def sharpening(scores: Scores, boot: Boot = Boot(), base: str = BASE) -> list[dict[str, Any]]:
    """Per variant vs `base`: Δ avg@k, Δ greedy and Δ pass@K (K = samples per prompt, the largest the data allows).

    `sharpening`: avg@k up beyond noise while greedy and pass@K are not (the sampled policy moves toward what it could
    already do); `more than sharpening`: greedy or pass@K up too (it solves prompts it could not); `no detectable
    gain` / `worse` otherwise."""
    if base not in scores:
        return []
    b = _seeded(scores[base])
    rows = []
    for name, s in scores.items():
        if name == base:
            continue
        a = _seeded(s)
        d_avg, d_g, d_pk = (_delta(a, b, kind, boot) for kind in ("sample", "greedy", "passk"))
        others = [d for d in (d_g, d_pk) if d is not None]
        if d_avg["label"] == "worse":
            label = "worse"
        elif d_avg["label"] != "better":
            label = "no detectable gain"
        elif any(d["label"] == "better" for d in others):
            label = "more than sharpening"
        else:
            label = "sharpening"
        rows.append({"variant": name, "d_avg": d_avg, "d_greedy": d_g, "d_passk": d_pk, "label": label})
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


def _frames(x: pd.DataFrame | Mapping[int, pd.DataFrame]) -> dict[int, pd.DataFrame]:
    return {0: x} if isinstance(x, pd.DataFrame) else dict(sorted(x.items()))


def seed_mean_steps(steps: Mapping[str, pd.DataFrame | Mapping[int, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Per variant: the per-step mean over its seeds of every numeric column (one seed: that seed's table)."""
    out = {}
    for variant, x in steps.items():
        frames = list(_frames(x).values())
        if len(frames) == 1:
            out[variant] = frames[0]
            continue
        num = [c for c in frames[0].columns if c != "step" and pd.api.types.is_numeric_dtype(frames[0][c])]
        out[variant] = pd.concat(frames)[["step", *num]].groupby("step", as_index=False).mean()
    return out


def all_seed_steps(steps: Mapping[str, pd.DataFrame | Mapping[int, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Per variant: the steps of all its seeds in one table (for sums and means over every step of every seed)."""
    return {v: pd.concat(list(_frames(x).values()), ignore_index=True) for v, x in steps.items()}


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
    ent, val = (cmi[c].to_numpy(np.float64) for c in ("entropy", "cmi"))
    out: dict[str, Any] = {"positions": len(cmi), "point_bound_share": float(np.mean(val <= ent + 1e-6)), "tau": tau}
    if "cmi_lo" in cmi:
        out["bound_holds_share"] = float(np.mean(cmi["cmi_lo"].to_numpy(np.float64) <= ent + 1e-6))
    if "p_mean" in cmi:
        out["informative_positions"] = int(np.sum((cmi["p_mean"] > 0) & (cmi["p_mean"] < 1)))
    if tau is not None:
        high, low = ent >= tau, ent < tau
        out["mean_cmi_high"] = float(val[high].mean()) if high.any() else None
        out["mean_cmi_low"] = float(val[low].mean()) if low.any() else None
        out["n_high"], out["n_low"] = int(high.sum()), int(low.sum())
    out["corr_cmi_entropy"] = (float(np.corrcoef(ent, val)[0, 1])
                               if len(ent) >= 3 and np.std(ent) > 0 and np.std(val) > 0 else None)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Claims: the paper's predictions, one by one
# --------------------------------------------------------------------------------------------------------------------

CLAIMS = (
    ("C1", "dropping pos_high costs more test accuracy than dropping pos_low",
     "avg@k(drop_pos_low) − avg@k(drop_pos_high)"),
    ("C2", "dropping neg_high costs more test accuracy than dropping neg_low",
     "avg@k(drop_neg_low) − avg@k(drop_neg_high)"),
    ("C3", "high-entropy tokens receive a larger share of GRPO's gradient than their token share",
     "GRPO gradient share − token share of the high-entropy quadrants, per training step"),
    ("C4", "CMI is larger at high-entropy positions (H ≥ τ) than at low-entropy ones",
     "mean CMI(H ≥ τ) − mean CMI(H < τ) over the annotate probe's positions"),
    ("C5a", "EAPO ≥ GRPO in test accuracy", "avg@k(eapo) − avg@k(grpo)"),
    ("C5b", "EAPO ≥ the best entropy baseline in the study", "avg@k(eapo) − avg@k(best of {baselines})"),
)


def _claim(cid: str, **kw: Any) -> dict[str, Any]:
    statement, measure = next((st, me) for c, st, me in CLAIMS if c == cid)
    row = {"id": cid, "statement": statement, "measure": measure, "estimate": None, "lo": None, "hi": None,
           "se": None, "p": None, "p_holm": None, "verdict": NOT_RUN, "mde": None, "seeds": None, "units": None,
           "note": ""}
    row.update(kw)
    return row


def _from_delta(cid: str, d: Mapping[str, Any], **kw: Any) -> dict[str, Any]:
    return _claim(cid, estimate=d["est"], lo=d["lo"], hi=d["hi"], se=d["se"], p=d["p"], seeds=d["seeds"],
                  units=d["prompts"], verdict=None, **kw)


def _from_boot(cid: str, r: Any, **kw: Any) -> dict[str, Any]:
    return _claim(cid, estimate=r.est, lo=r.lo, hi=r.hi, se=r.se, p=r.p, seeds=r.seeds, units=r.units, verdict=None,
                  **kw)


def grad_share_excess(steps: pd.DataFrame) -> np.ndarray:
    """Per training step: GRPO's gradient share of the high-entropy quadrants minus their token share (tokens with a
    non-zero advantage, as the steps table counts them). NaN where a step had no such token."""
    counts = steps[[f"count_{q}" for q in QUADRANTS]].to_numpy(np.float64)
    total = counts.sum(axis=1)
    high = [i for i, q in enumerate(QUADRANTS) if q.endswith("_high")]
    with np.errstate(invalid="ignore", divide="ignore"):
        token_share = np.where(total > 0, counts[:, high].sum(axis=1) / total, np.nan)
    grad = steps[[f"grad_share_{QUADRANTS[i]}" for i in high]].to_numpy(np.float64).sum(axis=1)
    # The shares are stored as float32: round off their ~1e-8 representation error, or an exact tie (gradient share =
    # token share) would read as a "significant" difference of 1e-9.
    return np.round(grad - token_share, 6)


def claims(scores: Scores, steps: Mapping[str, pd.DataFrame | Mapping[int, pd.DataFrame]], cmi: pd.DataFrame | None,
           tau: float | None, boot: Boot = Boot()) -> list[dict[str, Any]]:
    """The family of claims (`CLAIMS`), each {id, statement, estimate, lo, hi, p, p_holm, verdict, mde, seeds, ...}.

    Every prediction is "estimate > 0". A claim whose variants (or data) are absent is `not run` and stays out of the
    Holm family. Holm adjusts the tested claims' p-values at family-wise level alpha = 1 - ci; the MDE uses alpha / m
    and power 0.8 (see `eapo.study_stats`). C3 uses GRPO's steps tables (seeds x steps, the unweighted
    `grad_share_*` columns); C4 the annotate CMI probe (one run: positions, no seed level)."""
    seeded = {m: _seeded(s) for m, s in scores.items()}
    out: list[dict[str, Any]] = []
    for cid, hi_v, lo_v in (("C1", "drop_pos_high", "drop_pos_low"), ("C2", "drop_neg_high", "drop_neg_low")):
        if hi_v in seeded and lo_v in seeded:
            out.append(_from_delta(cid, _delta(seeded[lo_v], seeded[hi_v], "sample", boot)))
        else:
            out.append(_claim(cid, note=f"needs {hi_v} and {lo_v} in study.variants"))

    if REFERENCE in steps:
        frames = _frames(steps[REFERENCE])
        rows = [grad_share_excess(f.sort_values("step")) for f in frames.values()]
        width = max(len(r) for r in rows)
        mat = np.full((len(rows), width), np.nan)
        for i, r in enumerate(rows):
            mat[i, : len(r)] = r
        try:
            out.append(_from_boot("C3", hierarchical_bootstrap(mat, boot.n_boot, boot.seed, boot.ci)))
        except ValueError as exc:  # e.g. no step with a non-zero advantage
            out.append(_claim("C3", verdict=None, seeds=len(rows), units=width, note=f"no estimate: {exc}"))
    else:
        out.append(_claim("C3", note="needs grpo in study.variants"))

    if cmi is None or len(cmi) == 0 or tau is None:
        out.append(_claim("C4", note="no CMI probe (or no τ)"))
    else:
        ent, val = cmi["entropy"].to_numpy(np.float64), cmi["cmi"].to_numpy(np.float64)
        high, low = val[ent >= tau], val[ent < tau]
        if min(high.size, low.size) < 2:
            out.append(_claim("C4", verdict=None, units=int(ent.size),
                              note=f"too few probed positions: {high.size} with H ≥ τ, {low.size} below"))
        else:
            out.append(_from_boot("C4", two_sample_bootstrap(high, low, boot.n_boot, boot.seed, boot.ci),
                                  note=f"{high.size} positions with H ≥ τ, {low.size} below"))

    if "eapo" in seeded and REFERENCE in seeded:
        out.append(_from_delta("C5a", _delta(seeded["eapo"], seeded[REFERENCE], "sample", boot)))
    else:
        out.append(_claim("C5a", note="needs eapo and grpo in study.variants"))
    present = [b for b in ENTROPY_BASELINES if b in seeded]
    if "eapo" in seeded and present:
        best = max(present, key=lambda v: _mean(seeded[v], "sample"))
        out.append(_from_delta("C5b", _delta(seeded["eapo"], seeded[best], "sample", boot),
                               note=f"best baseline by mean avg@k: {best} (of {', '.join(present)}); picked on the "
                                    "same data, so the test is optimistic for the baseline's side"))
    else:
        out.append(_claim("C5b", note=f"needs eapo and one of {', '.join(ENTROPY_BASELINES)} in study.variants"))
    for c in out:
        c["statement"] = c["statement"].replace("{baselines}", ", ".join(present) or "none")
        c["measure"] = c["measure"].replace("{baselines}", ", ".join(present) or "none")

    alpha = 1.0 - boot.ci
    adjusted = holm([c["p"] for c in out])
    m = sum(p is not None for p in adjusted)
    for c, ph in zip(out, adjusted):
        c["p_holm"] = ph
        if c["verdict"] is None:
            c["verdict"] = verdict(c["estimate"], ph, alpha)
        if c["se"] is not None:
            c["mde"] = mde(c["se"], alpha, max(m, 1))
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
    samples: dict[str, pd.DataFrame | dict[int, pd.DataFrame]]
    """Model name ("base" and each variant) -> its `samples` table, or study seed -> table for a seeded variant."""
    metrics: dict[str, dict[str, Any]]
    """Model name -> its metrics JSON ({dataset: {metric: value}}) (the first seed's, for the per-dataset table)."""
    steps: dict[str, pd.DataFrame | dict[int, pd.DataFrame]]
    """Variant -> its `steps` table, or study seed -> table."""
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
    per_seed: list[dict[str, Any]]
    sharpening: list[dict[str, Any]]
    claims: list[dict[str, Any]]
    summary: dict[str, Any]
    """`summary.json` (a DVC metric): per model a flat-numeric dict, plus `seeds` (per-model seed count, the minimum
    over the trained variants) and `claims` (id, statement, estimate, lo, hi, p_holm, verdict, mde, seeds)."""


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}f}"
    return str(v)


def _pct(v: Any) -> str:
    return "?" if v is None else f"{float(v):.0%}"


def _fmt_delta(d: Mapping[str, Any] | None) -> str:
    if d is None:
        return "–"
    return f"{d['est']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] {d['label']}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_f(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def seed_note(seeds: int, ci: float) -> str:
    if seeds <= 1:
        return (f"Δ: mean per-prompt difference [{ci:.0%} paired bootstrap interval over prompts]. **One training "
                "seed per variant: the intervals resample test prompts only, so seed variance (the largest source of "
                "variance in RL) is not included.** Add seeds (`study.seeds`) before trusting a difference.")
    return (f"Δ: mean per-prompt difference over {seeds} training seeds [{ci:.0%} hierarchical paired bootstrap "
            "interval: seeds, then prompts within each seed, the same prompts for both models], so seed variance "
            "is included.")


def render_ablation(rows: Sequence[Mapping[str, Any]], k: int | None, ci: float, reference: str = REFERENCE) -> str:
    ak = f"avg@{k}" if k else "avg@k"
    header = ["model", ak, "greedy", f"Δ {ak} vs base", f"Δ {ak} vs {reference}", "Δ greedy vs base",
              f"Δ greedy vs {reference}"]
    body = [[r["model"], r["avg_acc"], r["greedy_acc"], _fmt_delta(r["d_base"]), _fmt_delta(r["d_ref"]),
             _fmt_delta(r["dg_base"]), _fmt_delta(r["dg_ref"])] for r in rows]
    seeds = max((r.get("seeds", 1) for r in rows), default=1)
    return md_table(header, body) + "\n\n" + seed_note(seeds, ci) + " An interval that contains 0 is *within noise*."


def render_claims(rows: Sequence[Mapping[str, Any]], ci: float) -> str:
    body = [[r["id"], r["statement"], r["estimate"], (f"[{r['lo']:+.3f}, {r['hi']:+.3f}]" if r["lo"] is not None
                                                      else "–"),
             r["p_holm"], f"**{r['verdict']}**", r["mde"], r["seeds"], r["units"], r["note"] or ""] for r in rows]
    tested = sum(r["p_holm"] is not None for r in rows)
    measures = "; ".join(f"{r['id']}: {r['measure']}" for r in rows)
    return (md_table(["claim", "statement", "estimate", f"{ci:.0%} interval", "p (Holm)", "verdict", "MDE", "seeds",
                      "units/seed", "note"], body)
            + f"\n\nEach prediction is *estimate > 0* ({measures}). "
            f"p: two-sided bootstrap p-value, Holm-adjusted over the {tested} tested claims; `supported` / "
            f"`contradicted` when p (Holm) < {1 - ci:.2f} with a positive / negative estimate, else `inconclusive`; "
            "`not run` when the study lacks the variants. MDE: the smallest true effect this study's size "
            "(seeds × units) detects with 80% power at the Bonferroni level; an inconclusive claim with "
            "|target| < MDE needs about (MDE / target)² times more data.")


def build_report(inputs: ReportInputs, *, boot: Boot = Boot(), reward_threshold: float = 0.5,
                 dataset: str = "test", base: str = BASE, reference: str = REFERENCE) -> Report:
    models = list(inputs.samples)
    frames = {m: _frames(inputs.samples[m]) for m in models}
    scores = {m: {sd: ModelScores.from_samples(df, dataset) for sd, df in fr.items()} for m, fr in frames.items()}
    ks = set()
    for fr in frames.values():
        for df in fr.values():
            ks.add(int(df[(df["mode"] == "sample") & (df["dataset"] == dataset)].groupby("prompt_id").size().iloc[0]))
    k = ks.pop() if len(ks) == 1 else None
    n_seeds = min((len(frames[m]) for m in models if m != base), default=1)
    ablation = ablation_table(scores, boot, base, reference)
    h2h = head_to_head(scores, boot=boot)
    acc = accuracy_rows(scores, boot)
    seeds_rows = per_seed_rows(scores)
    sharp = sharpening(scores, boot, base)
    tau = inputs.quadrant_stats.get("tau")
    claim_rows = claims(scores, inputs.steps, inputs.cmi, tau, boot)
    mean_steps = seed_mean_steps(inputs.steps)
    curves = curves_frame(mean_steps)
    eff = sample_efficiency(mean_steps, reward_threshold)
    quads = quadrant_rows(inputs.quadrant_stats)
    grads = variant_grad_shares(all_seed_steps(inputs.steps))
    cmi = cmi_summary(inputs.cmi, tau)
    ablation_md = render_ablation(ablation, k, boot.ci, reference)
    ak = f"avg@{k}" if k else "avg@k"

    first = next(iter(scores[models[0]].values()))
    md: list[str] = ["# EAPO study report", ""]
    md += [(f"Models: {', '.join(f'`{m}`' for m in models)}. Dataset `{dataset}`: {len(first.sample)} "
           f"prompts, k = {k if k else 'mixed'} samples per prompt plus one greedy decode; "
           f"{n_seeds} training seed(s) per variant."), ""]
    if n_seeds <= 1:
        md += ["> **One training seed per variant: every interval below resamples test prompts only and leaves out "
               "seed variance.** Read verdicts as provisional; `study.seeds: [0, 1, 2]` adds replicates.", ""]
    md += ["## Claims", "", render_claims(claim_rows, boot.ci), ""]
    md += ["## Four Quadrant ablation table", "", ablation_md, ""]

    md += [f"## Per-seed {ak}", ""]
    all_seeds = sorted({sd for r in seeds_rows for sd in r["seeds"]})
    md += [md_table(["model", *[f"seed {sd}" for sd in all_seeds], "mean", "sd over seeds", "greedy (mean)"],
                    [[r["model"], *[r["seeds"].get(sd) for sd in all_seeds], r["mean"], r["sd"], r["greedy_mean"]]
                     for r in seeds_rows]), "",
           f"`{base}` is the untrained policy: one evaluation, compared with every seed of each variant.", ""]

    md += ["## EAPO vs GRPO vs top20 (80/20)", ""]
    if h2h:
        md += [md_table(["comparison", f"Δ {ak}", "Δ greedy"],
                        [[f"{r['a']} − {r['b']}", _fmt_delta(r["avg"]), _fmt_delta(r["greedy"])] for r in h2h]), ""]
        for r in h2h:
            d = r["avg"]
            verdict_txt = (f"indistinguishable from `{r['b']}` (within noise)" if d["label"] == WITHIN_NOISE else
                           f"{'above' if d['est'] > 0 else 'below'} `{r['b']}` beyond the bootstrap noise")
            md.append(f"- `{r['a']}` is {verdict_txt}: Δ {ak} = {d['est']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}].")
        md.append("")
    else:
        md += ["_eapo, grpo and top20 are not all in the study: no head-to-head comparison._", ""]

    md += ["## Sharpening or new capability?", ""]
    if sharp:
        kk = f"pass@{k}" if k else "pass@K"
        md += [(f"Per variant vs `{base}`: Δ {ak} beside Δ greedy accuracy and Δ {kk} (unbiased, K = the samples per "
                f"prompt). *Sharpening*: {ak} up while greedy and {kk} stay flat: the sampled policy moves toward "
                "answers it could already reach. *More than sharpening*: greedy or the large-K pass@K rises too."), "",
               md_table(["variant", f"Δ {ak}", "Δ greedy", f"Δ {kk}", "reading"],
                        [[r["variant"], _fmt_delta(r["d_avg"]), _fmt_delta(r["d_greedy"]), _fmt_delta(r["d_passk"]),
                          f"**{r['label']}**"] for r in sharp]), ""]
    else:
        md += [f"_no `{base}` model: nothing to compare with._", ""]

    other = [ds for ds in next(iter(inputs.metrics.values()), {}) if ds != dataset] if inputs.metrics else []
    if inputs.metrics:
        md += ["## Metrics per dataset (first seed)", ""]
        keys = ["greedy_acc", f"avg@{k}" if k else None, "pass@1", f"pass@{k}" if k else None, "mean_length",
                "mean_entropy", "extraction_rate"]
        keys = [c for c in dict.fromkeys(keys) if c]
        body = [[m, ds, *[inputs.metrics[m].get(ds, {}).get(c) for c in keys]]
                for ds in [dataset, *other] for m in models if m in inputs.metrics]
        md += [md_table(["model", "dataset", *keys], body), ""]

    md += ["## Sample efficiency (training curves)", "",
           (f"reward AUC = time-average of the training reward (trapezoid, normalised by the step span); "
           f"threshold = {reward_threshold}. With several seeds: of the per-step mean over seeds."), ""]
    md += [md_table(["variant", "steps", "reward AUC", "steps to threshold", "reward start → end",
                     "entropy start → end", "entropy end/start"],
                    [[r["variant"], r["steps"], r["reward_auc"],
                      "never" if r["steps_to_threshold"] is None else int(r["steps_to_threshold"]),
                      f"{r['reward_start']:.3f} → {r['reward_end']:.3f}",
                      f"{r['entropy_start']:.3f} → {r['entropy_end']:.3f}", r["entropy_ratio"]] for r in eff]), ""]
    md += ["Plots: `reward_curves.png`, `entropy_curves.png`, `accuracy.png`, `quadrant_shares.png`.", ""]

    md += ["## Four Quadrant Decomposition (base policy rollouts, annotate)", "",
           (f"τ = {_f(tau, 4)} nats (top {_pct(inputs.quadrant_stats.get('rho'))} of "
           f"{inputs.quadrant_stats.get('tokens', '?')} response tokens)."), ""]
    md += [md_table(["quadrant", "tokens", "token share", "GRPO gradient share", "mean H", "mean abs(A)"],
                    [[q["quadrant"], q["count"], q["token_share"], q["grad_share"], q["mean_entropy"],
                      q["mean_abs_adv"]] for q in quads]), ""]
    if grads:
        md += ["Per variant, over all training steps of all seeds: token share and *weighted* gradient share per "
               "quadrant.", ""]
        md += [md_table(["variant", *[f"tokens {q}" for q in QUADRANTS], *[f"grad {q}" for q in QUADRANTS]],
                        [[g["variant"], *[g[f"tokens_{q}"] for q in QUADRANTS],
                          *[g[f"grad_{q}"] for q in QUADRANTS]] for g in grads]), ""]

    md += ["## CMI vs entropy", ""]
    if cmi.get("positions"):
        lines = [f"- {cmi['positions']} probed positions"
                 + (f" ({cmi['informative_positions']} with mixed outcomes)." if "informative_positions" in cmi
                    else ".")]
        if "bound_holds_share" in cmi:
            lines.append(f"- CMI ≤ H within the interval (cmi_lo ≤ H) at **{cmi['bound_holds_share']:.0%}** of "
                         f"positions (point estimate ≤ H at {cmi['point_bound_share']:.0%}).")
        else:
            lines.append(f"- point estimate CMI ≤ H at {cmi['point_bound_share']:.0%} of positions.")
        lines += [(f"- mean CMI at high entropy (H ≥ τ, n = {cmi.get('n_high', 0)}): "
                   f"{_f(cmi.get('mean_cmi_high'), 4)} nats; at low entropy (n = {cmi.get('n_low', 0)}): "
                   f"{_f(cmi.get('mean_cmi_low'), 4)} nats (claim C4 tests the difference)."),
                  f"- correlation(CMI, H): {_f(cmi.get('corr_cmi_entropy'))}.", ""]
        md += lines
    else:
        md += ["_no CMI probe positions._", ""]

    md += ["## Lineage", ""]
    lin = lineage_rows(inputs.lineages)
    md += [md_table(["input", "stage", "params hash", "code", "data sha256", "model", "created"],
                    [[r["input"], r["stage"], r["params_hash"], r["code"], r["data_sha256"], r["model"],
                      r["created_at"]]
                     for r in lin]) if lin else "_no lineage records._", ""]

    summary: dict[str, Any] = {}
    eff_by = {r["variant"]: r for r in eff}
    seeds_by = {r["model"]: r for r in seeds_rows}
    for r in ablation:
        s = {"avg_acc": r["avg_acc"], "seeds": r["seeds"]}
        if r["greedy_acc"] is not None:
            s["greedy_acc"] = r["greedy_acc"]
        if seeds_by[r["model"]]["sd"] is not None:
            s["avg_acc_sd_over_seeds"] = seeds_by[r["model"]]["sd"]
        for tag, key in (("d_base", "delta_vs_base"), ("d_ref", f"delta_vs_{reference}")):
            if r[tag] is not None:
                s[key], s[f"{key}_lo"], s[f"{key}_hi"] = r[tag]["est"], r[tag]["lo"], r[tag]["hi"]
        e = eff_by.get(r["model"])
        if e:
            s.update({k2: e[k2] for k2 in ("reward_auc", "reward_end", "entropy_end", "steps_to_threshold")
                      if e[k2] is not None})
        summary[r["model"]] = s
    summary["seeds"] = n_seeds
    summary["claims"] = [{key: c[key] for key in ("id", "statement", "estimate", "lo", "hi", "p_holm", "verdict",
                                                   "mde", "seeds")} for c in claim_rows]
    return Report(markdown="\n".join(md), ablation_md=ablation_md, ablation=ablation, head_to_head=h2h,
                  accuracy=acc, curves=curves, efficiency=eff, quadrants=quads, grad_shares=grads, cmi=cmi,
                  per_seed=seeds_rows, sharpening=sharp, claims=claim_rows, summary=summary)
