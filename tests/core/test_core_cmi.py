import math

import numpy as np
import pytest

from eapo.core.cmi import binary_entropy, bootstrap_cmi, cmi_estimate, cmi_from_outcomes


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
    hb = lambda x: 0.0 if x in (0.0, 1.0) else -(x * math.log(x) + (1 - x) * math.log(1 - x))
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
    assert cmi_from_outcomes([[1, 1, 1, 1], [0, 0, 0, 0]]) == pytest.approx(math.log(2))


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


def test_plug_in_bias_is_upward_for_small_m():
    # Outcome independent of the token (I = 0): the plug-in estimate is ≥ 0 and on average ≈ (1 − 1/K)/(2M).
    rng = np.random.default_rng(0)
    K, M = 8, 8
    ests = [cmi_from_outcomes(rng.random((K, M)) < 0.5) for _ in range(400)]
    assert min(ests) >= 0.0
    assert np.mean(ests) == pytest.approx((1 - 1 / K) / (2 * M), rel=0.25)


def test_bootstrap_is_seeded_and_validates():
    o = (np.random.default_rng(3).random((6, 10)) < 0.5).astype(int)
    assert bootstrap_cmi(o, seed=5) == bootstrap_cmi(o, seed=5)
    with pytest.raises(ValueError):
        bootstrap_cmi(np.full((2, 2), 0.5))
    with pytest.raises(ValueError):
        cmi_from_outcomes(np.zeros((0, 3)))
