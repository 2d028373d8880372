"""Edge cases of the core math (issue 16): ties exactly at τ and φ, A = 0 with a separate α for negatives, rewards
whose float mean is inexact, ρ·n just above an integer, NaN inputs, and empty responses in per-sequence denominators.

Every expected value is worked out by hand in the comments, not by calling the function under test a second time.
Values on the tie boundaries (0.5, 1.25, 2.0, ...) are exact in float32 and float64 alike, so the tests do not depend
on the dtype τ is computed in.
"""

from __future__ import annotations

import math

import pytest
import torch

from eapo.core.advantages import dr_grpo, get_advantage_fn, grpo, rloo
from eapo.core.losses import aggregate, seq_mean_token_mean, seq_mean_token_sum_norm, token_mean
from eapo.core.quadrants import NONE_CODE, assign_quadrants, entropy_threshold, quadrant_stats
from eapo.core.weighting import build_weighting, per_sequence_mean

# ----------------------------------------------------------------------------------------------------------------------
# Ties exactly at τ


def test_tokens_tied_at_tau_are_all_high():
    # Sorted: 3.0, 2.0, 2.0, 2.0, 1.25, 0.5. ρ = 1/3 of 6 → k = 2; the 2nd largest is 2.0, so τ = 2.0 and all
    # three tokens at exactly 2.0 are high (four high tokens in all, more than k: ties are kept).
    h = torch.tensor([2.0, 0.5, 3.0, 2.0, 1.25, 2.0])
    tau = entropy_threshold(h, None, 1 / 3)
    assert tau == 2.0
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    codes = assign_quadrants(h, adv, tau)
    # pos_high=0 pos_low=1 neg_high=2 neg_low=3
    assert codes.tolist() == [0, 1, 0, 2, 3, 2]


def test_top_entropy_keeps_the_ties_at_tau():
    h = torch.tensor([2.0, 0.5, 3.0, 2.0, 1.25, 2.0])
    s = torch.zeros(6, dtype=torch.long)
    m = torch.ones(6, dtype=torch.bool)
    w = build_weighting("top_entropy", rho=1 / 3)(h, torch.ones(6), s, m, None)  # τ from its own rho: 2.0
    assert w.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    w_given = build_weighting("top_entropy", rho=0.5)(h, torch.ones(6), s, m, 1.25)  # τ given: H ≥ 1.25 kept
    assert w_given.tolist() == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("quadrant,dropped", [("pos_high", [0]), ("neg_high", [3]), ("pos_low", [1]),
                                              ("neg_low", [2])])
def test_drop_quadrant_at_tau_boundary(quadrant, dropped):
    # τ = 1.25 given; token 0 (H = 1.25, A > 0) is pos_high, token 3 (H = 1.25, A < 0) is neg_high.
    h = torch.tensor([1.25, 0.5, 0.5, 1.25, 2.0])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 0.0])  # the A = 0 token belongs to no quadrant and keeps w = 1
    s = torch.tensor([0, 0, 1, 1, 2])
    m = torch.ones(5, dtype=torch.bool)
    w = build_weighting("drop_quadrant", quadrant=quadrant)(h, adv, s, m, 1.25)
    expected = [0.0 if i in dropped else 1.0 for i in range(5)]
    assert w.tolist() == expected
    keep = build_weighting("keep_quadrant", quadrant=quadrant)(h, adv, s, m, 1.25)
    assert keep.tolist() == [1.0 - x for x in expected[:4]] + [0.0]


# ----------------------------------------------------------------------------------------------------------------------
# Ties exactly at φ, A = 0 with alpha_neg


def test_eapo_capacity_includes_entropy_exactly_at_phi():
    # φ = 0.5: H = 0.5 is at the floor and counts. c = (0.5, 0.5, 1.0, 0), mean over the 4 tokens 0.5,
    # r = (1, 1, 2, 0). With α = 1: w = r. (With H > φ instead of ≥ it would be c = (0, 0, 1, 0), r = (0, 0, 4, 0).)
    h = torch.tensor([0.5, 0.5, 1.0, 0.25])
    s = torch.zeros(4, dtype=torch.long)
    m = torch.ones(4, dtype=torch.bool)
    w = build_weighting("eapo", alpha=1.0, phi=0.5)(h, torch.ones(4), s, m, None)
    assert w.tolist() == [1.0, 1.0, 2.0, 0.0]


