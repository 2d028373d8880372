"""Stage `report`: paired bootstrap labels on synthetic data, and the whole report from fixture artifacts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from eapo.contracts import QUADRANTS, STEP_COLUMNS
from eapo.report import (
    WITHIN_NOISE,
    Boot,
    ModelScores,
    ablation_table,
    cmi_summary,
    curves_frame,
    head_to_head,
    noise_label,
    paired_delta,
    sample_efficiency,
)
from tests.conftest import ROOT

torch.set_num_threads(1)
BOOT = Boot(n_boot=1000, ci=0.95, seed=0)


def _series(values, prefix="p"):
    return pd.Series(np.asarray(values, dtype=float), index=[f"{prefix}{i:03d}" for i in range(len(values))])


def test_paired_bootstrap_detects_true_difference_and_labels_null_within_noise():
    rng = np.random.default_rng(0)
    P, k = 120, 4
    base = rng.uniform(0.1, 0.7, P)
    a = _series(rng.binomial(k, base) / k)
    better = _series(rng.binomial(k, np.clip(base + 0.25, 0, 1)) / k)
    same_dist = _series(rng.binomial(k, base) / k)

    d = paired_delta(better, a, BOOT)
    assert d["label"] == "better" and d["lo"] > 0 and 0.15 < d["est"] < 0.35 and d["prompts"] == P
    assert paired_delta(a, better, BOOT)["label"] == "worse"
    null = paired_delta(same_dist, a, BOOT)
    assert null["lo"] <= 0 <= null["hi"] and null["label"] == WITHIN_NOISE
    same = paired_delta(a, a, BOOT)
    assert {k: same[k] for k in ("est", "lo", "hi", "label", "prompts", "seeds")} == {
        "est": 0.0, "lo": 0.0, "hi": 0.0, "label": WITHIN_NOISE, "prompts": P, "seeds": 1}
    assert noise_label(-0.1, 0.2) == WITHIN_NOISE and noise_label(0.01, 0.2) == "better"

    # Pairing matters: a shared prompt-difficulty term cancels, so a small true shift is detected when paired.
    diff = rng.uniform(0, 1, 400)
    x, y = _series(diff + 0.03 + rng.normal(0, 0.01, 400)), _series(diff)
    assert paired_delta(x, y, BOOT)["label"] == "better"

    with pytest.raises(ValueError, match="different prompt sets"):
        paired_delta(a, _series(a.to_numpy(), prefix="q"), BOOT)

    scores = {"base": ModelScores(a, a), "grpo": ModelScores(same_dist, a), "eapo": ModelScores(better, better)}
    rows = {r["model"]: r for r in ablation_table(scores, BOOT)}
    assert rows["base"]["d_base"] is None and rows["grpo"]["d_ref"] is None
    assert rows["grpo"]["d_base"]["label"] == WITHIN_NOISE and rows["grpo"]["dg_base"]["est"] == 0.0
    assert rows["eapo"]["d_base"]["label"] == "better" and rows["eapo"]["d_ref"]["label"] == "better"
    h2h = head_to_head(scores, boot=BOOT)
    assert [(r["a"], r["b"]) for r in h2h] == [("eapo", "grpo")]  # top20 is absent: its pairs are skipped


def test_efficiency_and_cmi_summary():
    steps = {"fast": pd.DataFrame({"step": [0, 1, 2, 3], "reward_mean": [0.2, 0.6, 0.8, 0.9],
                                   "entropy_mean": [2.0, 1.5, 1.0, 0.5], "response_length": [10, 9, 8, 7]}),
             "slow": pd.DataFrame({"step": [0, 1, 2, 3], "reward_mean": [0.2, 0.2, 0.3, 0.4],
                                   "entropy_mean": [2.0, 2.0, 2.0, 2.0], "response_length": [10, 10, 10, 10]})}
    eff = {r["variant"]: r for r in sample_efficiency(steps, 0.5)}
    assert eff["fast"]["steps_to_threshold"] == 1 and eff["slow"]["steps_to_threshold"] is None
    assert eff["fast"]["reward_auc"] == pytest.approx((0.4 + 0.7 + 0.85) / 3)
    assert eff["fast"]["entropy_start"] == 2.0 and eff["fast"]["entropy_end"] == 0.5
    assert eff["fast"]["entropy_ratio"] == pytest.approx(0.25)
    cur = curves_frame(steps)
    assert list(cur.columns) == ["step", "variant", "reward_mean", "entropy_mean", "response_length"]
    assert len(cur) == 8
    cmi = pd.DataFrame({"entropy": [0.1, 0.2, 2.0, 3.0], "cmi": [0.12, 0.3, 0.4, 0.2], "cmi_lo": [0.0, 0.25, 0.3, 0.1],
                        "cmi_hi": [0.1, 0.4, 0.5, 0.3], "p_mean": [0.0, 0.5, 0.5, 1.0]})
    s = cmi_summary(cmi, tau=1.0)
    assert s["positions"] == 4 and s["bound_holds_share"] == 0.75 and s["point_bound_share"] == 0.5
    assert s["mean_cmi_high"] == pytest.approx(0.3) and s["mean_cmi_low"] == pytest.approx(0.21)
    assert s["informative_positions"] == 2


# --------------------------------------------------------------------------------------------------------------------
# The whole stage from fixture files
# --------------------------------------------------------------------------------------------------------------------

VARIANTS = ["grpo", "top20", "eapo"]


def _samples_rows(model: str, per_prompt_p: np.ndarray, k: int, rng) -> list[dict]:
    rows = []
    for i, p in enumerate(per_prompt_p):
        pid = f"syn-{i:03d}"
        for j in range(-1, k):
            r = float(rng.random() < p)
            rows.append({"model": model, "dataset": "test", "prompt_id": pid, "sample_idx": j,
                         "mode": "greedy" if j < 0 else "sample", "response": "42", "answer": "42",
                         "extracted": "42", "extract_method": "last_number", "reward": r, "n_tokens": 3,
                         "entropy_mean": 1.0, "finish_reason": "eos", "reward_failure": None})
    return rows


def _steps_rows(variant: str, rewards, entropies) -> list[dict]:
    rows = []
    for s, (r, h) in enumerate(zip(rewards, entropies)):
        row = {name: 0 for name, _ in STEP_COLUMNS}
        row.update(step=s, variant=variant, reward_mean=r, accuracy=r, entropy_mean=h, response_length=10.0,
                   loss=0.1, clip_frac=0.0, approx_kl=0.0, grad_norm=1.0, lr=1e-5, tau=2.0, tokens=100,
                   mixed_groups=0.5)
        for q, c in zip(QUADRANTS, (10, 30, 20, 40)):
            row[f"count_{q}"] = c
            row[f"grad_share_{q}"] = c / 100
            row[f"weighted_grad_share_{q}"] = c / 100
        rows.append(row)
    return rows


def _write_fixtures(tmp_path, rng):
    from eapo.contracts import write_artifact
    from eapo.evaluation import compute_metrics
    from eapo.lineage import make_lineage, write_json_artifact

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in list(raw["paths"]):
        raw["paths"][key] = str(tmp_path / raw["paths"][key].replace("data/", ""))
    raw["study"]["variants"] = VARIANTS
    raw["report"].update(bootstrap=500, reward_threshold=0.5)
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(raw))
    paths = raw["paths"]

    P, k = 60, 4
    base_p = rng.uniform(0.1, 0.6, P)
    probs = {"base": base_p, "grpo": base_p, "top20": base_p, "eapo": np.ones(P)}
    base_rows = _samples_rows("base", base_p, k, rng)
    for name, p in probs.items():
        # grpo: the very same samples as base (a null difference by construction); top20: fresh draws, same p.
        rows = [{**r, "model": name} for r in base_rows] if name in ("base", "grpo") else _samples_rows(name, p, k, rng)
        lin = make_lineage("evaluate", {"evaluate": raw["evaluate"]}, extra={"model_name": name})
        where = name if name == "base" else f"{name}/seed0"
        write_artifact(rows, tmp_path / f"evaluate/{where}/samples.parquet", "samples", lin)
        write_json_artifact(tmp_path / f"metrics/{where}.json", compute_metrics(pd.DataFrame(rows)), lin)
    curves = {"grpo": ([0.2, 0.3, 0.5, 0.6], [2.0, 1.6, 1.2, 1.0]),
              "top20": ([0.2, 0.3, 0.4, 0.45], [2.0, 1.9, 1.8, 1.8]),
              "eapo": ([0.2, 0.6, 0.8, 0.9], [2.0, 1.8, 1.7, 1.6])}
    for v, (r, h) in curves.items():
        write_artifact(_steps_rows(v, r, h), tmp_path / f"train/{v}/seed0/steps.parquet", "steps",
                       make_lineage("train", {"variants": {v: raw["variants"][v]}}))
    ann = make_lineage("annotate", {"annotate": raw["annotate"]}, extra={"tau": 2.0})
    stats = {"tau": 2.0, "rho": 0.2, "tokens": 100, "responses": 8,
             "quadrants": {q: {"count": c, "share": c / 100, "mean_entropy": 1.0, "mean_abs_adv": 1.0,
                               "mean_weight": 1.0, "grad_mass": c, "grad_share": c / 100}
                           for q, c in zip(QUADRANTS, (10, 30, 20, 40))}}
    write_json_artifact(paths["quadrant_stats"], stats, ann)
    write_artifact([{"prompt_id": "a", "sample_idx": 0, "position": i, "entropy": e, "entropy_decile": i,
                     "cmi": c, "cmi_lo": c - 0.05, "cmi_hi": c + 0.05, "p_mean": 0.5, "k": 4, "m": 4,
                     "bound_holds": True, "cmi_plugin": c, "estimator": "jackknife", "high": e >= 2.0}
                    for i, (e, c) in enumerate([(0.5, 0.1), (1.0, 0.2), (3.0, 0.4), (4.0, 0.5)])],
                   paths["cmi"], "cmi", ann)
    return params_path, raw


def test_report_flow_from_fixture_files(prefect_api, tmp_path):
    from flows.report import report_flow

    params_path, _raw = _write_fixtures(tmp_path, np.random.default_rng(1))
    out = report_flow(params_path=str(params_path))
    rdir = tmp_path / "report"
    md = (rdir / "report.md").read_text()

    for png in ("reward_curves.png", "entropy_curves.png", "accuracy.png", "quadrant_shares.png"):
        assert (rdir / png).stat().st_size > 1000, png
    curves = pd.read_csv(rdir / "curves.csv")
    assert list(curves.columns)[:4] == ["step", "variant", "reward_mean", "entropy_mean"] and len(curves) == 12
    acc = pd.read_csv(rdir / "accuracy.csv")
    assert list(acc.columns) == ["variant", "acc", "lo", "hi", "greedy"]
    assert list(acc.variant) == ["base", *VARIANTS] and (acc.lo <= acc.acc).all() and (acc.acc <= acc.hi).all()
    summary = json.loads((rdir / "summary.json").read_text())
    assert summary == out["summary"] and summary["eapo"]["avg_acc"] == 1.0
    assert (rdir / "summary.json.lineage.json").is_file() and (rdir / "report.md.lineage.json").is_file()

    # The ablation table: one row per model, deltas labelled.
    section = md.split("## Four Quadrant ablation table")[1].split("##")[0]
    table = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
             for line in section.splitlines() if line.startswith("| ") and not line.startswith("| model")}
    assert list(table) == ["base", *VARIANTS]
    assert "Δ avg@4 vs base" in section and "Δ avg@4 vs grpo" in section
    assert table["base"][3] == "–" and table["grpo"][4] == "–"
    assert table["grpo"][3] == "+0.000 [+0.000, +0.000] within noise"  # same samples as base
    assert table["eapo"][1] == "1.000" and table["eapo"][3].endswith("better") and table["eapo"][4].endswith("better")
    assert table["top20"][3].endswith(WITHIN_NOISE)  # the same per-prompt probabilities as base, fresh draws

    assert "## EAPO vs GRPO vs top20 (80/20)" in md
    assert "| eapo − grpo |" in md and "| eapo − top20 |" in md and "| top20 − grpo |" in md
    eff = md.split("## Sample efficiency")[1].split("##")[0]
    assert "| eapo | 4 |" in eff and "| top20 | 4 |" in eff and "never" in eff  # top20 never reaches 0.5
    assert "2.000 → 1.600" in eff
    assert "| pos_high | 10 | 0.100 | 0.100 |" in md
    assert "CMI ≤ H within the interval (cmi_lo ≤ H) at **100%**" in md
    assert "## Lineage" in md and "| samples:eapo@seed0 | evaluate |" in md and "| steps:grpo@seed0 | train |" in md
    # One seed: the report says seed variance is not in the intervals; the claims are in the summary.
    assert "seed variance (the largest source of variance in RL) is not included" in md
    assert summary["seeds"] == 1 and [c["id"] for c in summary["claims"]] == ["C1", "C2", "C3", "C4", "C5a", "C5b"]
    claims = {c["id"]: c for c in summary["claims"]}
    assert claims["C1"]["verdict"] == "not run" and claims["C1"]["p_holm"] is None  # no ablation variants here
    assert claims["C5a"]["verdict"] == "supported" and claims["C5a"]["estimate"] > 0  # eapo always right
    assert claims["C5b"]["verdict"] == "supported" and "top20" in md.split("## Claims")[1].split("##")[0]

    # A variant that was not trained: the error names the missing file.
    (tmp_path / "train/top20/seed0/steps.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"train/top20/seed0/steps\.parquet"):
        report_flow(params_path=str(params_path))
