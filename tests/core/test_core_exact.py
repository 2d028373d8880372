"""Hand-computed values, boundaries and error messages of the core math that the first mutation run
(``make mutate``) showed untested: registries, the k3 clamp, pass@k/avg@k/curve summaries on inputs where an
off-by-one or a flipped comparison changes the answer, and the messages that name what is wrong.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eapo.core import advantages as adv_mod
from eapo.core import losses as losses_mod
from eapo.core.advantages import group_index, grpo
from eapo.core.losses import k3_kl, policy_loss, policy_loss_terms
from eapo.core.quadrants import assign_quadrants, quadrant_stats
from eapo.core.stats import (
    avg_at_k,
    bootstrap_ci,
    curve_auc,
    mean_pass_at_k,
    paired_bootstrap_diff,
    steps_to_threshold,
)
from eapo.core.weighting import WEIGHTINGS, Weighting, build_weighting, per_sequence_mean, register_weighting

# ----------------------------------------------------------------------------------------------------------------------
# Registries


def test_register_advantage_adds_by_name_and_refuses_a_duplicate():
    def half(rewards, group_ids, eps=1e-6):
        return rewards * 0.5

    try:
        assert adv_mod.register_advantage("test_half")(half) is half
        assert adv_mod.get_advantage_fn("test_half") is half
        with pytest.raises(ValueError, match="^advantage 'test_half' is already registered$"):
            adv_mod.register_advantage("test_half")(half)
    finally:
        adv_mod.ADVANTAGES.pop("test_half", None)


def test_register_aggregation_adds_by_name_and_refuses_a_duplicate():
    def total(values, mask, norm_len=None):
        return (values * mask).sum()

    try:
        assert losses_mod.register_aggregation("test_sum")(total) is total
        v = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        m = torch.tensor([[True, False], [True, True]])
        assert losses_mod.aggregate(v, m, "test_sum").item() == 8.0
        with pytest.raises(ValueError, match="^aggregation 'test_sum' is already registered$"):
            losses_mod.register_aggregation("test_sum")(total)
    finally:
        losses_mod.AGGREGATIONS.pop("test_sum", None)


def test_register_weighting_sets_the_class_name():
    @register_weighting("test_named")
    class Named(Weighting):
        def __init__(self) -> None:
            pass

        def _weights(self, entropy, advantage, seq_ids, mask, tau):
            return torch.ones_like(entropy)

    try:
        assert Named.name == "test_named" and WEIGHTINGS["test_named"] is Named
        assert repr(build_weighting("test_named")) == "Named()"
    finally:
        WEIGHTINGS.pop("test_named", None)


def test_weighting_repr_lists_its_parameters():
    assert repr(build_weighting("eapo", alpha=0.5, phi=0.25)) == "EAPO(alpha=0.5, phi=0.25, alpha_neg=None)"
    assert repr(build_weighting("drop_quadrant", quadrant="neg_low", rho=0.3)) == \
        "DropQuadrant(quadrant='neg_low', rho=0.3)"


@pytest.mark.parametrize("name", ["drop_quadrant", "keep_quadrant"])
def test_quadrant_mask_rho_is_validated_and_used(name):
    w = build_weighting(name, quadrant="pos_high", rho=1.0)  # rho = 1 is allowed (closed upper end)
    assert w.rho == 1.0 and w.params == {"quadrant": "pos_high", "rho": 1.0}
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"parameter 'rho' must be in \(0.0, 1.0\]"):
            build_weighting(name, quadrant="pos_high", rho=bad)
    # tau=None: τ from the weighting's own rho. rho = 0.5 of H = (1, 2, 3, 4) → τ = 3: tokens 2, 3 are pos_high.
    h = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = build_weighting(name, quadrant="pos_high", rho=0.5)(h, torch.ones(4), torch.zeros(4, dtype=torch.long),
                                                               torch.ones(4, dtype=torch.bool), None)
    inside = [0.0, 0.0, 1.0, 1.0]
    assert out.tolist() == (inside if name == "keep_quadrant" else [1.0 - x for x in inside])
    assert out.dtype == torch.float32


def test_quadrant_mask_respects_the_mask_of_high_entropy_padding():
    # The padded token (H = 9, A > 0) would be pos_high; masked, it gets w = 0 under keep and drop alike, and
    # keep_quadrant("pos_high") keeps only the valid pos_high token.
    h = torch.tensor([9.0, 2.0, 0.5])
    m = torch.tensor([False, True, True])
    s = torch.zeros(3, dtype=torch.long)
    keep = build_weighting("keep_quadrant", quadrant="pos_high")(h, torch.ones(3), s, m, 1.0)
    assert keep.tolist() == [0.0, 1.0, 0.0]


def test_top_entropy_rho_message():
    with pytest.raises(ValueError, match=r"parameter 'rho' must be in \(0.0, 1.0\], got 0.0"):
        build_weighting("top_entropy", rho=0.0)
    assert build_weighting("top_entropy", rho=1.0).rho == 1.0


def test_top_entropy_weight_at_exactly_tau_is_one():
    h = torch.tensor([1.0, 2.0, 3.0])
    w = build_weighting("top_entropy", rho=0.5)(h, torch.ones(3), torch.zeros(3, dtype=torch.long),
                                               torch.ones(3, dtype=torch.bool), 2.0)
    assert w.tolist() == [0.0, 1.0, 1.0]


# ----------------------------------------------------------------------------------------------------------------------
# Advantages and per-sequence means: dtypes, dense indices


def test_group_index_tensor_and_sequence_ids():
    idx, g = group_index(torch.tensor([7, 3, 7, 9]))
    assert idx.tolist() == [1, 0, 1, 2] and g == 3 and idx.dtype == torch.long
    idx2, g2 = group_index(["b", "a", "b"])
    assert idx2.tolist() == [0, 1, 0] and g2 == 2 and idx2.dtype == torch.long
    empty, g0 = group_index(torch.tensor([], dtype=torch.long))
    assert empty.numel() == 0 and g0 == 0


def test_rewards_and_groups_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="^rewards has 3 elements but group_ids has 2$"):
        grpo(torch.ones(3), [0, 0])


def test_grpo_keeps_float64_rewards_in_float64():
    r = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    a = grpo(r, [0, 0, 0], eps=0.0)
    assert a.dtype == torch.float64
    # mean 1/3, unbiased std sqrt(1/3): (2/3)/sqrt(1/3) = 2/sqrt(3)
    assert a[0].item() == pytest.approx(2 / math.sqrt(3), abs=1e-12)
    assert grpo(torch.tensor([1, 0]), [0, 0]).dtype == torch.float32  # ints become float32


def test_per_sequence_mean_float64_and_single_sequence():
    v = torch.tensor([1.0, 2.0, 6.0], dtype=torch.float64)
    out = per_sequence_mean(v, torch.tensor([4, 4, 4]), torch.ones(3, dtype=torch.bool))
    assert out.dtype == torch.float64 and out.tolist() == [3.0, 3.0, 3.0]
    assert per_sequence_mean(torch.empty(0), torch.empty(0, dtype=torch.long),
                             torch.empty(0, dtype=torch.bool)).numel() == 0


# ----------------------------------------------------------------------------------------------------------------------
# Quadrants: A = 0 and the shares' zero cases


def test_zero_advantage_is_not_positive():
    codes = assign_quadrants(torch.tensor([2.0, 0.5]), torch.tensor([0.0, -0.0]), tau=1.0)
    assert codes.tolist() == [-1, -1]


def test_quadrant_stats_without_any_assigned_token():
    h = torch.tensor([2.0, 0.5])
    codes = assign_quadrants(h, torch.zeros(2), tau=1.0)
    stats = quadrant_stats(h, torch.zeros(2), codes, torch.ones(2), weights=torch.tensor([0.5, 2.0]))
    for q in stats.values():
        assert q["count"] == 0 and q["share"] == 0.0 and q["grad_share"] == 0.0 and q["mean_weight"] is None


def test_quadrant_stats_mean_weight_and_small_masses():
    # Masses far below 1 (|A|·‖∇‖ = 0.01 and 0.03) still give shares 0.25 / 0.75, not 0.
    h = torch.tensor([2.0, 0.5])
    adv = torch.tensor([0.1, 0.1])
    codes = assign_quadrants(h, adv, tau=1.0)
    stats = quadrant_stats(h, adv, codes, torch.tensor([0.1, 0.3]), weights=torch.tensor([0.5, 2.0]))
    assert stats["pos_high"]["grad_share"] == pytest.approx(0.05 * 0.1 / (0.05 * 0.1 + 0.2 * 0.3))
    assert stats["pos_high"]["mean_weight"] == 0.5 and stats["pos_low"]["mean_weight"] == 2.0
    assert stats["pos_high"]["share"] == 0.5


# ----------------------------------------------------------------------------------------------------------------------
# Losses: the k3 clamp, the clip branches


def test_k3_kl_hand_computed_and_clamped_both_ways():
    logp = torch.tensor([-1.0, -1.0, -30.0, -1.0])
    ref = torch.tensor([-1.0, -1.5, -1.0, -40.0])
    kl = k3_kl(logp, ref)
    d = [0.0, -0.5, 10.0, -10.0]  # ref − logp, clamped to ±10 (29 → 10, −39 → −10)
    assert kl.tolist() == pytest.approx([math.exp(x) - x - 1 for x in d], rel=1e-6)
    assert k3_kl(logp, ref, clamp=0.25)[1].item() == pytest.approx(math.exp(-0.25) + 0.25 - 1, rel=1e-5)


def test_policy_loss_terms_clip_branches_hand_computed():
    # ratio r = e^{logp − old}; ε_low 0.2, ε_high 0.28.
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    m = torch.ones(1, 4, dtype=torch.bool)
    loss, parts = policy_loss_terms(logp, old, adv, m, return_parts=True)
    # A > 0, r = 1.5: min(1.5, 1.28) → −1.28 (clipped); A > 0, r = 0.5: min(0.5, 0.8) → −0.5;
    # A < 0, r = 1.5: −min(−1.5, −1.28) = 1.5; A < 0, r = 0.5: −min(−0.5, −0.8) = 0.8 (clipped).
    assert loss.tolist()[0] == pytest.approx([-1.28, -0.5, 1.5, 0.8], rel=1e-6)
    assert parts["clipped"].tolist() == [[True, False, False, True]]
    total, metrics = policy_loss(logp, old, adv, m)
    assert total.item() == pytest.approx((-1.28 - 0.5 + 1.5 + 0.8) / 4, rel=1e-6)
    assert metrics["clip_frac"] == 0.5
    # approx_kl: mean of (r − 1) − log r
    akl = [(r - 1) - math.log(r) for r in (1.5, 0.5, 1.5, 0.5)]
    assert metrics["approx_kl"] == pytest.approx(sum(akl) / 4, rel=1e-6)


def test_policy_loss_validates_its_arguments():
    x = torch.zeros(1, 2)
    m = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="clip_low/clip_high must be >= 0"):
        policy_loss_terms(x, x, x, m, clip_low=-0.1)
    with pytest.raises(ValueError, match="kl_coef must be >= 0"):
        policy_loss_terms(x, x, x, m, kl_coef=-1.0)
    with pytest.raises(ValueError, match="kl_coef > 0 needs ref_logp"):
        policy_loss_terms(x, x, x, m, kl_coef=0.1)
    with pytest.raises(ValueError, match=r"expected equal \[B, T\] shapes"):
        policy_loss_terms(x, x, torch.zeros(2, 1), m)
    with pytest.raises(ValueError, match="unknown aggregation 'mean'"):
        losses_mod.aggregate(x, m, "mean")


# ----------------------------------------------------------------------------------------------------------------------
# Statistics


def test_mean_pass_at_k_single_prompt_and_empty():
    assert mean_pass_at_k(4, [2], 1) == 0.5
    assert mean_pass_at_k([4, 2], [[1], [2]], 2) == pytest.approx((0.5 + 1.0) / 2)
    with pytest.raises(ValueError, match="^mean_pass_at_k needs at least one prompt$"):
        mean_pass_at_k(4, [], 1)


def test_avg_at_k_shapes_and_messages():
    assert avg_at_k([1, 0, 0, 1]) == 0.5  # one prompt, flat
    assert avg_at_k([[1], [0, 1]]) == 0.75  # ragged with a single-sample row
    assert avg_at_k(np.array([[True, False], [True, True]])) == 0.75
    with pytest.raises(ValueError, match="^avg_at_k: a prompt has no samples$"):
        avg_at_k([[1, 0], []])
    with pytest.raises(ValueError, match="^avg_at_k needs at least one sample$"):
        avg_at_k([])


def test_paired_bootstrap_diff_defaults_and_messages():
    a = np.array([1.0, 0.5, 0.0, 1.0, 0.75])
    b = np.array([0.5, 0.5, 0.0, 0.25, 1.0])
    # The documented defaults: 1000 resamples, seed 0, 95 %, of the per-prompt differences (continuous values, so a
    # different seed or count moves the interval).
    x, y = np.random.default_rng(7).random(60), np.random.default_rng(8).random(60)
    assert paired_bootstrap_diff(x, y) == bootstrap_ci(x - y, n_boot=1000, seed=0, ci=0.95)
    assert paired_bootstrap_diff(x, y) != bootstrap_ci(x - y, n_boot=1000, seed=1, ci=0.95)
    # Per-prompt correctness as booleans: differences are taken as numbers (numpy refuses bool − bool).
    assert paired_bootstrap_diff([True, True, False], [False, True, False])[0] == pytest.approx(1 / 3)
    assert paired_bootstrap_diff(a, b, n_boot=50, seed=3, ci=0.5) == bootstrap_ci(a - b, n_boot=50, seed=3, ci=0.5)
    assert paired_bootstrap_diff([1.0], [0.0]) == (1.0, 1.0, 1.0)  # a single prompt is a valid (degenerate) pair
    assert paired_bootstrap_diff([[1.0, 0.0]], [[0.0, 0.0]])[0] == 0.5  # flattened
    with pytest.raises(ValueError, match=r"^a and b must be non-empty and paired \(same length\), got 2 and 1$"):
        paired_bootstrap_diff([1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="got 0 and 0"):
        paired_bootstrap_diff([], [])


def test_bootstrap_ci_validates():
    with pytest.raises(ValueError, match="^bootstrap_ci needs at least one value$"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="^n_boot must be >= 1, got 0$"):
        bootstrap_ci([1.0], n_boot=0)
    with pytest.raises(ValueError, match=r"^ci must be in \(0, 1\), got 1.0$"):
        bootstrap_ci([1.0], ci=1.0)


def test_curve_auc_offset_unsorted_and_single_point():
    # Steps (2, 4, 5), values (1, 3, 3), given out of order: area 2·(1+3)/2 + 1·(3+3)/2 = 7 over the span 3.
    assert curve_auc([4, 2, 5], [3, 1, 3], normalize=False) == 7.0
    assert curve_auc([4, 2, 5], [3, 1, 3]) == pytest.approx(7 / 3)
    assert curve_auc([[2, 4], [5, 6]], [[1, 3], [3, 3]], normalize=False) == 10.0  # flattened; +1·(3+3)/2
    # Spans below 1 still normalise: steps (0, 0.5), values (1, 1) → area 0.5 over span 0.5 = 1.
    assert curve_auc([0.0, 0.5], [1.0, 1.0]) == 1.0
    # Boolean values are numbers: (1 + 1)/2 per unit step, not True.
    assert curve_auc([0, 1, 2], [True, True, True]) == 1.0
    # Tied steps keep their input order (a stable sort): steps 0 (values 20..39), then 1 (0..19), then 2 (40);
    # the area is (39 + 0)/2 + (19 + 40)/2 = 49. An unstable sort mixes the tied values and changes it.
    assert curve_auc([1] * 20 + [0] * 20 + [2], list(range(41)), normalize=False) == 49.0
    # A single point: its value, or 0 area raw.
    assert curve_auc([3], [0.25]) == 0.25
    assert curve_auc([3], [0.25], normalize=False) == 0.0
    # Two points on the same step: zero span, the raw area (0) is returned rather than a division by zero.
    assert curve_auc([1, 1], [0.5, 0.7]) == 0.0
    with pytest.raises(ValueError, match="^steps and values must be non-empty and of equal length$"):
        curve_auc([0, 1], [1.0])
    with pytest.raises(ValueError, match="^steps and values must be non-empty and of equal length$"):
        curve_auc([], [])


def test_steps_to_threshold():
    # Unsorted steps: sorted (0, 1, 2, 3) → values (0.1, 0.4, 0.5, 0.9); the first step reaching 0.5 (≥) is 2.
    assert steps_to_threshold([3, 0, 2, 1], [0.9, 0.1, 0.5, 0.4], 0.5) == 2.0
    assert steps_to_threshold([0, 1, 2], [0.1, 0.2, 0.3], 0.5) is None
    assert steps_to_threshold([[0, 1], [2, 3]], [[0.0, 0.7], [0.0, 0.9]], 0.6) == 1.0
    with pytest.raises(ValueError, match="^steps and values must have equal length$"):
        steps_to_threshold([0, 1], [0.5], 0.1)


def test_top_entropy_default_rho_is_the_80_20_share():
    assert build_weighting("top_entropy").rho == 0.2
    assert build_weighting("drop_quadrant", quadrant="pos_low").rho == 0.2
