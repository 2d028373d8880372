import json
import math

import pytest
import torch

from eapo.core.quadrants import (
    NONE_CODE,
    QUADRANTS,
    assign_quadrants,
    entropy_threshold,
    quadrant_names,
    quadrant_stats,
)


def test_threshold_top_k_convention():
    h = torch.arange(10, dtype=torch.float32)  # 0..9
    assert entropy_threshold(h, None, 0.2) == 8.0  # top 2 tokens: 8, 9
    assert entropy_threshold(h, None, 0.3) == 7.0  # 3 tokens
    # ρ·n just above an integer in float: 0.07·100 = 7.000000000000001 (0.3·10 is exactly 3.0 and cannot show it).
    assert 0.07 * 100 > 7
    assert entropy_threshold(torch.arange(100, dtype=torch.float32), None, 0.07) == 93.0  # 7 tokens, not 8
    assert entropy_threshold(h, None, 1.0) == 0.0  # everything high
    assert entropy_threshold(h, None, 0.01) == 9.0  # at least one token is high


def test_threshold_excludes_masked_tokens():
    # Prompt/padding tokens with huge entropy must not raise τ.
    h = torch.tensor([100.0, 100.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    mask = torch.tensor([False, False, True, True, True, True, True])
    assert entropy_threshold(h, mask, 0.2) == 5.0
    assert entropy_threshold(h, None, 0.2) == 100.0


def test_threshold_empty_is_inf_and_nothing_is_high():
    h = torch.tensor([1.0, 2.0])
    tau = entropy_threshold(h, torch.tensor([False, False]), 0.2)
    assert tau == math.inf
    codes = assign_quadrants(h, torch.tensor([1.0, -1.0]), tau)
    assert codes.tolist() == [1, 3]  # pos_low, neg_low
    assert entropy_threshold(torch.empty(0), None, 0.5) == math.inf


def test_threshold_all_equal_makes_all_high():
    h = torch.full((6,), 0.7)
    tau = entropy_threshold(h, None, 0.2)
    assert tau == pytest.approx(0.7)
    codes = assign_quadrants(h, torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0]), tau)
    assert codes.tolist() == [0, 0, 0, 2, 2, 2]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_threshold_keeps_the_boundary_token_in_the_input_dtype(dtype):
    # τ must be the k-th largest entropy *as stored*: rounding a float64 τ to float32 rounds it up about half the
    # time, and then the boundary token (H == τ in float64) is no longer ≥ τ and drops out of the high set.
    for seed in range(40):
        h = torch.rand(25, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        tau = entropy_threshold(h, None, 0.2)
        assert int((h >= tau).sum()) == 5, f"seed {seed}: τ = {tau!r} dropped or added a token"
        assert tau == float(torch.sort(h, descending=True).values[4])


def test_threshold_rho_validation():
    for rho in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="rho"):
            entropy_threshold(torch.ones(3), None, rho)


def test_assign_quadrants_broadcast_zero_adv_and_mask():
    h = torch.tensor([[0.1, 2.0, 0.5], [3.0, 0.2, 9.0], [5.0, 5.0, 5.0]])
    adv = torch.tensor([[1.0], [-2.0], [0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False], [True, True, True]])
    codes = assign_quadrants(h, adv, tau=1.0, mask=mask)
    assert codes.dtype == torch.long
    assert codes.tolist() == [[1, 0, 1], [2, 3, NONE_CODE], [NONE_CODE] * 3]
    assert quadrant_names(codes) == [
        "pos_low",
        "pos_high",
        "pos_low",
        "neg_high",
        "neg_low",
        "none",
        "none",
        "none",
        "none",
    ]


def test_quadrant_stats_hand_computed_and_json_ready():
    h = torch.tensor([2.0, 0.5, 3.0, 0.1, 4.0])
    adv = torch.tensor([1.0, 1.0, -2.0, -2.0, 0.0])
    g = torch.tensor([1.0, 0.5, 1.0, 0.25, 7.0])
    codes = assign_quadrants(h, adv, tau=1.0)
    assert codes.tolist() == [0, 1, 2, 3, -1]
    stats = quadrant_stats(h, adv, codes, g)
    # mass: pos_high 1·1 = 1, pos_low 1·0.5 = 0.5, neg_high 2·1 = 2, neg_low 2·0.25 = 0.5; total 4
    assert [stats[q]["grad_share"] for q in QUADRANTS] == pytest.approx([0.25, 0.125, 0.5, 0.125])
    assert [stats[q]["count"] for q in QUADRANTS] == [1, 1, 1, 1]
    assert stats["neg_high"]["share"] == pytest.approx(0.25)
    assert stats["neg_high"]["mean_abs_adv"] == pytest.approx(2.0)
    assert stats["pos_low"]["mean_entropy"] == pytest.approx(0.5)
    json.dumps(stats, allow_nan=False)

    # Weights change Â and so the grad shares: drop neg_high → its share is 0, the rest renormalise to 1/2.
    w = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    ws = quadrant_stats(h, adv, codes, g, weights=w)
    assert [ws[q]["grad_share"] for q in QUADRANTS] == pytest.approx([0.5, 0.25, 0.0, 0.25])


def test_quadrant_stats_empty_quadrants_are_nan_free():
    h = torch.tensor([2.0, 3.0])
    adv = torch.tensor([1.0, 1.0])
    codes = assign_quadrants(h, adv, tau=1.0)
    stats = quadrant_stats(h, adv, codes, torch.zeros(2))
    assert stats["pos_high"]["count"] == 2 and stats["pos_high"]["share"] == 1.0
    assert stats["neg_low"] == {
        "count": 0,
        "share": 0.0,
        "mean_entropy": None,
        "mean_abs_adv": None,
        "mean_weight": None,
        "grad_mass": 0.0,
        "grad_share": 0.0,
    }
    assert stats["pos_high"]["grad_share"] == 0.0  # zero total mass → 0, not NaN
    json.dumps(stats, allow_nan=False)


def test_the_quadrant_names_have_one_owner():
    from eapo import contracts, report
    from eapo.core import quadrants

    assert contracts.QUADRANTS is quadrants.QUADRANTS and report.QUADRANTS is quadrants.QUADRANTS
    assert contracts.QUADRANT_LABELS == (*quadrants.QUADRANTS, quadrants.NONE_NAME)
