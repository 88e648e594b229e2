"""Reward schemes: a :class:`Grade` becomes a scalar reward.

``"authors"`` is the SFPO release's scheme (1.0 correct, 0.1 boxed but wrong, 0.0 no box);
``"binary"`` is plain correctness. An answer whose grading timed out is wrong: 0.1 under
``"authors"`` when boxed, as their code pays a math-verify timeout (``verify`` returns False).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from sfpo_lab.rewards.verify import Grade

RewardScheme = Callable[[Grade], float]


def authors_reward(grade: Grade) -> float:
    """1.0 correct, 0.1 for a boxed but wrong answer, 0.0 without a box (authors' release)."""
    if grade.correct:
        return 1.0
    return 0.1 if grade.boxed else 0.0


def binary_reward(grade: Grade) -> float:
    """1.0 correct, else 0.0."""
    return 1.0 if grade.correct else 0.0


REWARD_SCHEMES: dict[str, RewardScheme] = {
    "authors": authors_reward,
    "binary": binary_reward,
}


def get_reward_scheme(name: str) -> RewardScheme:
    """Look up a reward scheme by name; the error lists the valid names."""
    try:
        return REWARD_SCHEMES[name]
    except KeyError:
        raise ValueError(
            f"unknown reward scheme {name!r}; valid: {sorted(REWARD_SCHEMES)}"
        ) from None


def compute_rewards(
    grades: Sequence[Grade], scheme: str = "authors"
) -> tuple[torch.Tensor, dict[str, float]]:
    """Rewards for a batch of graded completions.

    Args:
        grades: N grades (e.g. B prompts x G samples, flattened prompt-major).
        scheme: a name in :data:`REWARD_SCHEMES`.

    Returns:
        ``(rewards, metrics)``: rewards is a float32 tensor of shape [N]; metrics holds ``acc``
        (fraction correct), ``boxed_frac`` and ``reward_mean`` (NaN when N == 0) and
        ``grade_timeouts`` (the number of samples whose grading never finished, 0 when N == 0).
        Keys are bare; the caller namespaces them (``train/acc``, ``val/<b>/grade_timeouts``).
    """
    reward_fn = get_reward_scheme(scheme)
    rewards = torch.tensor([reward_fn(g) for g in grades], dtype=torch.float32)
    n = len(grades)
    if n == 0:
        nan = float("nan")
        return rewards, {"acc": nan, "boxed_frac": nan, "reward_mean": nan, "grade_timeouts": 0.0}
    metrics = {
        "acc": sum(g.correct for g in grades) / n,
        "boxed_frac": sum(g.boxed for g in grades) / n,
        "reward_mean": rewards.mean().item(),
        "grade_timeouts": float(sum(g.timed_out for g in grades)),
    }
    return rewards, metrics
