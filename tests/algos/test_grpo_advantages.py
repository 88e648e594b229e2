"""Hand-computed group-relative advantages (GRPO, Dr. GRPO, batch std)."""

import math

import pytest
import torch

from sfpo_lab.algos import drgrpo_advantages, grpo_advantages, grpo_batch_std_advantages

EPS = 1e-6
# group 1: mean 1/4, unbiased std 1/2; group 2: mean 1/2, unbiased std sqrt(1/3)
REWARDS = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)


def test_grpo_hand_values():
    adv, metrics = grpo_advantages(REWARDS, group_size=4)
    s2 = math.sqrt(1 / 3)
    expected = [0.75 / (0.5 + EPS)] + [-0.25 / (0.5 + EPS)] * 3
    expected += [0.5 / (s2 + EPS)] * 2 + [-0.5 / (s2 + EPS)] * 2
    assert adv.tolist() == pytest.approx(expected, rel=1e-12)
    assert metrics["reward_mean"] == pytest.approx(3 / 8)
    assert metrics["zero_std_frac"] == 0.0


def test_drgrpo_centres_only():
    adv, _ = drgrpo_advantages(REWARDS, group_size=4)
    assert adv.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5])
    adv2, _ = grpo_advantages(REWARDS, 4, norm_by_std=False)
    assert torch.equal(adv, adv2)


def test_batch_std_keeps_group_means():
    adv, _ = grpo_batch_std_advantages(REWARDS, group_size=4)
    batch_std = math.sqrt((3 * 0.625**2 + 5 * 0.375**2) / 7)  # unbiased, over all 8
    centred = [0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5]
    assert adv.tolist() == pytest.approx([c / (batch_std + EPS) for c in centred], rel=1e-12)


def test_group_of_one_has_mean_zero_std_one():
    adv, _ = grpo_advantages(torch.tensor([0.5, 2.0]), group_size=1)
    assert adv.tolist() == pytest.approx([0.5 / (1 + EPS), 2.0 / (1 + EPS)])


def test_identical_rewards_give_zero_advantage():
    adv, metrics = grpo_advantages(torch.tensor([1.0, 1.0, 0.0, 1.0]), group_size=2)
    assert adv[:2].tolist() == [0.0, 0.0]
    assert metrics["zero_std_frac"] == 0.5


def test_token_level_rewards_and_response_mask():
    token_rewards = torch.zeros(4, 3)
    token_rewards[0, 2] = 1.0  # outcome reward on the last token
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    adv, _ = grpo_advantages(token_rewards, 2, norm_by_std=False, response_mask=mask)
    assert adv.tolist() == [[0.5, 0.5, 0.5], [-0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"group_size": 0}, "group_size"),
        ({"group_size": 3}, "divisible"),
        ({"group_size": 2, "std_scope": "prompt"}, "std_scope"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        grpo_advantages(REWARDS, **kwargs)
