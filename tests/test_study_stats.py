"""Seed-aware statistics (eapo.study_stats) and the report's claims and sharpening readings, on synthetic data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eapo.contracts import QUADRANTS
from eapo.core.stats import paired_bootstrap_diff
from eapo.report import Boot, ModelScores, claims, grad_share_excess, seeded_delta, sharpening
from eapo.study_stats import (
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_RUN,
    SUPPORTED,
    bootstrap_p_value,
    hierarchical_bootstrap,
    holm,
    mde,
    two_sample_bootstrap,
    verdict,
)

BOOT = Boot(n_boot=1000, ci=0.95, seed=0)


def _series(values, prefix="p"):
    return pd.Series(np.asarray(values, dtype=float), index=[f"{prefix}{i:03d}" for i in range(len(values))])


def test_hierarchical_bootstrap_with_one_seed_is_the_paired_bootstrap():
    rng = np.random.default_rng(3)
    a, b = rng.binomial(4, 0.6, 80) / 4, rng.binomial(4, 0.5, 80) / 4
    for seed in (0, 7):
        r = hierarchical_bootstrap((a - b)[None, :], n_boot=700, seed=seed, ci=0.9)
        assert (r.est, r.lo, r.hi) == paired_bootstrap_diff(a, b, n_boot=700, seed=seed, ci=0.9)
        assert r.seeds == 1 and r.units == 80
    # The report's seeded delta with one seed each is the same paired bootstrap.
    d = seeded_delta({0: _series(a)}, {0: _series(b)}, BOOT)
    assert (d["est"], d["lo"], d["hi"]) == paired_bootstrap_diff(a, b, n_boot=1000, seed=0, ci=0.95)


def test_hierarchical_bootstrap_includes_seed_variance():
    rng = np.random.default_rng(0)
    S, P = 4, 60
    prompt_noise = rng.normal(0, 0.3, (S, P))
    calm = 0.1 + prompt_noise                                     # seeds agree
    shifts = np.array([-0.4, 0.5, -0.3, 0.6])[:, None]            # seeds disagree by much more than prompts do
    wild = 0.1 + prompt_noise + shifts
    r_calm, r_wild = hierarchical_bootstrap(calm), hierarchical_bootstrap(wild)
    assert r_calm.lo > 0 and r_calm.seeds == S and r_calm.units == P
    assert r_wild.lo < 0 < r_wild.hi  # the same prompt-level data, but the seed spread makes it inconclusive
    assert (r_wild.hi - r_wild.lo) > 3 * (r_calm.hi - r_calm.lo)
    # A prompts-only bootstrap of the pooled data would have missed the seed spread.
    pooled = paired_bootstrap_diff(wild.reshape(-1), np.zeros(S * P))
    assert pooled[2] - pooled[1] < (r_wild.hi - r_wild.lo) / 2
    # Deterministic for a seed; NaN units are skipped, not propagated.
    assert hierarchical_bootstrap(wild) == hierarchical_bootstrap(wild)
    with_nan = wild.copy()
    with_nan[0, :5] = np.nan
    r = hierarchical_bootstrap(with_nan)
    assert np.isfinite([r.est, r.lo, r.hi]).all()
    with pytest.raises(ValueError, match="matrix"):
        hierarchical_bootstrap(np.zeros((0, 3)))


def test_seeded_delta_pairs_seeds_and_broadcasts_the_base():
    rng = np.random.default_rng(1)
    base = _series(rng.uniform(0, 1, 30))
    a = {s: _series(np.clip(base.to_numpy() + 0.2 + rng.normal(0, 0.05, 30), 0, 1)) for s in (0, 1, 2)}
    d = seeded_delta(a, {0: base}, BOOT)  # base has no seeds: compared with every seed of a
    expected = np.mean([(a[s] - base).mean() for s in a])
    assert d["seeds"] == 3 and d["est"] == pytest.approx(expected) and d["label"] == "better"
    with pytest.raises(ValueError, match="different seeds"):
        seeded_delta(a, {0: base, 5: base}, BOOT)
    with pytest.raises(ValueError, match="different prompt sets"):
        seeded_delta(a, {0: _series(base.to_numpy(), prefix="q")}, BOOT)


def test_holm_against_a_hand_computation():
    # sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.2 (x1 = 0.2); monotone step-down
    assert holm([0.03, 0.2, 0.01, 0.02]) == pytest.approx([0.06, 0.2, 0.04, 0.06])
    # Monotonicity: a later raw product below an earlier adjusted value takes the earlier one.
    assert holm([0.04, 0.045]) == pytest.approx([0.08, 0.08])
    # Untested claims (None) stay None and do not count in m.
    assert holm([0.01, None, 0.04]) == [pytest.approx(0.02), None, pytest.approx(0.04)]
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    with pytest.raises(ValueError):
        holm([1.5])


def test_mde_formula_and_bootstrap_p_value():
    # (z_{0.975} + z_{0.8}) * se = (1.959964 + 0.841621) * se
    assert mde(0.1) == pytest.approx(0.2801585, abs=1e-6)
    # Bonferroni level alpha/m for m = 5: z_{1 - 0.005} = 2.575829
    assert mde(0.1, alpha=0.05, m=5) == pytest.approx((2.5758293 + 0.8416212) * 0.1, abs=1e-6)
    assert mde(0.0) == 0.0
    with pytest.raises(ValueError):
        mde(-1.0)
    # p: twice the smaller tail share, +1 corrected.
    stats = np.array([-1.0, 1.0, 2.0, 3.0])
    assert bootstrap_p_value(stats) == pytest.approx(2 * (1 + 1) / 5)
    assert bootstrap_p_value(np.full(999, 0.5)) == pytest.approx(2 / 1000)
    r = two_sample_bootstrap(np.array([1.0, 1.2, 0.9, 1.1]), np.array([0.1, 0.0, 0.2, 0.1]), n_boot=500)
    assert r.est == pytest.approx(0.95) and r.lo > 0.5 and r.p < 0.01


def test_verdict_logic():
    assert verdict(0.1, 0.01) == SUPPORTED
    assert verdict(-0.1, 0.01) == CONTRADICTED
    assert verdict(0.1, 0.2) == INCONCLUSIVE and verdict(-0.1, 0.05) == INCONCLUSIVE  # p must be < alpha
    assert verdict(None, None) == INCONCLUSIVE and verdict(0.1, 0.04, alpha=0.01) == INCONCLUSIVE


def _scores(rng, p: np.ndarray, seeds=(0, 1, 2), k=4, shift=0.0) -> dict[int, ModelScores]:
    out = {}
    for s in seeds:
        pp = np.clip(p + shift, 0, 1)
        sample = _series(rng.binomial(k, pp) / k)
        out[s] = ModelScores(sample, _series(rng.binomial(1, pp).astype(float)),
                             _series(1 - (1 - pp) ** k))
    return out


def _steps(excess: float, n=6) -> pd.DataFrame:
    counts = {"pos_high": 10, "neg_high": 10, "pos_low": 40, "neg_low": 40}  # high token share 0.2
    grad_high = 0.2 + excess
    share = {"pos_high": grad_high / 2, "neg_high": grad_high / 2, "pos_low": (1 - grad_high) / 2,
             "neg_low": (1 - grad_high) / 2}
    rows = [{"step": t, **{f"count_{q}": counts[q] for q in QUADRANTS},
             **{f"grad_share_{q}": share[q] + 0.01 * ((t % 3) - 1) for q in QUADRANTS}} for t in range(n)]
    return pd.DataFrame(rows)


def test_claims_verdicts_not_run_and_holm_family():
    rng = np.random.default_rng(5)
    p = rng.uniform(0.2, 0.6, 100)
    scores = {"base": {0: _scores(rng, p, seeds=(0,))[0]},
              "grpo": _scores(rng, p, shift=0.2),
              "drop_pos_high": _scores(rng, p, shift=0.0),   # dropping pos_high loses the gain
              "drop_pos_low": _scores(rng, p, shift=0.2),
              "eapo": _scores(rng, p, shift=-0.15)}          # EAPO worse than GRPO: C5a contradicted
    steps = {"grpo": {s: _steps(0.15) for s in (0, 1, 2)}}
    cmi = pd.DataFrame({"entropy": [0.1, 0.2, 0.3, 0.4, 2.0, 2.5, 3.0, 3.5], "cmi": [0.01, 0.0, 0.02, 0.01,
                                                                                     0.01, 0.02, 0.0, 0.01],
                        "estimator": "jackknife"})  # extra columns are tolerated
    rows = {c["id"]: c for c in claims(scores, steps, cmi, tau=1.0, boot=BOOT)}
    assert list(rows) == ["C1", "C2", "C3", "C4", "C5a", "C5b"]
    assert rows["C1"]["verdict"] == SUPPORTED and rows["C1"]["estimate"] == pytest.approx(0.2, abs=0.05)
    assert rows["C1"]["seeds"] == 3 and rows["C1"]["units"] == 100
    assert rows["C2"]["verdict"] == NOT_RUN and rows["C2"]["p_holm"] is None and "drop_neg_high" in rows["C2"]["note"]
    assert rows["C3"]["verdict"] == SUPPORTED and rows["C3"]["estimate"] == pytest.approx(0.15)
    assert rows["C4"]["verdict"] == INCONCLUSIVE  # CMI flat in entropy
    assert rows["C4"]["mde"] > abs(rows["C4"]["estimate"])
    assert rows["C5a"]["verdict"] == CONTRADICTED and rows["C5a"]["estimate"] < 0
    assert rows["C5b"]["verdict"] == NOT_RUN  # no entropy baseline in the study
    tested = [c for c in rows.values() if c["p"] is not None]
    assert len(tested) == 4
    assert [c["p_holm"] for c in tested] == pytest.approx(holm([c["p"] for c in tested]))
    assert all(c["p_holm"] >= c["p"] for c in tested)
    # MDE at the Bonferroni level of the 4 tested claims, from each claim's bootstrap SE.
    assert rows["C1"]["mde"] == pytest.approx(mde(rows["C1"]["se"], 0.05, 4))
    # C5b picks the best baseline present, by mean avg@k.
    scores["top20"] = _scores(rng, p, shift=-0.1)
    scores["clip_cov"] = _scores(rng, p, shift=0.1)
    c5b = {c["id"]: c for c in claims(scores, steps, cmi, tau=1.0, boot=BOOT)}["C5b"]
    assert "clip_cov" in c5b["note"] and c5b["verdict"] == CONTRADICTED
    # Too few positions on one side of tau: inconclusive, not an error, and out of the Holm family.
    c4 = {c["id"]: c for c in claims(scores, steps, cmi, tau=10.0, boot=BOOT)}["C4"]
    assert c4["verdict"] == INCONCLUSIVE and c4["p_holm"] is None and "too few" in c4["note"]


def test_grad_share_excess_per_step():
    d = grad_share_excess(_steps(0.1, n=3))
    assert d == pytest.approx([0.1 - 0.02, 0.1, 0.1 + 0.02])
    # A tie stored as float32 (gradient share = token share) is a zero excess, not a 1e-9 "effect" a bootstrap
    # would call significant.
    tie = _steps(0.0, n=4)
    for q in QUADRANTS:
        tie[f"grad_share_{q}"] = (tie[f"count_{q}"] / 100).astype(np.float32)
    assert (grad_share_excess(tie) == 0).all()
    r = claims({}, {"grpo": tie}, None, None, BOOT)[2]
    assert r["id"] == "C3" and r["estimate"] == 0.0 and r["verdict"] == INCONCLUSIVE
    empty = _steps(0.1, n=1)
    for q in QUADRANTS:
        empty[f"count_{q}"] = 0
    assert np.isnan(grad_share_excess(empty)).all()


def test_sharpening_reading():
    rng = np.random.default_rng(2)
    P, k = 150, 4
    p = rng.uniform(0.1, 0.5, P)
    greedy_solved = (p > 0.3).astype(float)
    base = {0: ModelScores(_series(rng.binomial(k, p) / k), _series(greedy_solved), _series(1 - (1 - p) ** k))}
    # Sharpened: samples move to the greedy answer; greedy and pass@K unchanged.
    sharp = {s: ModelScores(_series(np.where(greedy_solved > 0, 1.0, rng.binomial(k, p) / k)), _series(greedy_solved),
                            base[0].passk.copy()) for s in (0, 1)}
    # New capability: greedy solves every prompt, pass@K rises.
    more = {s: ModelScores(_series(np.ones(P)), _series(np.ones(P)), _series(np.ones(P))) for s in (0, 1)}
    same = {s: ModelScores(base[0].sample.copy(), base[0].greedy.copy(), base[0].passk.copy()) for s in (0, 1)}
    rows = {r["variant"]: r for r in sharpening({"base": base, "sharp": sharp, "more": more, "same": same}, BOOT)}
    assert rows["sharp"]["label"] == "sharpening" and rows["sharp"]["d_avg"]["label"] == "better"
    assert rows["more"]["label"] == "more than sharpening"
    assert rows["same"]["label"] == "no detectable gain"
