"""Every config composes; bad values fail with a message naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

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


@pytest.mark.parametrize("group", ["model", "algorithm", "data", "rollout", "trainer", "logger"])
def test_every_group_option_composes(group):
    for option in _group_options(group):
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
