"""The multirun launcher: each job its own process group, the user's sweep on the real CLI,
jobs with different device counts, and the SLURM launcher config."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from sfpo_lab.config import register_schema
from sfpo_lab.run.launcher import (
    MULTIRUN_SUMMARY_FILE,
    config_flags,
    format_table,
    hydra_passthrough,
    job_command,
    job_processes,
    job_row,
    read_return_value,
    report_jobs,
    wrote_summary_since,
)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
FAST = [
    "iterations=2",
    "data.batch_size=4",
    "rollout.n=4",
    "rollout.max_new_tokens=6",
    "update.micro_batch_size=16",
    "val.every=0",
    "val.limit=4",
    "val.n=1",
    "model.warmup.steps=5",
    "checkpoint.every=0",
]
register_schema()
DIST = pytest.mark.distributed


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize(("trainer", "expected"), [({}, 1), ({"devices": 4}, 4)])
def test_job_processes_follow_trainer_devices(trainer, expected):
    assert job_processes(OmegaConf.create({"trainer": trainer})) == expected


@pytest.mark.parametrize(
    ("trainer", "match"),
    [({"devices": 2, "num_nodes": 2}, "trainer.num_nodes=2"), ({"devices": "auto"}, "devices")],
)
def test_job_processes_refuse_what_one_node_cannot_run(trainer, match):
    with pytest.raises(ValueError, match=match):
        job_processes(OmegaConf.create({"trainer": trainer}))


def test_sweep_only_hydra_overrides_are_not_passed_to_jobs():
    given = [
        "hydra.sweep.dir=/x",
        "hydra/launcher=torchrun",
        "hydra.launcher.env.A=1",
        "hydra.job_logging.root.level=DEBUG",
        "hydra.verbose=true",
    ]
    assert hydra_passthrough(given) == ["hydra.job_logging.root.level=DEBUG", "hydra.verbose=true"]


def test_job_command_uses_torchrun_only_for_several_devices(tmp_path):
    one = job_command("train.py", ["sfpo.K=3"], tmp_path, 1, python="py")
    assert one == ["py", "train.py", "sfpo.K=3", f"hydra.run.dir={tmp_path}"]
    two = job_command("train.py", ["sfpo.K=3"], tmp_path, 2, config_name="train", python="py")
    assert two[:5] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert two[5:] == [
        "train.py",
        "--config-name",
        "train",
        "sfpo.K=3",
        f"hydra.run.dir={tmp_path}",
    ]


def test_config_dir_flags_are_passed_to_every_job():
    argv = ["-m", "--config-dir", "/x/conf", "-cp=rel", "sfpo.K=3", "--config-name", "train"]
    assert config_flags(argv) == ["--config-dir", "/x/conf", "-cp=rel"]


def test_return_value_is_read_from_the_job_summary(tmp_path):
    assert read_return_value(tmp_path) is None
    (tmp_path / "summary.json").write_text(json.dumps({"return_value": 0.25}))
    assert read_return_value(tmp_path) == 0.25
    (tmp_path / "summary.json").write_text("{truncated")
    assert read_return_value(tmp_path) is None


def _fake_job(job_dir: Path, last: float, vals: list[float], stop: int | None) -> Path:
    """A finished job's files as train.py leaves them: summary.json and metrics.csv."""
    job_dir.mkdir(parents=True)
    summary = {"val_avg_last": last, "stop_step": stop, "wall_clock_s": 12.5}
    (job_dir / "summary.json").write_text(json.dumps({"return_value": last, "summary": summary}))
    rows = ["step,train/reward,val/avg"] + [f"{i},,{v}" for i, v in enumerate(vals)]
    rows.insert(2, "1,0.5,")  # an iteration row between two validations
    (job_dir / "metrics.csv").write_text("\n".join(rows) + "\n")
    return job_dir


