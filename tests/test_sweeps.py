"""Every W&B sweep config validates offline, and every run it proposes composes with Hydra.

Uses W&B's open-source sweep engine (`sweeps`, installed ``--no-deps`` with ``jsonref``) and
wandb's own agent helper for the command line, so a typo in a key or a value that ``str()``
turns into something Hydra cannot parse fails here instead of on the cluster.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

import sweeps  # make setup: pip install --no-deps sweeps jsonref (no silent skip)
from sfpo_lab.config import register_schema, to_run_config
from sweeps import RunState, SweepRun

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
EXPECTED = {"k_alpha", "slow_correction", "entropy_control", "alpha_decay", "seeds"}
RANDOM_RUNS = 12
register_schema()


def _agent_command(cfg: dict, run: SweepRun) -> list[str]:
    """The argv wandb's agent would run (mirrors wandb_agent.Agent._command_run)."""
    sweep_vars = create_sweep_command_args({"args": run.config})
    sweep_vars.update(interpreter=["python"], program=[cfg["program"]], env=["/usr/bin/env"])
    argv: list[str] = []
    for c in create_sweep_command(list(cfg["command"])):
        c = str(c)
        argv += sweep_vars.get(c[2:-1]) or [] if c.startswith("${") and c.endswith("}") else [c]
    return argv


def _expand(cfg: dict) -> list[SweepRun]:
    runs: list[SweepRun] = []
    random.seed(0)  # the engine's random search draws from numpy and random
    np.random.seed(0)
    limit = RANDOM_RUNS if cfg["method"] != "grid" else 10_000
    while len(runs) < limit:
        nxt = sweeps.next_run(cfg, runs, validate=True)
        if nxt is None:
            break
        nxt.state = RunState.finished
        nxt.summary_metrics = {cfg["metric"]["name"]: 0.5}
        runs.append(nxt)
    return runs


def test_every_ablation_has_a_sweep():
    assert {p.stem for p in SWEEPS} == EXPECTED


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_validates_and_every_run_composes(path):
    cfg = yaml.safe_load(path.read_text())
    assert sweeps.schema_violations_from_proposed_config(cfg) == []
    assert cfg["program"] == "train.py" and (ROOT / cfg["program"]).is_file()
    assert cfg["metric"]["name"] == "val/avg"
    assert cfg["command"][-1] == "${args_no_hyphens}"
    runs = _expand(cfg)
    if cfg["method"] == "grid":
        n = 1
        for spec in cfg["parameters"].values():
            n *= len(spec.get("values", [None]))
        assert len(runs) == n
    else:
        assert len(runs) == RANDOM_RUNS
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for run in runs:
            argv = _agent_command(cfg, run)
            assert argv[:3] == ["/usr/bin/env", "python", "train.py"], argv
            overrides = argv[3:]
            run_cfg = to_run_config(compose("train", overrides=[*overrides, "paths.output_dir=/x"]))
            for key, spec in run.config.items():  # each value reached the typed config
                want = spec["value"]
                got = run_cfg
                for part in key.split("."):
                    got = getattr(got, part) if not isinstance(got, dict) else got[part]
                assert got == want, (path.stem, key, got, want)


@pytest.mark.parametrize(
    ("name", "methods"), [("seeds", 2), ("slow_correction", 2), ("k_alpha", 1)]
)
def test_the_method_axis_is_the_algorithm_group(name, methods):
    """GRPO vs SFPO is swept as `algorithm` (never extras.method or alpha = 0 under SFPO)."""
    cfg = yaml.safe_load((ROOT / "sweeps" / f"{name}.yaml").read_text())
    assert "extras.method" not in cfg["parameters"]
    got = cfg["parameters"].get("algorithm", {"values": ["sfpo"]})["values"]
    assert len(got) == methods and set(got) <= {"grpo", "sfpo"}
    assert 0.0 not in cfg["parameters"].get("sfpo.alpha", {}).get("values", [])