def test_eapo_zero_advantage_uses_alpha_not_alpha_neg():
    # Response 0 has A = 0, response 1 has A < 0, response 2 A > 0; same entropies (1, 3) in each: c = (1, 3),
    # mean 2, r = (0.5, 1.5). α = 1 → w = r; α₋ = 0 → w = 1. A = 0 is not negative, so it gets α.
    h = torch.tensor([1.0, 3.0, 1.0, 3.0, 1.0, 3.0])
    adv = torch.tensor([0.0, 0.0, -1.0, -1.0, 2.0, 2.0])
    s = torch.tensor([0, 0, 1, 1, 2, 2])
    m = torch.ones(6, dtype=torch.bool)
    w = build_weighting("eapo", alpha=1.0, phi=0.0, alpha_neg=0.0)(h, adv, s, m, None)
    assert w.tolist() == [0.5, 1.5, 1.0, 1.0, 0.5, 1.5]
    # The other way round: α = 0 for A ≥ 0, α₋ = 1 for A < 0.
    w2 = build_weighting("eapo", alpha=0.0, phi=0.0, alpha_neg=1.0)(h, adv, s, m, None)
    assert w2.tolist() == [1.0, 1.0, 0.5, 1.5, 1.0, 1.0]
    # Â = A·w: the A = 0 response gets no update whatever its weight.
    assert (adv * w)[:2].tolist() == [0.0, 0.0]


def test_eapo_partial_alpha_mixes_linearly():
    # α = 0.25: w = 0.75 + 0.25·r with r = (0.5, 1.5) → (0.875, 1.125): the mean weight stays exactly 1.
    h = torch.tensor([1.0, 3.0])
    w = build_weighting("eapo", alpha=0.25, phi=0.0)(h, torch.ones(2), torch.zeros(2, dtype=torch.long),
                                                      torch.ones(2, dtype=torch.bool), None)
    assert w.tolist() == [0.875, 1.125]


def test_eapo_masked_tokens_do_not_enter_the_capacity_mean():
    # Padding with huge entropy must not dilute r: valid c = (1, 3) → r = (0.5, 1.5) as without the padding.
    h = torch.tensor([1.0, 3.0, 100.0])
    m = torch.tensor([True, True, False])
    w = build_weighting("eapo", alpha=1.0, phi=0.0)(h, torch.ones(3), torch.zeros(3, dtype=torch.long), m, None)
    assert w.tolist() == [0.5, 1.5, 0.0]


# ----------------------------------------------------------------------------------------------------------------------
# Zero-variance groups whose float mean is inexact


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_eight_equal_rewards_of_a_tenth_give_exact_zero(name):
    # In float32, 0.1·8 / 8 differs from 0.1 by 7.5e-9 (three 0.1 would be exact: that case cannot see the bug):
    # without the explicit zero-variance rule grpo would return 7.5e-9 / (0 + 1e-6) ≈ 0.0075, not 0.
    r = torch.full((8,), 0.1)
    assert (r.sum() / 8).item() != r[0].item()  # the premise: the float mean is not exact here
    adv = get_advantage_fn(name)(r, [0] * 8)
    assert adv.tolist() == [0.0] * 8


def test_grpo_hand_computed_with_unbiased_std():
    # Group a: R = (1, 0, 0, 0): mean 0.25, unbiased std sqrt(0.75/3) = 0.5 → A = (1.5, -0.5, -0.5, -0.5).
    # Group b: R = (1, 1, 0): mean 2/3, centred (1/3, 1/3, -2/3), Σc² = 2/3, unbiased var 1/3, std sqrt(1/3).
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    g = ["a", "a", "b", "a", "b", "a", "b"]
    adv = grpo(r, g, eps=0.0)
    sb = math.sqrt(1 / 3)
    expected = [1.5, -0.5, (1 / 3) / sb, -0.5, (1 / 3) / sb, -0.5, (-2 / 3) / sb]
    assert adv.tolist() == pytest.approx(expected, abs=1e-12)
    # eps is added to the std: with eps = 0.5 group a's std becomes 1.0.
    assert grpo(r, g, eps=0.5)[0].item() == pytest.approx(0.75, abs=1e-12)


