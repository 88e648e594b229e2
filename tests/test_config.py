"""Every config composes; bad values fail with a message naming the setting."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from sfpo_lab.algos import get_advantage_estimator, get_policy_loss
from sfpo_lab.config import ConfigError, register_schema, to_run_config

CONF = Path(__file__).resolve().parents[1] / "conf"
register_schema()


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=False)


def _group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_default_composes_to_sfpo_on_toy():
    run = to_run_config(_compose(["paths.output_dir=/tmp/x"]))
    assert (run.sfpo.K, run.sfpo.alpha) == (3, 0.8)
    assert run.sfpo.entropy_control.window == 30 and run.sfpo.entropy_control.mode == "upper"
    assert run.data.kind == "toy" and run.model.name_or_path is None


@pytest.mark.parametrize(
    "group", ["model", "algorithm", "loss", "data", "rollout", "trainer", "logger"]
)
def test_every_group_option_composes(group):
    for option in _group_options(group):
        if group == "algorithm" and option in ("dapo", "drgrpo"):
            continue  # objectives, not methods: a ConfigError (tests/test_experiments.py)
        over = [f"{group}={option}", "paths.output_dir=/tmp/x"]
        if group == "trainer" and option in ("ddp", "fsdp"):
            over.append("data.batch_size=16")
        run = to_run_config(_compose(over))
        assert run is not None


def test_grpo_is_alpha_zero():
    assert to_run_config(_compose(["algorithm=grpo", "paths.output_dir=/x"])).sfpo.alpha == 0.0


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("sfpo.K=-1", "sfpo.K"),
        ("sfpo.alpha=1.5", "sfpo.alpha"),
        ("rollout.n=0", "rollout.n"),
        ("update.micro_batch_size=7", "update.micro_batch_size"),
        ("update.ppo_mini_batches=3", "update.ppo_mini_batches"),
        ("sfpo.entropy_control.window=1", "sfpo.entropy_control.window"),
        ("sfpo.entropy_control.tau=0", "sfpo.entropy_control.tau"),
        ("sfpo.decay=linear", "sfpo.decay_steps"),
        ("wandb.mode=sometimes", "wandb.mode"),
        ("iterations=0", "iterations"),
        ("loss.policy_loss=dapo", "loss.policy_loss='dapo'"),
        ("loss.clip_c=1.0", "loss.clip_c"),
        ("model.sfpo_alpha=0", "model.sfpo_alpha"),
        ("optim.impl=fast", "optim.impl"),
    ],
)
def test_bad_values_name_the_setting(override, names):
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        to_run_config(_compose([override, "paths.output_dir=/x"]))


def test_wrong_type_is_rejected_at_compose_time():
    with pytest.raises(Exception, match="sfpo.K"):
        _compose(["sfpo.K=three"])


def test_unknown_key_is_rejected():
    with pytest.raises(Exception, match="Kk"):
        _compose(["sfpo.Kk=3"])


@pytest.mark.parametrize(
    ("overrides", "lengths"),
    [
        (["model=qwen2.5-math-1.5b"], (1536, 2560, 2560)),  # over data=toy's 32, rollout=hf's 16
        (["model=ds-r1-distill-qwen-7b", "data=dapo_math"], (2048, 6144, 6144)),
        (["data=dapo_math", "rollout=vllm", "model=qwen3-4b-base"], (2048, 6144, 6144)),
        (["model=qwen3-4b-base", "rollout.max_new_tokens=100"], (2048, 100, 6144)),
        (["model=qwen2.5-math-7b", "debug=fast"], (1536, 8, 2560)),
    ],
)
def test_a_models_lengths_win_over_the_groups_and_the_command_line_over_all(overrides, lengths):
    run = to_run_config(_compose([*overrides, "paths.output_dir=/x"]))
    assert (run.data.max_prompt_len, run.rollout.max_new_tokens, run.val.max_new_tokens) == lengths


def test_policy_loss_kwargs_are_what_the_loss_gets():
    lc = to_run_config(_compose(["paths.output_dir=/x"])).loss
    assert lc.policy_loss_kwargs() == {
        "clip_low": 0.2,
        "clip_high": 0.2,
        "clip_c": None,
        "agg": "token-mean",
    }
    lc = to_run_config(_compose(["loss=drgrpo", "loss.clip_c=3", "paths.output_dir=/x"])).loss
    assert lc.policy_loss_kwargs() == {
        "clip_low": 0.2,
        "clip_high": 0.2,
        "clip_c": 3.0,
        "agg": "seq-mean-token-sum-norm",
        "loss_scale_factor": 16.0,  # rollout=hf's response cap
    }


# --- objective presets: compose -> to_run_config -> registry -> loss, on one fixed batch ------
# One group of G = 4 (rewards 1, 0, 0, 1: mean 1/2, unbiased std sqrt(1/3)); responses of
# 5, 2, 3, 4 tokens: the two rewarded ones hold 9 tokens, the others 5.
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
LENGTHS = [5, 2, 3, 4]
A_GRPO = 0.5 / (math.sqrt(1 / 3) + 1e-6)


def _loss_cfg(*overrides: str):
    return to_run_config(_compose([*overrides, "paths.output_dir=/x"])).loss


def _mask(width: int) -> torch.Tensor:
    return torch.tensor([[1.0] * n + [0.0] * (width - n) for n in LENGTHS], dtype=torch.float64)


def _objective(lc, ratios: torch.Tensor, mask: torch.Tensor, adv=None, **extra) -> float:
    """The trainer's call: configured estimator, then get_policy_loss(lc.policy_loss)(...,
    **lc.policy_loss_kwargs(), **global denominators), on the whole batch as one micro-batch."""
    if adv is None:
        adv, _ = get_advantage_estimator(lc.advantage)(REWARDS, group_size=4)
    old = torch.zeros_like(mask)
    denom = {"batch_num_tokens": mask.sum(), "global_batch_size": 4, "dp_size": 1}
    kw = {**lc.policy_loss_kwargs(), **extra}
    loss, _ = get_policy_loss(lc.policy_loss)(ratios.log(), old, adv, mask, **kw, **denom)
    return loss.item()


def _ratios(pos: float, neg: float, width: int = 5) -> torch.Tensor:
    """ratio `pos` on the rewarded responses (A > 0), `neg` on the others."""
    rows = [pos if r > 0 else neg for r in REWARDS.tolist()]
    return torch.tensor(rows, dtype=torch.float64)[:, None].expand(4, width).clone()


def test_presets_differ_from_grpo_only_in_their_own_settings():
    base = dataclasses.asdict(_loss_cfg())
    changed = {
        name: {k for k, v in dataclasses.asdict(_loss_cfg(f"loss={name}")).items() if base[k] != v}
        for name in ("dapo", "drgrpo")
    }
    assert changed == {
        "dapo": {"clip_high"},
        "drgrpo": {"advantage", "agg", "loss_scale_factor"},
    }
    for algorithm in ("grpo", "sfpo"):  # either method takes any objective
        assert _loss_cfg(f"algorithm={algorithm}", "loss=dapo").clip_high == 0.28


def test_dapo_clip_higher_changes_the_loss_where_the_ratio_is_in_1_2_to_1_28():
    grpo, dapo = _loss_cfg(), _loss_cfg("loss=dapo")
    mask = _mask(5)
    r = _ratios(1.25, 1.0)  # rewarded tokens: GRPO clips at 1.2, DAPO keeps 1.25
    assert _objective(grpo, r, mask) == pytest.approx((9 * -1.2 + 5) * A_GRPO / 14, rel=1e-12)
    assert _objective(dapo, r, mask) == pytest.approx((9 * -1.25 + 5) * A_GRPO / 14, rel=1e-12)
    for pos, neg in ((1.1, 0.9), (1.15, 0.7), (0.5, 1.25)):  # same clip, or clip_low, or A < 0
        r = _ratios(pos, neg)
        assert _objective(dapo, r, mask) == _objective(grpo, r, mask), (pos, neg)


def test_drgrpo_divides_by_the_response_cap_not_the_longest_response():
    grpo, drgrpo = _loss_cfg(), _loss_cfg("loss=drgrpo", "rollout.max_new_tokens=8")
    assert drgrpo.loss_scale_factor == 8.0
    ones = _ratios(1.0, 1.0)
    # per-response token sums of -A (A = +-1/2, no std division): -2.5, 1, 1.5, -2 -> -2 / 4 / 8
    assert _objective(drgrpo, ones, _mask(5)) == pytest.approx(-2.0 / 4 / 8, rel=1e-12)
    assert _objective(grpo, ones, _mask(5)) == pytest.approx(-4 * A_GRPO / 14, rel=1e-12)
    # the batch's longest response grows (2 more padded columns): the divisor does not move
    wide = _ratios(1.0, 1.0, width=7)
    assert _objective(drgrpo, wide, _mask(7)) == _objective(drgrpo, ones, _mask(5))
    # ... which is what the preset fixes: without it verl's divisor is the padded width
    no_cap = {"loss_scale_factor": None}
    assert _objective(drgrpo, ones, _mask(5), **no_cap) == pytest.approx(-2.0 / 4 / 5)
    assert _objective(drgrpo, wide, _mask(7), **no_cap) == pytest.approx(-2.0 / 4 / 7)


def test_drgrpo_equals_grpo_where_it_should():
    grpo, drgrpo = _loss_cfg(), _loss_cfg("loss=drgrpo", "rollout.max_new_tokens=5")
    adv_g, _ = get_advantage_estimator(grpo.advantage)(REWARDS, group_size=4)
    adv_d, _ = get_advantage_estimator(drgrpo.advantage)(REWARDS, group_size=4)
    torch.testing.assert_close(adv_d * (A_GRPO / 0.5), adv_g, rtol=1e-12, atol=0)
    full = torch.ones(4, 5, dtype=torch.float64)  # every response at the cap
    r = _ratios(1.1, 0.9)
    assert _objective(drgrpo, r, full, adv_g) == pytest.approx(_objective(grpo, r, full, adv_g))
