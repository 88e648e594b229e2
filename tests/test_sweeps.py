"""Every W&B sweep config validates offline, every run it proposes composes with Hydra, and no
two runs of a sweep are the same run (the same effective config and seed).

Uses W&B's open-source sweep engine (`sweeps`, installed ``--no-deps`` with ``jsonref``) and
wandb's own agent helper for the command line, so a typo in a key or a value that ``str()``
turns into something Hydra cannot parse fails here instead of on the cluster.
"""

from __future__ import annotations

import copy
import random
import re
from pathlib import Path

import numpy as np
import pytest
import wandb.env
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

import sweeps  # make setup: pip install --no-deps sweeps jsonref (no silent skip)
from analysis.identity import effective_config, identity
from sfpo_lab.config import register_schema, to_run_config
from sfpo_lab.run.loggers import wandb_mode
from sweeps import RunState, SweepRun

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
EXPECTED = {
    "k_alpha",
    "slow_correction",
    "slow_correction_grpo",
    "entropy_control",
    "entropy_control_off",
    "alpha_decay",
    "alpha_decay_zero",
    "seeds",
}
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
    cells: dict[tuple[str, int], dict] = {}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for run in runs:
            argv = _agent_command(cfg, run)
            assert argv[:3] == ["/usr/bin/env", "python", "train.py"], argv
            overrides = argv[3:]
            composed = compose("train", overrides=[*overrides, "paths.output_dir=/x"])
            run_cfg = to_run_config(composed)
            tree = OmegaConf.to_container(composed, resolve=True)
            cell = (_key(tree), tree["seed"])  # the same effective config and seed = one run
            assert cell not in cells, (
                f"{path.stem}: duplicate cells {cells.get(cell)} and {run.config}"
            )
            cells[cell] = run.config
            for key, spec in run.config.items():  # each value reached the typed config
                want = spec["value"]
                got = run_cfg
                for part in key.split("."):
                    got = getattr(got, part) if not isinstance(got, dict) else got[part]
                assert got == want, (path.stem, key, got, want)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_an_agents_runs_log_online_and_the_sweep_file_says_so(path):
    """Item 6 of issue 25: the agent's command line for every proposed run, in the agent's
    environment (wandb.env names, as wandb/wandb_agent.py sets them), resolves to online."""
    cfg = yaml.safe_load(path.read_text())
    agent = {wandb.env.SWEEP_ID: "abc12345", wandb.env.RUN_ID: "run98765",
             wandb.env.SWEEP_PARAM_PATH: "wandb/sweep-abc12345/config-run98765.yaml"}  # fmt: skip
    for run in _expand(cfg)[:4]:
        overrides = _agent_command(cfg, run)[3:]
        assert wandb_mode("offline", overrides, agent)[0] == "online", overrides
    assert "runs started by `wandb agent` log ONLINE" in path.read_text()


@pytest.mark.parametrize(
    ("name", "methods"),
    [("seeds", ["grpo", "sfpo"]), ("slow_correction", ["sfpo"]),
     ("slow_correction_grpo", ["grpo"]), ("k_alpha", ["sfpo"])],
)  # fmt: skip
def test_the_method_axis_is_the_algorithm_group(name, methods):
    """GRPO vs SFPO is swept as `algorithm` (never extras.method or alpha = 0 under SFPO)."""
    cfg = yaml.safe_load((ROOT / "sweeps" / f"{name}.yaml").read_text())
    assert "extras.method" not in cfg["parameters"]
    spec = cfg["parameters"].get("algorithm", {"values": ["sfpo"]})
    assert spec.get("values", [spec.get("value")]) == methods
    assert 0.0 not in cfg["parameters"].get("sfpo.alpha", {}).get("values", [])


def test_the_two_arms_of_a_condition_are_disjoint():
    """A condition split into two sweeps (so that neither crosses a setting the other arm does
    not read): both run the same experiment and fix different values of the condition."""
    arms = {
        ("entropy_control", "entropy_control_off"): "sfpo.entropy_control.enabled",
        ("alpha_decay", "alpha_decay_zero"): "sfpo.decay",
        ("slow_correction", "slow_correction_grpo"): "algorithm",
    }
    for (a, b), key in arms.items():
        ca, cb = (yaml.safe_load((ROOT / "sweeps" / f"{n}.yaml").read_text()) for n in (a, b))
        assert ca["command"] == cb["command"]
        assert ca["parameters"][key]["value"] != cb["parameters"][key]["value"], (a, b)


def _key(tree: dict) -> str:
    return identity(effective_config(tree))


