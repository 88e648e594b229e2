"""Rewards: answer extraction, math-verify grading (in a hang-proof process pool), schemes."""

from sfpo_lab.rewards.extract import last_boxed
from sfpo_lab.rewards.pool import MathVerifier
from sfpo_lab.rewards.reward import REWARD_SCHEMES, compute_rewards, get_reward_scheme
from sfpo_lab.rewards.verify import Grade, answers_match, grade

__all__ = [
    "REWARD_SCHEMES",
    "Grade",
    "MathVerifier",
    "answers_match",
    "compute_rewards",
    "get_reward_scheme",
    "grade",
    "last_boxed",
]