def test_multirun_table_and_csv_from_the_jobs_summaries(tmp_path, capsys):
    a = _fake_job(tmp_path / "0", 31.25, [16.0, 40.5, 31.25], 12)
    b = _fake_job(tmp_path / "1", 20.0, [18.0, 20.0], None)
    rows = [
        job_row(0, ["sfpo.K=3", "sfpo.alpha=0.3", "seed=0"], a, "completed", 61.04),
        job_row(1, ["sfpo.K=7", "sfpo.alpha=0.3", "seed=0"], b, "completed", 70.0),
        job_row(
            2, ["sfpo.K=3", "sfpo.alpha=0.6", "seed=0"], tmp_path / "2", "failed (exit 1)", 3.0
        ),
    ]
    path = report_jobs(tmp_path, rows)
    assert path == tmp_path / MULTIRUN_SUMMARY_FILE
    got = list(csv.DictReader(path.open()))
    assert [
        (r["job"], r["status"], r["val_avg_last"], r["val_avg_best"], r["stop_step"]) for r in got
    ] == [
        ("0", "completed", "31.25", "40.5", "12"),
        ("1", "completed", "20.0", "20.0", ""),
        ("2", "failed (exit 1)", "", "", ""),
    ]
    assert [(r["train_s"], r["job_s"], r["overrides"]) for r in got][0] == (
        "12.5",
        "61.0",
        "sfpo.K=3 sfpo.alpha=0.3 seed=0",
    )
    assert format_table(rows).splitlines() == [
        "job  status           val_avg_last  val_avg_best  stop_step  train_s  job_s  overrides",
        "0    completed        31.2          40.5          12         12.5     61.0   sfpo.K=3 sfpo.alpha=0.3",
        "1    completed        20.0          20.0          -          12.5     70.0   sfpo.K=7 sfpo.alpha=0.3",
        "2    failed (exit 1)  -             -             -          -        3.0    sfpo.K=3 sfpo.alpha=0.6",
    ]
    assert format_table(rows) in capsys.readouterr().out


def test_a_summary_counts_only_when_this_launch_wrote_it(tmp_path):
    """A job that exits 0 without a summary (stopped by a signal sent to it alone) is not
    completed, and an earlier launch's summary is neither deleted nor taken for this one's."""
    start = time.time() - 1.0
    assert not wrote_summary_since(tmp_path, start)  # exited 0, wrote nothing
    old = tmp_path / "summary.json"
    old.write_text(json.dumps({"return_value": 50.0}))
    os.utime(old, (start - 100, start - 100))  # left by an earlier launch
    assert not wrote_summary_since(tmp_path, start)
    assert read_return_value(tmp_path) == 50.0  # still there, untouched
    old.write_text(json.dumps({"return_value": 25.0}))  # this launch's result
    assert wrote_summary_since(tmp_path, start)


def test_torchrun_launcher_is_the_default_and_slurm_composes():
    cfg = _compose([])
    assert cfg.hydra.launcher._target_ == "hydra_plugins.sfpo_lab_launcher.TorchrunLauncher"
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _compose(["hydra/launcher=slurm", "trainer=fsdp", "trainer.num_nodes=2"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 8, 8)


def test_hydra_loads_the_launcher_plugin():
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    names = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Launcher)}
    assert "hydra_plugins.sfpo_lab_launcher.TorchrunLauncher" in names


def _sweep_cmd(tmp_path: Path, *overrides: str) -> tuple[list[str], dict, Path]:
    env = dict(os.environ, OMP_NUM_THREADS="1", SFPO_CACHE_DIR=str(tmp_path / "cache"))
    cwd = tmp_path / "cwd"  # a re-run sweep would write outputs/ here
    cwd.mkdir(exist_ok=True)
    cmd = [sys.executable, str(REPO / "train.py"), "-m", *FAST, *overrides]
    cmd.append(f"hydra.sweep.dir={tmp_path / 'sweep'}")
    return cmd, env, cwd


def _multirun(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd, env, cwd = _sweep_cmd(tmp_path, *overrides)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert not any(cwd.iterdir()), f"stray outputs: {list(cwd.iterdir())}"
    return proc


def _job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: int(p.name))


def _last_iteration(job: Path) -> int:
    rows = list(csv.DictReader((job / "metrics.csv").open()))
    return max(int(float(r["train/iteration"])) for r in rows if r.get("train/iteration"))


@pytest.mark.slow
def test_users_sweep_runs_six_jobs_each_with_metrics_and_wandb_run(tmp_path):
    """`python train.py -m sfpo.K=3,7 sfpo.alpha=0.3,0.6,1.0` (small step counts)."""
    _multirun(tmp_path, "sfpo.K=3,7", "sfpo.alpha=0.3,0.6,1.0", "wandb.mode=offline")
    jobs = _job_dirs(tmp_path / "sweep")
    assert [j.name for j in jobs] == [str(i) for i in range(6)]
    seen = set()
    for job in jobs:
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        seen.add((cfg.sfpo.K, cfg.sfpo.alpha))
        assert _last_iteration(job) == 2
        rows = csv.DictReader((job / "metrics.csv").open())
        alphas = {float(r["sfpo/alpha"]) for r in rows if r.get("sfpo/alpha")}
        assert alphas == {cfg.sfpo.alpha}
        assert list((job / "wandb").glob("offline-run-*/run-*.wandb")), f"no W&B run in {job}"
        assert isinstance(read_return_value(job), float)
    assert seen == {(k, a) for k in (3, 7) for a in (0.3, 0.6, 1.0)}
    table = list(csv.DictReader((tmp_path / "sweep" / MULTIRUN_SUMMARY_FILE).open()))
    assert [r["status"] for r in table] == ["completed"] * 6
    assert [r["val_avg_last"] for r in table] == [str(read_return_value(j)) for j in jobs]
    cells = {tuple(w for w in r["overrides"].split() if w.startswith("sfpo.")) for r in table}
    assert cells == {(f"sfpo.K={k}", f"sfpo.alpha={a}") for k in (3, 7) for a in (0.3, 0.6, 1.0)}


