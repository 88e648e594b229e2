"""Every experiment (paper and toy scale) composes and validates, over its whole sweep grid."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from sfpo_lab.config import RunConfig, register_schema, to_run_config

CONF = Path(__file__).resolve().parents[1] / "conf"
EXP = CONF / "experiment"
NAMES = [
    "paper_main",
    "skywork",
    "ablation_k_alpha",
    "slow_correction",
    "entropy_control",
    "alpha_decay",
    "memory_profile",
]
ALL = sorted(p.relative_to(EXP).with_suffix("").as_posix() for p in EXP.rglob("*.yaml"))
register_schema()


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides)


def _grid(name: str) -> list[list[str]]:
    """All override lists of the experiment's ``hydra.sweeper.params`` grid (basic sweeper)."""
    params = OmegaConf.select(OmegaConf.load(EXP / f"{name}.yaml"), "hydra.sweeper.params")
    assert params, f"{name} has no hydra.sweeper.params grid"
    axes = [[f"{k}={v.strip()}" for v in str(vals).split(",")] for k, vals in params.items()]
    return [list(c) for c in itertools.product(*axes)]


def _run(name: str, extra: list[str]) -> RunConfig:
    return to_run_config(_compose([f"experiment={name}", "paths.output_dir=/tmp/x", *extra]))


def test_every_experiment_has_a_toy_twin():
    assert set(NAMES) <= set(ALL)
    assert {f"toy/{n}" for n in NAMES} <= set(ALL)
    assert set(ALL) == set(NAMES) | {f"toy/{n}" for n in NAMES}, "unexpected experiment file"


@pytest.mark.parametrize("name", ALL)
def test_experiment_is_global_and_composes(name):
    assert (EXP / f"{name}.yaml").read_text().startswith("# @package _global_")
    run = _run(name, [])
    assert run.extras["experiment"] == name.removeprefix("toy/")
    assert run.wandb.group and run.wandb.tags


@pytest.mark.parametrize("name", ALL)
def test_every_grid_point_validates(name):
    grid = _grid(name)
    for over in grid:
        run = _run(name, over)
        for item in over:  # each swept value reached the typed config
            key, value = item.split("=", 1)
            if key == "model":
                assert run.model.name == value
            else:
                got = OmegaConf.select(OmegaConf.structured(run), key)
                assert str(got).lower() == value.lower() or float(got) == float(value), item


@pytest.mark.parametrize("name", [n for n in ALL if n.startswith("toy/")])
def test_toy_twins_run_on_cpu(name):
    run = _run(name, [])
    assert run.trainer.accelerator == "cpu" and run.data.kind == "toy"
    assert run.model.name_or_path is None and run.iterations <= 40


def test_paper_main_is_the_authors_table1_grid():
    cells = {}
    for over in _grid("paper_main"):
        run = _run("paper_main", over)
        assert run.data.batch_size == 256 and run.rollout.n == 8 and run.iterations == 400
        assert (run.sfpo.K, run.sfpo.entropy_control.window) == (3, 30)
        cells[(run.model.name, run.extras["method"])] = run.sfpo.alpha
    assert len(cells) == 10
    for (model, method), alpha in cells.items():
        expected = 0.0 if method == "grpo" else (0.9 if model == "qwen3-4b-base" else 0.8)
        assert alpha == expected, (model, method)


def test_ablation_grid_covers_k_alpha_and_grpo():
    points = {
        (r.sfpo.K, r.sfpo.alpha)
        for r in (_run("ablation_k_alpha", o) for o in _grid("ablation_k_alpha"))
    }
    assert points == {(k, a) for k in (3, 7) for a in (0.0, 0.3, 0.6, 0.8, 1.0)}


def test_skywork_points_at_the_hub_and_aime():
    run = _run("skywork", [])
    assert run.data.train_files == ["Skywork/Skywork-OR1-RL-Data"]
    assert run.val.benchmarks == ["aime24", "aime25"] and run.extras["data_verified"] is False
