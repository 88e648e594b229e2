"""Pure RL math for sfpo_lab: the GRPO objective family and the SFPO update engine.

Framework-free (plain PyTorch, no Lightning), so any training loop can use it. Objective
functions match verl 0.9.1 ``core_algos`` numerically; see ``docs/algorithm.md`` for the
map from the paper's equations to these functions.
"""

from sfpo_lab.algos.advantages import (
    drgrpo_advantages,
    grpo_advantages,
    grpo_batch_std_advantages,
)
from sfpo_lab.algos.logits import entropy_from_logits, entropy_loss, logprobs_from_logits
from sfpo_lab.algos.losses import (
    AGG_MODES,
    KL_KINDS,
    agg_loss,
    kl_loss,
    kl_penalty,
    masked_mean,
    masked_sum,
    policy_loss,
)
from sfpo_lab.algos.registry import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    get_advantage_estimator,
    get_policy_loss,
    register_advantage_estimator,
    register_policy_loss,
)
from sfpo_lab.algos.sfpo import SFPO, EntropyTrigger

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGG_MODES",
    "KL_KINDS",
    "POLICY_LOSSES",
    "SFPO",
    "EntropyTrigger",
    "agg_loss",
    "drgrpo_advantages",
    "entropy_from_logits",
    "entropy_loss",
    "get_advantage_estimator",
    "get_policy_loss",
    "grpo_advantages",
    "grpo_batch_std_advantages",
    "kl_loss",
    "kl_penalty",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "policy_loss",
    "register_advantage_estimator",
    "register_policy_loss",
]
