import itertools
import math

import numpy as np
import pytest

from eapo.core.stats import (
    avg_at_k,
    bootstrap_ci,
    curve_auc,
    mean_pass_at_k,
    paired_bootstrap_diff,
    pass_at_k,
    steps_to_threshold,
)


@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        outcomes = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), k))
            brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_large_n_is_stable_and_validates():
    assert 0.0 < pass_at_k(1000, 1, 10) == pytest.approx(0.01, abs=1e-12)
    assert pass_at_k(10_000, 0, 100) == 0.0
    with pytest.raises(ValueError, match="k"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_avg_and_mean_pass_at_k():
    correct = np.array([[1, 0, 0, 0], [1, 1, 1, 1]])
    assert avg_at_k(correct) == pytest.approx((0.25 + 1.0) / 2)
    assert avg_at_k([[1, 0], [1, 1, 1, 0]]) == pytest.approx(
        (0.5 + 0.75) / 2
    )  # ragged: per-prompt mean first
    assert mean_pass_at_k(4, [1, 4], 1) == pytest.approx(avg_at_k(correct))


def test_bootstrap_ci_covers_true_mean():
    rng = np.random.default_rng(0)
    covered = 0
    trials = 40
    for t in range(trials):
        x = rng.normal(0.3, 1.0, size=200)
        est, lo, hi = bootstrap_ci(x, n_boot=400, seed=t, ci=0.95)
        assert lo <= est <= hi and est == pytest.approx(x.mean())
        covered += lo <= 0.3 <= hi
    assert covered >= 34  # nominal 95 %: ≥ 85 % over 40 trials


def test_bootstrap_ci_custom_stat_without_axis():
    x = np.arange(11.0)
    est, lo, hi = bootstrap_ci(x, n_boot=200, stat=lambda v: float(np.median(v)))
    assert est == 5.0 and lo < 5.0 < hi


def test_paired_bootstrap_diff_uses_pairing():
    # Prompt difficulty varies hugely but b is always a bit worse: paired CI excludes 0.
    rng = np.random.default_rng(1)
    difficulty = rng.random(100)
    a = difficulty
    b = np.clip(difficulty - 0.05 + rng.normal(0, 0.01, 100), 0, 1)
    diff, lo, hi = paired_bootstrap_diff(a, b, n_boot=500)
    assert diff == pytest.approx(np.mean(a - b))
    assert 0 < lo <= diff <= hi
    with pytest.raises(ValueError):
        paired_bootstrap_diff([1.0, 0.0], [1.0])


def test_curve_summaries():
    steps = [0, 1, 2, 3]
    reward = [0.0, 0.5, 0.5, 1.0]
    assert curve_auc(steps, reward, normalize=False) == pytest.approx(0.25 + 0.5 + 0.75)
    assert curve_auc(steps, reward) == pytest.approx(1.5 / 3)
    assert steps_to_threshold(steps, reward, 0.5) == 1.0
    assert steps_to_threshold(steps, reward, 1.1) is None


def test_pass_at_k_refuses_each_bad_argument_with_its_value():
    with pytest.raises(ValueError, match=r"^need n >= 1 and k >= 1, got n=0, k=1$"):
        pass_at_k(0, 0, 1)
    with pytest.raises(ValueError, match=r"^need n >= 1 and k >= 1, got n=3, k=0$"):
        pass_at_k(3, 1, 0)
    with pytest.raises(ValueError, match=r"^c must be in \[0, n=4\], got -1$"):
        pass_at_k(4, -1, 1)
    with pytest.raises(ValueError, match=r"^c must be in \[0, n=4\], got 5$"):
        pass_at_k(4, 5, 1)


def test_bootstrap_ci_defaults_bounds_and_width():
    v = np.random.default_rng(2).normal(0.6, 0.2, 400)
    assert bootstrap_ci(v) == bootstrap_ci(v, n_boot=1000, seed=0, ci=0.95)
    assert bootstrap_ci([0.5], n_boot=1) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"ci"):
        bootstrap_ci([1.0], ci=0.0)
    # Large sample: the percentile interval of the mean is close to mean ± z·s/sqrt(n) at each level.
    se = v.std(ddof=1) / math.sqrt(v.size)
    for ci, z in ((0.95, 1.96), (0.5, 0.6745)):
        m, lo, hi = bootstrap_ci(v, n_boot=4000, seed=1, ci=ci)
        assert m == pytest.approx(v.mean())
        assert (hi - lo) / 2 == pytest.approx(z * se, rel=0.08)
    # Every value can be drawn, the first one too.
    assert bootstrap_ci([1.0, 0.0], n_boot=200)[1:] == (0.0, 1.0)
