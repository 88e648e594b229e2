"""Reward schemes and ``compute_rewards``: exact values and metrics."""

from __future__ import annotations

import math

import pytest
import torch

from sfpo_lab.rewards.reward import REWARD_SCHEMES, compute_rewards, get_reward_scheme
from sfpo_lab.rewards.verify import Grade

RIGHT = Grade(correct=True, boxed=True, pred="1")
BOXED_WRONG = Grade(correct=False, boxed=True, pred="2")
NO_BOX = Grade(correct=False, boxed=False, pred=None)


def test_authors_scheme_values():
    rewards, metrics = compute_rewards([RIGHT, BOXED_WRONG, NO_BOX, RIGHT], "authors")
    assert rewards.dtype == torch.float32 and rewards.shape == (4,)
    assert rewards.tolist() == pytest.approx([1.0, 0.1, 0.0, 1.0])
    assert metrics["acc"] == 0.5
    assert metrics["boxed_frac"] == 0.75
    assert metrics["reward_mean"] == pytest.approx(2.1 / 4)


def test_binary_scheme_values():
    rewards, metrics = compute_rewards([RIGHT, BOXED_WRONG, NO_BOX], "binary")
    assert rewards.tolist() == [1.0, 0.0, 0.0]
    assert metrics == pytest.approx(
        {"acc": 1 / 3, "boxed_frac": 2 / 3, "reward_mean": 1 / 3, "grade_timeouts": 0.0}
    )


def test_default_scheme_is_the_authors():
    assert compute_rewards([BOXED_WRONG])[0].tolist() == pytest.approx([0.1])


def test_unknown_scheme_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown reward scheme 'shaped'.*authors.*binary"):
        compute_rewards([RIGHT], "shaped")
    with pytest.raises(ValueError, match="valid"):
        get_reward_scheme("")
    assert set(REWARD_SCHEMES) == {"authors", "binary"}


def test_empty_batch_gives_an_empty_tensor_and_nan_metrics():
    rewards, metrics = compute_rewards([], "binary")
    assert rewards.shape == (0,)
    assert metrics.pop("grade_timeouts") == 0.0
    assert all(math.isnan(v) for v in metrics.values())


def test_timed_out_answers_are_counted_and_paid_as_boxed_but_wrong():
    """The authors' code turns a math-verify timeout into "not equal": 0.1 when boxed."""
    timed_out = Grade(correct=False, boxed=True, pred="10^{10^{10}}", timed_out=True)
    rewards, metrics = compute_rewards([timed_out, RIGHT, timed_out, NO_BOX], "authors")
    assert rewards.tolist() == pytest.approx([0.1, 1.0, 0.1, 0.0])
    assert metrics["grade_timeouts"] == 2.0
    assert metrics["reward_mean"] == pytest.approx(1.2 / 4)
    assert compute_rewards([timed_out], "binary")[0].tolist() == [0.0]
