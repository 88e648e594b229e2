"""Preemption and requeue without residue, through the real CLI (issue 16 item 0c).

A 3-iteration run validates at 0, 2 and 3 (``val.every=2``: the end is not a validation
point). Each case drives a real signal (a probe callback signals its own process at a chosen
point, or the test sends it) and compares the summary, the metric rows and the run dir with an
uninterrupted run's: a stop in the last iteration is resumed into the same final validation;
``ckpt_path=last`` on a finished run changes nothing; a run dir has one live owner and a
crashed owner's lock is taken over; a refused resume or re-run changes no file (config
included); signals before training exit 0 and the requeued run equals the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from sfpo_lab.config import ConfigError, register_schema, to_run_config
from sfpo_lab.run.rundir import LOCK_FILE
from tests.test_reliability_resume import TINY, _env, finish, metric_rows, wait_until

REPO = Path(__file__).resolve().parents[1]
SMALL = [*TINY, "iterations=3", "val.every=2", "checkpoint.keep_last=3"]
PROBE = "tests.test_reliability_requeue.SignalProbe"
register_schema()


class SignalProbe(L.Callback):
    """Sends ``sig`` to its own process ``at``: ``init`` (trainer built, before fit),
    ``train_start`` (before the iteration-0 validation; user callbacks run first) or ``k``
    (the start of iteration k)."""

    def __init__(self, at: str, sig: str = "SIGUSR1") -> None:
        self.at, self.sig = str(at), signal.Signals[sig]
        if self.at == "init":
            self._send()

    def _send(self) -> None:
        os.kill(os.getpid(), self.sig)

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self.at == "train_start":
            self._send()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if self.at == str(pl_module.iteration + 1):
            self._send()


def launch(run: Path, cache: Path, *extra: str, at: str = "", sig: str = "SIGUSR1"):
    probe = [f"+callbacks.probe._target_={PROBE}", f"+callbacks.probe.at={at}"] if at else []
    probe += [f"+callbacks.probe.sig={sig}"] if at else []
    cmd = [sys.executable, "train.py", f"hydra.run.dir={run}", *SMALL, *probe, *extra]
    log = run.parent / f"{run.name}.{len(list(run.parent.glob(run.name + '.*.log')))}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(cache), stdout=fh, stderr=fh)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def run_cli(run: Path, cache: Path, *extra: str, at: str = "", sig: str = "SIGUSR1", rc=0):
    proc = launch(run, cache, *extra, at=at, sig=sig)
    finish(proc, expect=rc)
    return proc.log.read_text()


def summary(run: Path) -> dict[str, Any]:
    s = json.loads((run / "summary.json").read_text())["summary"]
    return {k: v for k, v in s.items() if k != "wall_clock_s"}


def snapshot(d: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in d.rglob("*") if p.is_file()}


def final_validation(ckpt: Path) -> int | None:
    c = torch.load(ckpt, map_location="cpu", weights_only=False)
    return c["callbacks"]["ValidationCallback"]["last_iteration"]


def in_process(run: Path, cache: Path, *extra: str) -> None:
    """``train()`` in this process, as ``train.py`` calls it (a second run into ``run``)."""
    from sfpo_lab.run.runner import train

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        over = [*SMALL, f"paths.output_dir={run}", f"paths.cache_dir={cache}", *extra]
        cfg = compose("train", overrides=over)
    train(to_run_config(cfg), {})


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "reliability_toy_base"  # shared with the resume tests


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> Path:
    run = tmp_path_factory.mktemp("requeue_reference") / "run"
    run_cli(run, cache)
    return run


@pytest.mark.slow
def test_stop_in_last_iteration_resumes_into_the_final_validation(tmp_path, cache, reference):
    """SIGUSR1 in iteration 3 (of 3): checkpoint at 3, exit 0, no summary; the requeued run
    validates at 3 and reports the uninterrupted summary; last.ckpt holds the final
    validation (both runs); ckpt_path=last once more says "finished" and touches nothing."""
    run = tmp_path / "run"
    out = run_cli(run, cache, "ckpt_path=last", at="3")
    assert "[preemption] SIGUSR1: saved" in out
    assert final_validation(run / "last.ckpt") == 2 and not (run / "summary.json").exists()
    run_cli(run, cache, "ckpt_path=last")
    assert summary(run) == summary(reference)
    assert metric_rows(run) == metric_rows(reference)
    assert final_validation(run / "last.ckpt") == 3 == final_validation(reference / "last.ckpt")
    before = snapshot(run)
    out = run_cli(run, cache, "ckpt_path=last")
    val = summary(reference)["val_avg_last"]
    lines = [ln for ln in out.splitlines() if "is finished" in ln]
    assert lines == [
        f"[resume] {run} is finished: iteration 3 of 3, final val/avg {val}; "
        "nothing to do (no file changed)"
    ]
    assert snapshot(run) == before


@pytest.mark.slow
def test_refused_resume_and_rerun_change_nothing(cache, reference):
    """Into a finished run dir: a resume under another alpha is refused with one line (no
    traceback, through the CLI: Hydra writes no .hydra/ before the checks), a re-run without
    ckpt_path is refused too, and no file changes (.hydra, summary.json, mtimes included)."""
    before = snapshot(reference)
    out = run_cli(reference, cache, "ckpt_path=last", "sfpo.alpha=0.5", rc=1)
    assert out.strip().splitlines()[-1] == (
        f"Error: ckpt_path='{reference / 'last.ckpt'}' was made with sfpo.alpha=0.8, this run "
        "has sfpo.alpha=0.5; resume with the same setting or start a new run dir"
    )
    assert "Traceback" not in out
    with pytest.raises(
        ConfigError, match="already holds checkpoints \\(best.ckpt, iter-000001.ckpt"
    ):
        in_process(reference, cache)  # a re-run without ckpt_path (the sweep's job command)
    assert snapshot(reference) == before


@pytest.mark.slow
def test_run_dir_has_one_live_owner_and_a_crashed_lock_is_taken_over(tmp_path, cache, reference):
    """A run SIGKILLed at iteration 1 (no checkpoint: save_best off) leaves its lock and a
    metrics.csv: a new run without ckpt_path is refused naming the dir; ckpt_path=last takes
    the dead lock over (warning) and, while it runs, a second run into the dir is refused."""
    run = tmp_path / "run"
    no_best = "checkpoint.save_best=false"
    run_cli(run, cache, no_best, at="1", sig="SIGKILL", rc=-signal.SIGKILL)
    dead = (run / LOCK_FILE).read_text().split()
    assert (run / "metrics.csv").is_file() and not list(run.glob("*.ckpt"))
    with pytest.raises(ConfigError, match=f"{run} already holds a run's logs \\(metrics.csv\\)"):
        in_process(run, cache, no_best)
    proc = launch(run, cache, no_best, "ckpt_path=last")
    wait_until(proc, lambda: (run / LOCK_FILE).is_file() and
               (run / LOCK_FILE).read_text().split()[:1] == [str(proc.pid)])  # fmt: skip
    with pytest.raises(ConfigError, match=f"in use by a live run \\(pid {proc.pid} on"):
        in_process(run, cache, no_best, "ckpt_path=last")
    finish(proc)
    log = proc.log.read_text()
    assert f"taking over the lock of a run that is gone (pid {dead[0]} on {dead[1]})" in log
    assert not (run / LOCK_FILE).exists()
    assert summary(run) == summary(reference)


@pytest.mark.slow
def test_signals_before_training_exit_0_and_the_requeued_run_is_the_uninterrupted_one(
    tmp_path, cache, reference
):
    """SIGTERM once the trainer is built (before fit), then SIGUSR1 at train start (before the
    iteration-0 validation): each launch exits 0 with no checkpoint; the third launch of the
    same command finishes with the uninterrupted run's summary and metric rows."""
    run = tmp_path / "run"
    out = run_cli(run, cache, "ckpt_path=last", at="init", sig="SIGTERM")
    assert "[preemption] SIGTERM before training (trainer built)" in out
    assert not list(run.glob("*.ckpt")) and not (run / LOCK_FILE).exists()
    out = run_cli(run, cache, "ckpt_path=last", at="train_start")
    assert "[preemption] SIGUSR1 before training (train start)" in out
    assert not (run / "last.ckpt").exists()
    run_cli(run, cache, "ckpt_path=last")
    assert summary(run) == summary(reference)
    assert metric_rows(run) == metric_rows(reference)