@pytest.mark.slow
@pytest.mark.distributed
def test_jobs_with_different_device_counts_each_get_their_own_group(tmp_path):
    """devices=2 then devices=1 on CPU (gloo, FSDP2; DDP was run the same way by hand): no
    re-run sweep, no hang, both complete."""
    over = ["trainer.strategy=fsdp", "trainer.devices=2,1", "logger=csv"]
    proc = _multirun(tmp_path, *over)
    assert "[2 process(es)]" in proc.stdout + proc.stderr
    jobs = _job_dirs(tmp_path / "sweep")
    assert len(jobs) == 2
    for job, devices in zip(jobs, (2, 1), strict=True):
        assert OmegaConf.load(job / ".hydra" / "config.yaml").trainer.devices == devices
        assert _last_iteration(job) == 2
        assert json.loads((job / "summary.json").read_text())["summary"]["iterations"] == 2


def test_optuna_sweeper_config_composes_when_installed():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = _compose(["hydra/sweeper=optuna_k_alpha"])
    sweeper = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    assert sweeper["direction"] == "maximize"
    assert set(sweeper["params"]) == {"sfpo.K", "sfpo.alpha"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("devices", "sig"), [(1, signal.SIGTERM), pytest.param(2, signal.SIGUSR1, marks=DIST)]
)
def test_preempted_sweep_stops_and_the_same_command_resumes_it(tmp_path, devices, sig):
    """A signal to the sweep during job #0: every rank of job #0 checkpoints and exits 0 (under
    torchrun too), job #1 is not started; the same command with ckpt_path=last finishes both."""
    over = ["iterations=4", "checkpoint.every=1", "logger=csv", "ckpt_path=last", "seed=0,1"]
    if devices > 1:
        over += ["trainer.strategy=fsdp", f"trainer.devices={devices}"]
    cmd, env, cwd = _sweep_cmd(tmp_path, *over)
    log = (tmp_path / "sweep.log").open("w")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    first = tmp_path / "sweep" / "0"
    deadline = time.monotonic() + 600
    while not (first / "iter-000001.ckpt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, (
            tmp_path / "sweep.log"
        ).read_text()
        time.sleep(0.2)
    proc.send_signal(sig)
    assert proc.wait(timeout=600) == 0, (tmp_path / "sweep.log").read_text()[-4000:]
    assert not (tmp_path / "sweep" / "1").exists(), "a job was started after the signal"
    stopped_at = _last_iteration(first)
    assert 1 <= stopped_at < 4 and (first / "last.ckpt").exists()  # a file, or a link to shards
    assert not (first / "summary.json").exists()
    _multirun(tmp_path, *over)
    for job in _job_dirs(tmp_path / "sweep"):
        assert _last_iteration(job) == 4
        assert json.loads((job / "summary.json").read_text())["summary"]["iterations"] == 4
    # once more: every job is finished, said by the checks run in the sweep, no job process
    out = _multirun(tmp_path, *over)
    text = out.stdout + out.stderr
    assert text.count("is finished: iteration 4 of 4") == 2, text[-3000:]
    assert text.count("no process started") == 2, text[-3000:]
    table = list(csv.DictReader((tmp_path / "sweep" / MULTIRUN_SUMMARY_FILE).open()))
    assert [r["status"] for r in table] == ["completed"] * 2


@pytest.mark.slow
def test_help_lists_every_config_group_with_its_options_and_the_common_overrides():
    """`python train.py --help` (the sfpo help template; `hydra/help=sfpo` also works once
    conf/train.yaml selects it)."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "hydra/help=sfpo", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = proc.stdout.splitlines()
    groups = sorted(
        str(d.relative_to(CONF))
        for d in CONF.rglob("*")
        if d.is_dir() and not str(d.relative_to(CONF)).startswith("hydra")
    )
    assert len(groups) >= 12
    for group in groups:
        options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}" in lines, group
    for override in (
        "experiment=",
        "model=",
        "algorithm=",
        "loss=",
        "sfpo.K=",
        "sfpo.alpha=",
        "iterations=",
        "ckpt_path=last",
        "-m",
    ):
        assert any(word.startswith(override) for word in proc.stdout.split()), override
    assert "${" not in proc.stdout  # every interpolation of the template resolved
