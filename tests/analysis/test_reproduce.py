"""The one reproduction command (analysis/reproduce.py): its plan is paired and powered and
holds no replica, and each run's state decides what a rerun does (skip / resume / restart)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from analysis import reproduce
from analysis.identity import effective_config, identity
from sfpo_lab.config import register_schema, to_run_config

CONF = Path(reproduce.REPO) / "conf"


def _tree(overrides: tuple[str, ...]) -> dict:
    register_schema()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=/tmp/x", *overrides])
    to_run_config(cfg)  # validates
    return OmegaConf.to_container(cfg, resolve=True)


def test_plan_is_paired_powered_and_has_no_replicas():
    runs = reproduce.plan()
    assert len({r.name for r in runs}) == len(runs)
    head = [r for r in runs if r.name.startswith("paper_main/")]
    assert len(head) == 30 and runs[:30] == head  # 10 seeds x GRPO / SFPO / GRPO-mu, first
    cells: dict[tuple[str, int], str] = {}
    by_condition: dict[str, set[int]] = {}
    for r in runs:  # one compose per condition: the seed only changes the seed
        condition, seed = r.name.rsplit("_s", 1)
        by_condition.setdefault(condition, set()).add(int(seed))
        if int(seed) == 0:
            tree = _tree(r.overrides)
            key = identity(effective_config(tree))
            assert key not in {k for k, _ in cells}, f"{r.name} replicates {cells}"
            cells[(key, 0)] = r.name
    assert all(len(s) >= 3 for s in by_condition.values()), by_condition
    assert {c: len(s) for c, s in by_condition.items() if c.startswith("paper_main/")} == {
        "paper_main/grpo": 10, "paper_main/sfpo": 10, "paper_main/grpo_mu": 10}  # fmt: skip


def _summary(run_dir: Path, iterations: int) -> None:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(f"iterations: {iterations}\n")
    (run_dir / "summary.json").write_text(json.dumps({"summary": {"iterations": iterations}}))


def test_state_decides_skip_resume_or_restart(tmp_path):
    assert reproduce.state(tmp_path / "absent") == "new"
    done = tmp_path / "done"
    _summary(done, 100)
    assert reproduce.state(done) == "done"
    extended = tmp_path / "extended"  # the plan now asks for more iterations than it ran
    _summary(extended, 50)
    (extended / ".hydra" / "config.yaml").write_text("iterations: 100\n")
    (extended / "last.ckpt").write_bytes(b"weights")
    assert reproduce.state(extended) == "resume"
    stale = tmp_path / "stale"
    (stale / ".hydra").mkdir(parents=True)
    (stale / "metrics.csv").write_text("step\n1\n")
    assert reproduce.state(stale) == "stale"
    moved = reproduce.move_aside(stale)
    assert (
        moved.name == "stale.interrupted-1" and (moved / "metrics.csv").read_text() == "step\n1\n"
    )
    stale.mkdir()
    assert reproduce.move_aside(stale).name == "stale.interrupted-2"


@pytest.mark.parametrize("has_ckpt", [False, True])
def test_launch_resumes_from_last_and_never_calls_an_unfinished_run_done(tmp_path, has_ckpt):
    """A stand-in interpreter that only writes its argv (no training): the command line the
    runner builds, and that a run exiting 0 without a current summary is not counted done."""
    fake = tmp_path / "fake_python"
    fake.write_text(f"#!{sys.executable}\nimport sys\nprint(' '.join(sys.argv[1:]))\n")
    fake.chmod(0o755)
    run = reproduce.Run("paper_main/sfpo_s3", ("experiment=repro/paper_main", "seed=3"))
    run_dir = tmp_path / "root" / run.name
    if has_ckpt:
        run_dir.mkdir(parents=True)
        (run_dir / "last.ckpt").write_bytes(b"w")
    _, rc, _ = reproduce.launch(run, tmp_path / "root", str(fake), {})
    argv = (tmp_path / "root" / f"{run.name}.log").read_text().split()
    assert rc == -1  # exited 0 but wrote no summary: not finished
    assert argv[:3] == ["train.py", "experiment=repro/paper_main", "seed=3"]
    assert ("ckpt_path=last" in argv) is has_ckpt and f"hydra.run.dir={run_dir}" in argv
    assert "checkpoint.every=10" in argv  # an interrupted run has something to resume from


def test_plan_covers_the_k_alpha_grid():
    grid = OmegaConf.load(
        CONF / "experiment" / "repro" / "ablation_k_alpha.yaml"
    ).hydra.sweeper.params
    cells = {(int(k), float(a)) for k in str(grid["sfpo.K"]).split(",") for a in str(grid["sfpo.alpha"]).split(",")}  # fmt: skip
    planned = {(3, 0.8), (3, 1.0)}  # the headline SFPO and GRPO-mu runs
    for r in reproduce.plan():
        if r.name.startswith("k_alpha/"):
            over = dict(o.split("=", 1) for o in r.overrides if o.startswith("sfpo."))
            planned.add((int(over["sfpo.K"]), float(over["sfpo.alpha"])))
    assert planned == cells


def test_a_root_inside_the_collected_copy_is_refused_before_anything_is_deleted(capsys):
    for root in (reproduce.COLLECTED, reproduce.COLLECTED / "repro", reproduce.REPO / "paper_figures"):  # fmt: skip
        with pytest.raises(SystemExit) as err:
            reproduce.main(["--root", str(root), "--dry-run"])
        assert err.value.code == 2 and "overlaps" in capsys.readouterr().err