def test_dr_grpo_and_rloo_hand_computed():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    g = [0, 0, 0, 0, 1, 1, 1]
    # dr_grpo: R − mean: group 0 mean 0.25, group 1 mean 2/3.
    assert dr_grpo(r, g).tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 1 / 3, 1 / 3, -2 / 3], abs=1e-12)
    # rloo: R_i − mean of the others: 1 − 0 = 1, 0 − 1/3; group 1: 1 − 1/2, 0 − 1.
    assert rloo(r, g).tolist() == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3, 0.5, 0.5, -1.0], abs=1e-12)


def test_group_of_two_unequal_and_singletons():
    # A pair (0, 1): mean 0.5, unbiased std sqrt(0.5) → ±0.5/sqrt(0.5) = ±sqrt(0.5). Singletons get 0.
    r = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    adv = grpo(r, [7, 7, 8, 9], eps=0.0)
    assert adv.tolist() == pytest.approx([-math.sqrt(0.5), math.sqrt(0.5), 0.0, 0.0], abs=1e-12)


# ----------------------------------------------------------------------------------------------------------------------
# ρ·n just above an integer


def test_rho_007_of_100_selects_seven_tokens():
    # 0.07·100 = 7.000000000000001 in float: a bare ceil would give k = 8 and τ one token lower.
    assert 0.07 * 100 > 7
    h = torch.arange(100, dtype=torch.float32)  # 0..99
    tau = entropy_threshold(h, None, 0.07)
    assert tau == 93.0  # the 7th largest: 99, 98, ..., 93
    assert int((h >= tau).sum()) == 7


def test_rho_times_n_not_integer_rounds_up():
    # ρ = 0.25 of 10 tokens: 2.5 → k = 3; τ = 3rd largest = 7.
    h = torch.arange(10, dtype=torch.float32)
    assert entropy_threshold(h, None, 0.25) == 7.0
    # ρ = 0.3 of 10: 0.3·10 is exactly 3.0 in float, k = 3 → τ = 7 as well.
    assert entropy_threshold(h, None, 0.3) == 7.0
    # ρ = 0.31 of 10: 3.1 → 4 tokens → τ = 6.
    assert entropy_threshold(h, None, 0.31) == 6.0


# ----------------------------------------------------------------------------------------------------------------------
# NaN inputs


def test_nan_entropies_are_left_out_of_tau():
    # Valid non-NaN entropies 1, 2, 3, 4 (the NaN is skipped): ρ = 0.25 of 4 → k = 1 → τ = 4.
    h = torch.tensor([float("nan"), 1.0, 2.0, 3.0, 4.0])
    assert entropy_threshold(h, None, 0.25) == 4.0
    assert entropy_threshold(torch.full((3,), float("nan")), None, 0.5) == math.inf


def test_nan_entropy_is_low_and_nan_advantage_has_no_quadrant():
    h = torch.tensor([float("nan"), float("nan"), 2.0, 2.0])
    adv = torch.tensor([1.0, -1.0, float("nan"), 1.0])
    codes = assign_quadrants(h, adv, tau=1.0)
    assert codes.tolist() == [1, 3, NONE_CODE, 0]  # pos_low, neg_low, none, pos_high
    # quadrant_stats skips the unassigned token: its NaN never reaches a sum.
    stats = quadrant_stats(torch.tensor([0.5, 0.5, 2.0, 2.0]), adv, codes, torch.ones(4))
    assert stats["pos_high"]["grad_mass"] == 1.0 and stats["pos_high"]["grad_share"] == pytest.approx(1 / 3)
    assert all(math.isfinite(v["grad_mass"]) for v in stats.values())


