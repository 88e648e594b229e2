"""Name lookups for advantage estimators and policy losses."""

import pytest
import torch

from sfpo_lab.algos import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    get_advantage_estimator,
    get_policy_loss,
    grpo_advantages,
    policy_loss,
    register_policy_loss,
)


def test_builtin_names():
    assert {"grpo", "drgrpo", "grpo_batch_std"} <= set(ADVANTAGE_ESTIMATORS)
    # DAPO / Dr. GRPO are settings of policy_loss (conf/loss presets), not separate functions
    assert set(POLICY_LOSSES) == {"grpo"}
    assert get_advantage_estimator("grpo") is grpo_advantages
    assert get_policy_loss("grpo") is policy_loss


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"'rloo'.*drgrpo.*grpo"):
        get_advantage_estimator("rloo")
    with pytest.raises(ValueError, match=r"'gspo'.*\['grpo'\]"):
        get_policy_loss("gspo")


def test_every_registered_function_follows_its_contract():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])
    for fn in ADVANTAGE_ESTIMATORS.values():
        adv, metrics = fn(rewards, 2, eps=1e-6, response_mask=None)
        assert adv.shape == (4,) and isinstance(metrics, dict)
    lp, mask = torch.zeros(2, 3), torch.ones(2, 3)
    for fn in POLICY_LOSSES.values():
        loss, metrics = fn(lp, lp, torch.ones(2), mask)
        # ratio 1, A = 1: -1 per token; every default aggregation of a full mask gives -1
        assert loss.item() == pytest.approx(-1.0)
        assert set(metrics) == {"pg_clipfrac", "pg_clipfrac_lower", "ppo_kl"}


def test_register_and_reject_duplicates():
    @register_policy_loss("unit_test_loss")
    def custom(logprobs, old_logprobs, advantages, mask, **kw):
        return policy_loss(logprobs, old_logprobs, advantages, mask, **kw)

    try:
        assert get_policy_loss("unit_test_loss") is custom
        with pytest.raises(ValueError, match="already registered"):
            register_policy_loss("unit_test_loss")(policy_loss)
    finally:
        POLICY_LOSSES.pop("unit_test_loss")
