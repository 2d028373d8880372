"""eapo.core.credit.annotate_batch: one batch's advantages, τ, quadrants and token weights, checked by hand."""

import math

import pytest
import torch

from eapo.core.advantages import grpo
from eapo.core.credit import annotate_batch
from eapo.core.quadrants import QUADRANT_CODES
from eapo.core.weighting import build_weighting

# Two prompts × two responses. Prompt 0: rewards 1, 0 (A = +0.707…, −0.707…); prompt 1: 1, 1 (A = 0).
LENGTHS = torch.tensor([3, 2, 2, 1])
ENTROPY = torch.tensor([0.1, 2.0, 0.5, 3.0, 0.2, 1.0, 0.3, 4.0])
LOGP = torch.log(torch.tensor([0.5, 0.9, 0.6, 0.2, 0.8, 0.7, 0.95, 0.1]))
SUM_P_SQ = torch.tensor([0.3, 0.82, 0.4, 0.1, 0.65, 0.5, 0.9, 0.05])
REWARDS = torch.tensor([1.0, 0.0, 1.0, 1.0])
GROUPS = torch.tensor([0, 0, 1, 1])


def annotate(weighting, rho=0.25, **kw):
    return annotate_batch(ENTROPY, LOGP, SUM_P_SQ, LENGTHS, REWARDS, GROUPS, advantage_fn=grpo,
                          weighting=weighting, rho=rho, **kw)


def test_grpo_annotation_by_hand():
    ann = annotate(build_weighting("none"))
    assert ann.seq_ids.tolist() == [0, 0, 0, 1, 1, 2, 2, 3]
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert ann.advantages.tolist() == pytest.approx([a, -a, 0.0, 0.0])
    assert ann.tau == 3.0  # the top ceil(0.25·8) = 2 entropies are high: τ is the 2nd largest
    assert ann.adv_hat.tolist() == pytest.approx([a, a, a, -a, -a, 0.0, 0.0, 0.0])
    # Response 0 (A > 0): all low. Response 1 (A < 0): 3.0 ≥ τ high, 0.2 low. A = 0 tokens: no quadrant.
    q = QUADRANT_CODES
    assert ann.codes.tolist() == [q["pos_low"]] * 3 + [q["neg_high"], q["neg_low"]] + [-1] * 3
    assert ann.quadrants["pos_low"]["count"] == 3 and ann.quadrants["neg_high"]["count"] == 1
    grad = torch.sqrt(1 - 2 * LOGP.exp() + SUM_P_SQ)
    assert ann.grad_norm.tolist() == pytest.approx(grad.tolist(), rel=1e-6)
    assert ann.quadrants["neg_low"]["grad_mass"] == pytest.approx(a * float(grad[4]), rel=1e-6)
    assert ann.weighted_quadrants == ann.quadrants  # w = 1


def test_a_quadrant_ablation_drops_exactly_the_quadrant_counted_even_with_its_own_rho():
    """A quadrant mask splits at the step's τ whatever ρ the variant gave it (``own_threshold`` False)."""
    for weighting_rho in (None, 1.0):  # at ρ = 1 its own τ would make every negative token "high"
        ann = annotate(build_weighting("drop_quadrant", quadrant="neg_high", rho=1.0), weighting_rho=weighting_rho)
        dropped = ann.weights == 0
        assert dropped.tolist() == (ann.codes == QUADRANT_CODES["neg_high"]).tolist()
        assert ann.weighted_quadrants["neg_high"]["grad_mass"] == 0.0 < ann.quadrants["neg_high"]["grad_mass"]


def test_top_entropy_with_its_own_rho_thresholds_at_that_quantile():
    top = build_weighting("top_entropy", rho=0.5)
    at_step = annotate(top)  # no variant ρ: the step's τ (2 of 8 tokens high)
    assert at_step.weights.tolist() == [float(h >= 3.0) for h in ENTROPY.tolist()]
    own = annotate(top, weighting_rho=0.5)  # the variant's ρ = 0.5: its own τ (4 of 8 tokens high)
    assert own.tau == at_step.tau  # quadrants and statistics keep the step's τ
    assert own.weights.tolist() == [float(h >= 1.0) for h in ENTROPY.tolist()]  # τ = 4th largest


def test_tau_is_taken_over_the_threshold_entropies_given():
    """Under several processes τ is a quantile of every rank's entropies, which the caller gathers."""
    everyone = torch.cat([ENTROPY, torch.tensor([10.0, 9.0, 8.0])])
    ann = annotate(build_weighting("none"), threshold_entropy=everyone)
    assert ann.tau == 8.0  # ceil(0.25·11) = 3 high: the other ranks' 10, 9, 8
    assert ann.codes.tolist().count(QUADRANT_CODES["neg_high"]) == 0  # locally (3.0) it would have been high


def test_adv_hat_is_the_token_advantage_times_the_weight():
    ann = annotate(build_weighting("eapo", alpha=0.5, phi=0.4))
    assert not torch.all(ann.weights == 1.0)
    torch.testing.assert_close(ann.adv_hat, ann.advantages[ann.seq_ids] * ann.weights)
    dropped = annotate(build_weighting("drop_quadrant", quadrant="neg_high"))
    assert torch.isfinite(dropped.adv_hat).all()
    torch.testing.assert_close(dropped.adv_hat, dropped.advantages[dropped.seq_ids] * dropped.weights)


def test_top_entropy_with_its_own_rho_takes_its_quantile_over_the_threshold_entropies_given():
    everyone = torch.cat([ENTROPY, torch.tensor([10.0, 9.0, 8.0, 7.0])])
    ann = annotate(build_weighting("top_entropy", rho=0.5), weighting_rho=0.5, threshold_entropy=everyone)
    # ceil(0.5·12) = 6 high over every rank: τ_w = 3.0 (locally its 4th largest would be 1.0).
    assert ann.weights.tolist() == [float(h >= 3.0) for h in ENTROPY.tolist()]
