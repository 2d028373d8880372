import math

import numpy as np
import pytest

from eapo.core.cmi import (
    CMI_ESTIMATORS,
    DEFAULT_ESTIMATOR,
    binary_entropy,
    bootstrap_cmi,
    cmi_estimate,
    cmi_from_counts,
    cmi_from_outcomes,
    stratified_mean_difference,
)


def test_binary_entropy_values():
    assert binary_entropy(0.0) == 0.0 and binary_entropy(1.0) == 0.0
    assert binary_entropy(0.5) == pytest.approx(math.log(2))
    assert binary_entropy(0.1) == pytest.approx(-(0.1 * math.log(0.1) + 0.9 * math.log(0.9)))
    arr = binary_entropy(np.array([0.0, 0.5, 1.0]))
    assert isinstance(arr, np.ndarray) and arr.tolist() == pytest.approx([0.0, math.log(2), 0.0])
    with pytest.raises(ValueError):
        binary_entropy(1.2)


# Toy: 4 tokens, uniform π, reward depends only on the chosen token with P(R=1 | y) = p[y].
P = np.array([0.1, 0.9, 0.5, 0.3])
PI = np.full(4, 0.25)


def _analytic_I(pi, p):
    def hb(x):
        return 0.0 if x in (0.0, 1.0) else -(x * math.log(x) + (1 - x) * math.log(1 - x))

    return hb(float(pi @ p)) - float(sum(w * hb(x) for w, x in zip(pi, p)))


def test_cmi_of_exact_p_equals_analytic_mutual_information():
    expected = _analytic_I(PI, P)
    assert expected > 0
    assert cmi_estimate(P) == pytest.approx(expected, abs=1e-12)
    # Data-processing bound: I(Y; R) ≤ H(Y) = log 4, and ≤ H(R) = H_b(mean p) ≤ log 2.
    assert expected <= math.log(4) and expected <= binary_entropy(P.mean()) + 1e-12


def test_cmi_limits():
    assert cmi_estimate([0.3, 0.3, 0.3]) == 0.0  # outcome independent of the token
    assert cmi_estimate([0.0, 1.0]) == pytest.approx(
        math.log(2)
    )  # token decides the outcome: I = H(Y) = log 2
    assert cmi_from_outcomes([[1, 1, 1, 1], [0, 0, 0, 0]], estimator="plugin") == pytest.approx(math.log(2))
    # The jackknife is mean-unbiased, not range-respecting: with K = 2 deterministic rows the pooled term's
    # delete-one-row jackknife is 2·H_b(1/2) − 1·(H_b(0) + H_b(1))/2 = 2 log 2, the rows contribute 0.
    assert cmi_from_outcomes([[1, 1, 1, 1], [0, 0, 0, 0]]) == pytest.approx(2 * math.log(2))


def test_bootstrap_from_simulated_outcomes_contains_analytic_value():
    # Draw K alternatives y ~ π (here non-uniform), then M continuations each with success prob p[y].
    rng = np.random.default_rng(1)
    pi = np.array([0.4, 0.3, 0.2, 0.1])
    truth = _analytic_I(pi, P)
    K, M = 200, 400
    ys = rng.choice(4, size=K, p=pi)
    outcomes = (rng.random((K, M)) < P[ys][:, None]).astype(np.int8)
    est, lo, hi = bootstrap_cmi(outcomes, n_boot=300, seed=0, ci=0.9)
    assert lo <= truth <= hi
    assert lo <= est <= hi
    assert hi - lo < 0.1  # informative, not vacuous
    assert est <= math.log(4)


def test_plug_in_bias_is_upward_at_the_null_and_can_be_downward_at_large_cmi():
    # Second order (module docstring): bias ≈ (1 − 1/K)/(2M) − Var_π(p)/(2K·p̄(1 − p̄)).
    rng = np.random.default_rng(0)
    K, M = 8, 8
    null = rng.binomial(M, 0.5, size=(20000, K)).astype(float)
    ests = CMI_ESTIMATORS["plugin"](null, M)
    assert ests.min() >= 0.0
    assert ests.mean() == pytest.approx((1 - 1 / K) / (2 * M), rel=0.25)  # upward at I = 0
    K, M = 4, 16
    p = np.where(rng.random((20000, K)) < 0.5, 0.2, 0.8)
    truth = binary_entropy(0.5) - binary_entropy(0.2)
    bias = CMI_ESTIMATORS["plugin"](rng.binomial(M, p).astype(float), M).mean() - truth
    assert bias < -0.01  # few alternatives, large CMI: the plug-in reads low
    assert bias == pytest.approx((1 - 1 / K) / (2 * M) - 0.09 / (2 * K * 0.25), abs=0.01)