def test_nan_entropy_gets_no_capacity_in_eapo():
    # A NaN entropy is not ≥ φ: capacity 0 and w = 1 − α; the other tokens stay finite: c = (0, 1, 3), mean 4/3,
    # r = (0, 0.75, 2.25), α = 0.5 → w = (0.5, 0.875, 1.625).
    h = torch.tensor([float("nan"), 1.0, 3.0])
    w = build_weighting("eapo", alpha=0.5, phi=0.0)(h, torch.ones(3), torch.zeros(3, dtype=torch.long),
                                                     torch.ones(3, dtype=torch.bool), None)
    assert w.tolist() == pytest.approx([0.5, 0.875, 1.625], abs=1e-6)


def test_negative_entropy_gets_no_capacity():
    # φ ≥ 0, so a (numerically) negative H is below the floor: capacity 0, c = (0, 1), mean 0.5, r = (0, 2).
    h = torch.tensor([-1.0, 1.0])
    w = build_weighting("eapo", alpha=1.0, phi=0.0)(h, torch.ones(2), torch.zeros(2, dtype=torch.long),
                                                     torch.ones(2, dtype=torch.bool), None)
    assert w.tolist() == [0.0, 2.0]


# ----------------------------------------------------------------------------------------------------------------------
# Empty responses in per-sequence denominators


def test_seq_mean_token_mean_ignores_empty_sequences():
    v = torch.tensor([[1.0, 3.0, 9.0], [5.0, 7.0, 7.0], [4.0, 4.0, 4.0]])
    m = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    # per sequence: (1+3)/2 = 2, 5/1 = 5; the empty row does not count: (2 + 5) / 2 = 3.5, not 7/3.
    assert seq_mean_token_mean(v, m).item() == 3.5
    assert aggregate(v, m, "seq_mean_token_mean").item() == 3.5


def test_seq_mean_token_sum_norm_ignores_empty_sequences():
    v = torch.tensor([[1.0, 3.0, 9.0], [5.0, 7.0, 7.0], [4.0, 4.0, 4.0]])
    m = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    # per-sequence sums 4 and 5 over the constant L = 3 (default: T) → (4/3 + 5/3) / 2 = 1.5
    assert seq_mean_token_sum_norm(v, m).item() == pytest.approx(1.5)
    # an explicit norm_len = 4: (1 + 1.25) / 2
    assert aggregate(v, m, "seq_mean_token_sum_norm", norm_len=4).item() == pytest.approx(1.125)
    with pytest.raises(ValueError, match="norm_len"):
        seq_mean_token_sum_norm(v, m, 0)


def test_token_mean_counts_valid_tokens_only_and_empty_is_zero():
    v = torch.tensor([[1.0, 3.0, 9.0], [5.0, 7.0, 7.0]])
    m = torch.tensor([[True, True, False], [True, False, False]])
    assert token_mean(v, m).item() == 3.0  # (1 + 3 + 5) / 3
    none = torch.zeros_like(m)
    for fn in (token_mean, seq_mean_token_mean, seq_mean_token_sum_norm):
        assert fn(v, none).item() == 0.0  # nothing valid: 0, not NaN


def test_per_sequence_mean_of_an_empty_sequence_is_zero():
    v = torch.tensor([2.0, 4.0, 8.0, 16.0])
    s = torch.tensor([5, 5, 9, 9])
    m = torch.tensor([True, True, False, False])
    assert per_sequence_mean(v, s, m).tolist() == [3.0, 3.0, 0.0, 0.0]
    # masked values do not enter the mean of a partly valid sequence
    m2 = torch.tensor([True, False, True, True])
    assert per_sequence_mean(v, s, m2).tolist() == [2.0, 2.0, 12.0, 12.0]


def test_eapo_empty_response_beside_a_full_one():
    # seq 1 is empty (all masked): its weights are 0 and seq 0 is unaffected (c = (1, 3) → r = (0.5, 1.5)).
    h = torch.tensor([1.0, 3.0, 2.0, 2.0])
    s = torch.tensor([0, 0, 1, 1])
    m = torch.tensor([True, True, False, False])
    w = build_weighting("eapo", alpha=1.0, phi=0.0)(h, torch.ones(4), s, m, None)
    assert w.tolist() == [0.5, 1.5, 0.0, 0.0]
