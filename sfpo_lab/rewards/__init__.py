"""Rewards: answer extraction, math-verify grading (in a hang-proof process pool), schemes.

Names are imported lazily, so ``sfpo_lab.rewards.extract`` (used by the data loaders) does not
pull in math-verify, sympy and torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "last_boxed": "extract",
    "ANSWER_PARSINGS": "parsing",
    "AnswerParsing": "parsing",
    "extract_answer": "parsing",
    "GradeTimeout": "verify",
    "Grade": "verify",
    "answers_match": "verify",
    "grade": "verify",
    "MathVerifier": "pool",
    "REWARD_SCHEMES": "reward",
    "compute_rewards": "reward",
    "get_reward_scheme": "reward",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