def _simulated_counts(rng, p_of_alternative, K, M, n):
    """n probes: K alternatives drawn iid (as the probe draws them) with success probability p_of_alternative(u)
    for u ~ U(0, 1), then M Bernoulli continuations each. Returns counts [n, K]."""
    p = p_of_alternative(rng.random((n, K)))
    return rng.binomial(M, p).astype(float)


CALIBRATION = [
    ("null p=0.1", lambda u: np.full_like(u, 0.1), 0.0),
    ("null p=0.5", lambda u: np.full_like(u, 0.5), 0.0),
    ("half 0.2 / half 0.8", lambda u: np.where(u < 0.5, 0.2, 0.8),
     float(binary_entropy(0.5) - binary_entropy(0.2))),
]


@pytest.mark.parametrize("name, p_of, truth", CALIBRATION, ids=[c[0] for c in CALIBRATION])
def test_default_estimator_is_calibrated_at_k_m_8(name, p_of, truth):
    """Issue 10 §3: mean bias of the default estimator within ±0.015 nats at K = M = 8; the plug-in fails it."""
    assert DEFAULT_ESTIMATOR == "jackknife"
    rng = np.random.default_rng(12345)
    K = M = 8
    counts = _simulated_counts(rng, p_of, K, M, 40000)
    default = CMI_ESTIMATORS[DEFAULT_ESTIMATOR](counts, M)
    se = default.std() / np.sqrt(len(default))
    assert se < 0.001  # the check below is about bias, not Monte-Carlo noise
    assert abs(default.mean() - truth) <= 0.015, f"{name}: bias {default.mean() - truth:+.4f}"
    plugin_bias = CMI_ESTIMATORS["plugin"](counts, M).mean() - truth
    assert plugin_bias > 0.03  # what the default fixes
    # The default probe size (params.yaml annotate.cmi: K = 4, M = 8) is calibrated as well.
    small = CMI_ESTIMATORS[DEFAULT_ESTIMATOR](_simulated_counts(rng, p_of, 4, 8, 40000), 8)
    assert abs(small.mean() - truth) <= 0.015, f"{name}, K=4, M=8: bias {small.mean() - truth:+.4f}"
    # cmi_from_outcomes uses the default on an actual 0/1 matrix: same value as the count-based estimator.
    row = counts[0].astype(int)
    o = (np.arange(M)[None, :] < row[:, None]).astype(int)
    assert cmi_from_outcomes(o) == pytest.approx(float(default[0]))
    assert cmi_from_outcomes(o, estimator="plugin") == pytest.approx(cmi_estimate(row / M))


def test_jackknife_hand_computed():
    # K = 2, M = 2, counts [2, 0]: rows deterministic → row terms 0; pooled H_b(1/2) = log 2, deletes give H_b(0) and
    # H_b(1) = 0, so pooled JK = 2·log 2 − 1·0.
    assert cmi_from_counts([2, 0], 2) == pytest.approx(2 * math.log(2))
    # Counts [1, 1], M = 2: row term per row 2·log 2 − 1·(H_b(0) + H_b(1))/2 = 2 log 2; pooled: p̄ = 1/2 and deleting
    # either row leaves 1/2 → 2·log 2 − log 2 = log 2. CMI = log 2 − 2 log 2 = −log 2.
    assert cmi_from_counts([1, 1], 2) == pytest.approx(-math.log(2))
    # Miller–Madow: [1, 1], M = 2: pooled log 2 + 1/8, rows log 2 + 1/4 → −1/8.
    assert cmi_from_counts([1, 1], 2, "miller_madow") == pytest.approx(-1 / 8)
    with pytest.raises(ValueError, match="K >= 2"):
        cmi_from_counts([3], 4)  # one alternative: no delete-one-alternative jackknife
    with pytest.raises(ValueError, match="unknown CMI estimator"):
        cmi_from_counts([1, 2], 4, "nsb")
    assert cmi_from_counts([3], 4, "plugin") == 0.0


def test_bootstrap_bootstraps_the_corrected_estimator():
    rng = np.random.default_rng(7)
    o = (rng.random((8, 8)) < 0.5).astype(int)
    est, lo, hi = bootstrap_cmi(o, n_boot=400, seed=1)
    assert est == pytest.approx(cmi_from_outcomes(o))
    assert lo <= est <= hi
    pe, plo, phi = bootstrap_cmi(o, n_boot=400, seed=1, estimator="plugin")
    assert pe == pytest.approx(cmi_from_outcomes(o, estimator="plugin"))
    assert pe > est  # the plug-in reads higher at the null (truth 0) ...
    assert lo < 0.0 < hi and phi > hi  # ... the corrected interval covers 0 and sits lower


