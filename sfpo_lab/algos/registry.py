"""Name -> function registries for advantage estimators and policy-loss variants.

Configs pick a variant by name (``algo.adv_estimator=drgrpo``); adding a variant is one
decorated function, never another ``elif`` in the training loop.

Contracts:
    advantage estimator: ``fn(rewards, group_size, eps=1e-6, *, response_mask=None)
    -> (advantages, metrics)``
    policy loss: ``fn(logprobs, old_logprobs, advantages, mask, clip_low, clip_high, clip_c,
    agg, **agg_kwargs) -> (loss, metrics)`` with variant-specific defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sfpo_lab.algos.advantages import (
    drgrpo_advantages,
    grpo_advantages,
    grpo_batch_std_advantages,
)
from sfpo_lab.algos.losses import dapo_policy_loss, drgrpo_policy_loss, policy_loss

F = TypeVar("F", bound=Callable)

ADVANTAGE_ESTIMATORS: dict[str, Callable] = {
    "grpo": grpo_advantages,
    "drgrpo": drgrpo_advantages,
    "grpo_batch_std": grpo_batch_std_advantages,
}
POLICY_LOSSES: dict[str, Callable] = {
    "grpo": policy_loss,
    "dapo": dapo_policy_loss,
    "drgrpo": drgrpo_policy_loss,
}


def _register(table: dict[str, Callable], kind: str, name: str) -> Callable[[F], F]:
    def decorator(fn: F) -> F:
        if name in table and table[name] is not fn:
            raise ValueError(f"{kind} {name!r} is already registered to {table[name]!r}")
        table[name] = fn
        return fn

    return decorator


def _lookup(table: dict[str, Callable], kind: str, name: str) -> Callable:
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; valid names: {sorted(table)}") from None


def register_advantage_estimator(name: str) -> Callable[[F], F]:
    """Decorator adding ``fn`` to :data:`ADVANTAGE_ESTIMATORS` under ``name``."""
    return _register(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def register_policy_loss(name: str) -> Callable[[F], F]:
    """Decorator adding ``fn`` to :data:`POLICY_LOSSES` under ``name``."""
    return _register(POLICY_LOSSES, "policy loss", name)


def get_advantage_estimator(name: str) -> Callable:
    """The advantage estimator called ``name``; ``ValueError`` lists the valid names."""
    return _lookup(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def get_policy_loss(name: str) -> Callable:
    """The policy-loss variant called ``name``; ``ValueError`` lists the valid names."""
    return _lookup(POLICY_LOSSES, "policy loss", name)
