"""Name -> function registries for advantage estimators and policy-loss variants.

Configs pick a function by name (``loss.advantage=drgrpo``); adding a variant is one
decorated function, never another ``elif`` in the training loop. A variant that only changes
settings of an existing function (DAPO's clip range, Dr. GRPO's aggregation) is not a new
function but a config preset (``conf/loss/dapo.yaml``, ``drgrpo.yaml``): a registry entry whose
only difference were default arguments would be overridden by the trainer and change nothing.

Contracts:
    advantage estimator: ``fn(rewards, group_size, eps=1e-6, *, response_mask=None)
    -> (advantages, metrics)``
    policy loss: ``fn(logprobs, old_logprobs, advantages, mask, clip_low, clip_high, clip_c,
    agg, **agg_kwargs) -> (loss, metrics)``; the trainer passes
    ``**LossConfig.policy_loss_kwargs()`` and the global denominators.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sfpo_lab.algos.advantages import (
    drgrpo_advantages,
    grpo_advantages,
    grpo_batch_std_advantages,
)
from sfpo_lab.algos.losses import policy_loss

F = TypeVar("F", bound=Callable)

ADVANTAGE_ESTIMATORS: dict[str, Callable] = {
    "grpo": grpo_advantages,
    "drgrpo": drgrpo_advantages,
    "grpo_batch_std": grpo_batch_std_advantages,
}
POLICY_LOSSES: dict[str, Callable] = {
    "grpo": policy_loss,
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