def test_bootstrap_interval_covers_the_truth_at_the_nominal_rate():
    # 90% intervals over 150 simulated probes at K = M = 8 (half 0.2 / half 0.8): measured 0.94 over 1500.
    rng = np.random.default_rng(3)
    truth = float(binary_entropy(0.5) - binary_entropy(0.2))
    hits = 0
    for i in range(150):
        p = np.where(rng.random(8) < 0.5, 0.2, 0.8)
        o = (rng.random((8, 8)) < p[:, None]).astype(int)
        _, lo, hi = bootstrap_cmi(o, n_boot=200, seed=i, ci=0.9)
        hits += lo <= truth <= hi
    assert hits / 150 >= 0.84


def test_stratified_mean_difference():
    # The low group's mean is not 0, so mean(high) - mean(low) is told apart from mean(high) + mean(low).
    d, lo, hi = stratified_mean_difference([0.3, 0.2, 0.25, 0.35], [0.1, 0.15, 0.05, 0.1], n_boot=500, seed=0)
    assert d == pytest.approx(0.175)
    assert 0 < lo <= d <= hi
    d0, lo0, hi0 = stratified_mean_difference([0.1, -0.1, 0.05], [0.0, 0.1, -0.05], n_boot=500, seed=0)
    assert lo0 < 0 < hi0


def test_stratified_mean_difference_interval_matches_the_normal_approximation():
    """Large groups: the percentile interval of the difference is close to d ± z·sqrt(s_h²/n_h + s_l²/n_l), with the
    two groups resampled separately (a different size and spread each) and both ends symmetric about d."""
    rng = np.random.default_rng(0)
    high, low = rng.normal(0.5, 0.2, 400), rng.normal(0.2, 0.1, 100)
    se = math.sqrt(high.var(ddof=1) / high.size + low.var(ddof=1) / low.size)
    for ci, z in ((0.9, 1.6449), (0.5, 0.6745)):
        d, lo, hi = stratified_mean_difference(high, low, n_boot=4000, seed=1, ci=ci)
        assert d == pytest.approx(high.mean() - low.mean(), abs=1e-12)
        assert (hi - lo) / 2 == pytest.approx(z * se, rel=0.08)
        assert (lo + hi) / 2 == pytest.approx(d, abs=0.1 * se)


def test_stratified_mean_difference_flattens_validates_and_is_seeded():
    # Constant groups: no spread, the interval is the point; one value per group is enough.
    assert stratified_mean_difference([0.5], [0.25], n_boot=1) == (0.25, 0.25, 0.25)
    assert stratified_mean_difference([[0.5, 0.5], [0.5, 0.5]], [0.25] * 3, n_boot=10) == (0.25, 0.25, 0.25)
    # Every position of each group can be drawn: the first one too.
    assert stratified_mean_difference([1.0, 0.0], [0.0], n_boot=200) == (0.5, 0.0, 1.0)
    assert stratified_mean_difference([0.0], [1.0, 0.0], n_boot=200) == (-0.5, -1.0, 0.0)
    grid = [[0.1, 0.4], [0.2, 0.9]]
    assert stratified_mean_difference(grid, [0.0, 0.3], n_boot=50) == \
        stratified_mean_difference([0.1, 0.4, 0.2, 0.9], [0.0, 0.3], n_boot=50)
    # The defaults (n_boot 2000, seed 0) make the interval reproducible; another seed moves it.
    h, lw = [0.3, 0.1, 0.5, 0.2, 0.9], [0.0, 0.2, 0.1, 0.4]
    assert stratified_mean_difference(h, lw) == stratified_mean_difference(h, lw, n_boot=2000, seed=0)
    assert stratified_mean_difference(h, lw, seed=3) == stratified_mean_difference(h, lw, seed=3)
    assert stratified_mean_difference(h, lw, seed=3) != stratified_mean_difference(h, lw, seed=4)
    assert stratified_mean_difference(h, lw, n_boot=2001) != stratified_mean_difference(h, lw)
    for high, low in (([], [0.1]), ([0.1], []), ([], [])):
        with pytest.raises(ValueError, match=r"^both groups need at least one value, got \d and \d$"):
            stratified_mean_difference(high, low)
    for ci, n_boot in ((0.0, 10), (1.0, 10), (1.5, 10), (0.9, 0), (-0.1, 10)):
        with pytest.raises(ValueError, match=r"^need ci in \(0, 1\) and n_boot >= 1, got "):
            stratified_mean_difference([0.1], [0.2], ci=ci, n_boot=n_boot)


def test_bootstrap_is_seeded_and_validates():
    o = (np.random.default_rng(3).random((6, 10)) < 0.5).astype(int)
    assert bootstrap_cmi(o, seed=5) == bootstrap_cmi(o, seed=5)
    with pytest.raises(ValueError):
        bootstrap_cmi(np.full((2, 2), 0.5))
    with pytest.raises(ValueError):
        cmi_from_outcomes(np.zeros((0, 3)))