def test_the_identity_sees_the_old_duplicates():
    """The no-duplicate check can fail: the old grids' duplicate cells (trigger off x tau,
    decay=zero x decay_steps, GRPO x K / slow) map to one effective config."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        composed = compose("train", overrides=["experiment=toy/paper_main", "paths.output_dir=/x"])
    sfpo = OmegaConf.to_container(composed, resolve=True)

    def key(**sets: object) -> str:
        tree = copy.deepcopy(sfpo)
        for dotted, value in sets.items():
            *parents, leaf = dotted.split("__")
            node = tree
            for p in parents:
                node = node[p]
            node[leaf] = value
        return _key(tree)

    off = {"sfpo__entropy_control__enabled": False}
    assert key(**off, sfpo__entropy_control__tau=0.5) == key(**off)
    assert key(**off, sfpo__decay="linear", sfpo__decay_steps=3) == key(**off)
    assert key(sfpo__entropy_control__tau=0.5) != key()
    assert key(sfpo__decay="zero", sfpo__decay_steps=3) == key(sfpo__decay_steps=0)
    linear = {"sfpo__decay": "linear"}
    assert key(**linear, sfpo__decay_steps=3) != key(**linear, sfpo__decay_steps=5)
    grpo = {"algorithm": "grpo", "sfpo__alpha": 0.0}
    assert key(**grpo, sfpo__slow_correction=False, sfpo__K=7) == key(**grpo)
    assert key(sfpo__slow_correction=False) != key() != key(sfpo__K=7)
    assert key(seed=5, wandb__group="x", checkpoint__every=3) == key()
    assert key(val__every=1) != key() != key(data__batch_size=8)


_OPTUNA_TASK = """
import sys

import hydra

from sfpo_lab.config import register_schema, to_run_config

register_schema()


@hydra.main(config_path=sys.argv.pop(1), config_name="train", version_base="1.3")
def main(cfg) -> float:
    run = to_run_config(cfg)  # each trial's config is validated as train.py does
    return -((run.sfpo.alpha - 0.55) ** 2) - 0.01 * run.sfpo.K


main()
"""


@pytest.mark.slow
def test_optuna_sweeper_runs_its_trials(tmp_path):
    """hydra/sweeper=optuna_k_alpha end to end (dev extra: hydra-optuna-sweeper 1.3, optuna 2):
    the real sweeper proposes K and alpha with TPE, Hydra's basic launcher composes and runs each
    trial (train.py's validation, a closed-form objective instead of training), and the study's
    best is the best of the trials run."""
    import subprocess
    import sys

    from hydra_plugins.hydra_optuna_sweeper import optuna_sweeper  # noqa: F401 (no skip)

    script = tmp_path / "task.py"
    script.write_text(_OPTUNA_TASK)
    sweep = tmp_path / "sweep"
    over = ["-m", "hydra/sweeper=optuna_k_alpha", "hydra/launcher=basic",
            "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={sweep}", "wandb.mode=disabled"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(script), str(CONF), *over], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    values = []
    # the launcher logs each trial's overrides ("#0 : sfpo.K=2 sfpo.alpha=0.68 ..."); the
    # run dirs hold no .hydra/ here (hydra.output_subdir=null: the runner writes the config)
    for line in re.findall(r"#\d+ : (.*)", proc.stdout + proc.stderr):
        params = dict(o.split("=", 1) for o in line.split())
        K, alpha = int(params["sfpo.K"]), float(params["sfpo.alpha"])
        assert K in {1, 2, 3, 5, 7} and 0.1 <= alpha <= 1.0, params
        values.append((-((alpha - 0.55) ** 2) - 0.01 * K, K, alpha))
    assert len(values) == 4
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = max(values)
    assert result["best_value"] == pytest.approx(best[0])
    assert result["best_params"] == {"sfpo.K": best[1], "sfpo.alpha": pytest.approx(best[2])}


def test_multirun_summary_lists_every_batch_of_a_batched_sweeper(tmp_path, monkeypatch):
    """Item 7 of issue 25: Optuna's sweeper calls launcher.launch() once per batch of trials
    (initial_job_idx = the first job's number); multirun_summary.csv keeps every batch."""
    import csv

    from sfpo_lab.run.launcher import MULTIRUN_SUMMARY_FILE, TorchrunLauncherBase, job_row

    launcher = TorchrunLauncherBase()
    sweep = {"dir": str(tmp_path)}
    launcher.config = OmegaConf.create({"hydra": {"sweep": sweep, "hydra_logging": None, "verbose": False}})  # fmt: skip
    launcher.hydra_context = object()  # type: ignore[assignment]

    def run_one(overrides: list[str], idx: int) -> None:  # the job itself is not the point
        launcher._table.append(job_row(idx, overrides, tmp_path / str(idx), "failed (exit 1)", 1.0))

    monkeypatch.setattr(launcher, "_run_one", run_one)
    launcher.launch([["sfpo.K=1"], ["sfpo.K=2"]], initial_job_idx=0)
    launcher.launch([["sfpo.K=3"], ["sfpo.K=5"]], initial_job_idx=2)
    rows = list(csv.DictReader((tmp_path / MULTIRUN_SUMMARY_FILE).open()))
    assert [(r["job"], r["overrides"]) for r in rows] == [
        ("0", "sfpo.K=1"), ("1", "sfpo.K=2"), ("2", "sfpo.K=3"), ("3", "sfpo.K=5")]  # fmt: skip
