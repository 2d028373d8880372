import math

import pytest
import torch

from eapo.core.advantages import ADVANTAGES, dr_grpo, get_advantage_fn, grpo, rloo, token_advantages


def test_grpo_hand_computed_interleaved_groups():
    # Group 7: rewards (1, 0, 0) at positions 0, 2, 4; group 3: (1, 1, 0, 0) at positions 1, 3, 5, 6.
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    groups = torch.tensor([7, 3, 7, 3, 7, 3, 3])
    adv = grpo(rewards, groups, eps=0.0)
    # group 7: mean 1/3, unbiased std = sqrt(((2/3)^2 + 2(1/3)^2)/2) = sqrt(1/3)
    s7 = math.sqrt(1 / 3)
    # group 3: mean 1/2, unbiased std = sqrt(4·(1/4)/3) = sqrt(1/3)
    s3 = math.sqrt(1 / 3)
    expected = torch.tensor(
        [(2 / 3) / s7, 0.5 / s3, (-1 / 3) / s7, 0.5 / s3, (-1 / 3) / s7, -0.5 / s3, -0.5 / s3]
    )
    assert torch.allclose(adv, expected, atol=1e-6)


def test_dr_grpo_and_rloo_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    groups = [0, 0, 0, 0]
    assert torch.allclose(dr_grpo(rewards, groups), torch.tensor([0.5, -0.5, -0.5, 0.5]))
    # leave-one-out: 1 − 1/3 and 0 − 2/3
    assert torch.allclose(rloo(rewards, groups), torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_zero_variance_and_singleton_groups_give_exact_zero(name):
    fn = get_advantage_fn(name)
    # Group "a": eight 0.1 (their float32 mean is 0.1 + 7.5e-9, not 0.1: three 0.1 would average exactly and could
    # not see a missing zero-variance rule); "b": all 1; "c": one member; "d": mixed.
    rewards = torch.tensor([0.1] * 8 + [1.0, 1.0, 1.0, 0.0, 1.0])
    groups = ["a"] * 8 + ["b", "b", "c", "d", "d"]
    assert (rewards[:8].sum() / 8).item() != rewards[0].item()  # the premise
    adv = fn(rewards, groups)
    assert torch.all(adv[:11] == 0.0)
    assert adv[11] < 0 < adv[12]


def test_int_rewards_and_string_vs_tensor_groups_agree():
    rewards = torch.tensor([1, 0, 1, 1, 0, 0])
    a = grpo(rewards, torch.tensor([5, 5, 5, 9, 9, 9]))
    b = grpo(rewards.float(), ["x", "x", "x", "y", "y", "y"])
    assert a.dtype.is_floating_point and torch.allclose(a, b)


def test_unknown_name_lists_known():
    with pytest.raises(ValueError) as e:
        get_advantage_fn("ppo")
    for name in ADVANTAGES:
        assert name in str(e.value)


def test_length_mismatch_raises():
    with pytest.raises(ValueError):
        grpo(torch.ones(3), [0, 0])


def test_token_advantages_broadcast_and_mask():
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert torch.equal(token_advantages(adv, mask), torch.tensor([[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]))