def test_miller_madow_corrects_only_occupied_binary_bins_and_vectorises():
    """(occupied bins − 1)/(2n) per binary entropy: a count of 0 or of all n has one occupied bin, no correction."""
    mm = CMI_ESTIMATORS["miller_madow"]
    log2, hq = math.log(2), float(binary_entropy(0.25))
    cases = {
        (0, 0): 0.0,  # nothing occupied twice: no correction anywhere
        (2, 2): 0.0,  # all successes: the same
        (2, 0): log2 + 1 / 8,  # pooled 1/2 corrected (n = 4); rows deterministic
        (1, 0): hq + 1 / 8 - (log2 + 1 / 4) / 2,  # pooled 1/4 (total 1 counts); one row 1/2 corrected (m = 2)
        (1, 1): -1 / 8,
    }
    for counts, want in cases.items():
        assert float(mm(np.array(counts), 2)) == pytest.approx(want, abs=1e-12), counts
    # Vectorised over leading dimensions (bootstrap resamples): each row of counts is its own estimate.
    batch = np.array([list(c) for c in cases])
    assert mm(batch, 2).tolist() == pytest.approx(list(cases.values()), abs=1e-12)


def test_cmi_inputs_are_validated_with_their_shape_or_range():
    assert cmi_estimate([0.3]) == 0.0  # one alternative: valid, no information
    assert cmi_estimate([[0.2, 0.8]]) == cmi_estimate([0.2, 0.8])
    with pytest.raises(ValueError, match=r"^cmi_estimate needs at least one alternative$"):
        cmi_estimate([])
    # Outcomes: a non-empty [K, M] 0/1 matrix; one row or one column is enough for the plug-in estimator.
    assert cmi_from_outcomes([[1, 0, 1]], estimator="plugin") == 0.0
    assert cmi_from_outcomes([[1], [0]], estimator="plugin") == pytest.approx(math.log(2))
    for bad, shape in (([1, 0], r"\(2,\)"), (np.zeros((0, 3)), r"\(0, 3\)"), (np.zeros((2, 0)), r"\(2, 0\)"),
                       (np.zeros((1, 1, 1)), r"\(1, 1, 1\)")):
        with pytest.raises(ValueError, match=rf"^outcomes must be a non-empty \[K, M\] array, got shape {shape}$"):
            cmi_from_outcomes(bad, estimator="plugin")
    with pytest.raises(ValueError, match=r"^outcomes must be 0/1$"):
        cmi_from_outcomes([[1, 0.5], [0, 1]])
    # Counts: integers in [0, M], flattened.
    assert cmi_from_counts([[2, 0]], 2) == cmi_from_counts([2, 0], 2)
    assert cmi_from_counts([0, 2], 2, "plugin") == pytest.approx(math.log(2))
    for bad in ([], [-1, 2], [3, 0], [1.5, 0]):
        with pytest.raises(ValueError, match=r"^counts must be a non-empty list of integers in \[0, M=2\]$"):
            cmi_from_counts(bad, 2)


def test_bootstrap_cmi_defaults_validation_and_every_alternative_drawn():
    o = (np.random.default_rng(1).random((4, 6)) < 0.5).astype(int)
    assert bootstrap_cmi(o) == bootstrap_cmi(o, n_boot=200, seed=0, ci=0.9)
    assert bootstrap_cmi(o, n_boot=1)[0] == cmi_from_outcomes(o)
    for ci in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=rf"^ci must be in \(0, 1\), got {ci}$"):
            bootstrap_cmi(o, ci=ci)
    with pytest.raises(ValueError, match=r"^n_boot must be >= 1, got 0$"):
        bootstrap_cmi(o, n_boot=0)
    # Two alternatives, one always right and one always wrong: resamples that draw both see CMI log 2, those that
    # draw one twice see 0, so the interval has width; if the first alternative were never drawn it would be a point.
    est, lo, hi = bootstrap_cmi([[1, 1], [0, 0]], n_boot=400, estimator="plugin")
    assert est == pytest.approx(math.log(2)) and hi - lo > 0.1


def test_binary_entropy_refuses_non_probabilities_and_returns_a_float_for_a_scalar():
    assert type(binary_entropy(0.5)) is float and binary_entropy(0.5) == pytest.approx(math.log(2))
    assert type(binary_entropy(np.float64(0.25))) is float
    assert isinstance(binary_entropy([0.5]), np.ndarray)
    for bad in (-0.1, 1.1, math.nan, [0.5, math.nan], [0.2, -1e-9]):
        with pytest.raises(ValueError, match=r"^binary_entropy needs probabilities in \[0, 1\]$"):
            binary_entropy(bad)
