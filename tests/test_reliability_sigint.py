"""Ctrl-C (SIGINT) through the real CLI (issue 30, items 4 and 6).

Lightning's KeyboardInterrupt path saved nothing and exited 1 ("attempting graceful
shutdown"), losing up to ``checkpoint.every - 1`` finished iterations. Now a Ctrl-C is a
preemption: the iteration finishes, ``iter-N.ckpt`` + ``last.ckpt`` are saved, one line says
so and the run exits 0; the resumed run equals the uninterrupted one and prints no "dataloader
is not resumable" warning. A second Ctrl-C stops at once (exit 130) with one line naming what
was lost and what is kept. A signal at train start names what the run dir already holds.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import pytest

from tests.test_reliability_requeue import run_cli, summary
from tests.test_reliability_resume import metric_rows

PROBE = "tests.test_reliability_sigint.CtrlC"
REPO = Path(__file__).resolve().parents[1]


class CtrlC(L.Callback):
    """Sends SIGINT to its own process at the start of iteration ``at`` and, with
    ``times=2``, again at that iteration's first optimizer step (mid-update)."""

    def __init__(self, at: int, times: int = 1) -> None:
        self.at, self.times, self.sent = int(at), int(times), 0

    def _send(self) -> None:
        self.sent += 1
        os.kill(os.getpid(), signal.SIGINT)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if pl_module.iteration + 1 == self.at and self.sent == 0:
            self._send()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer) -> None:
        if pl_module.iteration + 1 == self.at and self.sent == 1 and self.times == 2:
            self._send()


def ctrl_c(at: int, times: int = 1) -> list[str]:
    return [f"+callbacks.ctrlc._target_={PROBE}", f"+callbacks.ctrlc.at={at}"] + [
        f"+callbacks.ctrlc.times={times}"
    ]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "reliability_toy_base"  # shared with the others


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> Path:
    run = tmp_path_factory.mktemp("sigint_reference") / "run"
    run_cli(run, cache)
    return run


@pytest.mark.slow
def test_ctrl_c_saves_at_the_next_boundary_and_the_resume_is_exact(tmp_path, cache, reference):
    """SIGINT in iteration 2 of 3 with no regular checkpoint due (checkpoint.every=10): the
    iteration finishes, iter-000002.ckpt is saved, one line says so, exit 0; resumed with
    ckpt_path=last, the run reports the uninterrupted summary and metric rows, and Lightning's
    "dataloader is not resumable" warning is not printed on that exact resume."""
    run = tmp_path / "run"
    out = run_cli(run, cache, "checkpoint.every=10", *ctrl_c(2))
    saved = run / "iter-000002.ckpt"
    assert f"[preemption] SIGINT: saved {saved} at iteration 2; exiting 0" in out, out[-3000:]
    assert "saving at the end of iteration 2" in out and "graceful shutdown" not in out
    assert saved.is_file() and (run / "last.ckpt").is_file()
    assert not (run / "iter-000001.ckpt").exists() and not (run / "summary.json").exists()
    out = run_cli(run, cache, "checkpoint.every=10", "ckpt_path=last")
    assert "not resumable" not in out, out[-3000:]
    assert summary(run) == summary(reference)
    assert metric_rows(run) == metric_rows(reference)


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_says_what_was_lost(tmp_path, cache):
    """SIGINT at the start of iteration 2, again in its update: exit 130 at once, no
    iter-000002.ckpt, and one line: the iteration in progress is lost, iter-000001.ckpt kept."""
    run = tmp_path / "run"
    out = run_cli(run, cache, *ctrl_c(2, times=2), rc=130)
    kept = run / "iter-000001.ckpt"
    assert (
        "[preemption] second SIGINT: stopped at once, no checkpoint saved; lost: iteration 2 "
        f"(in progress); {kept} (iteration 1) is kept; exit 130"
    ) in out, out[-3000:]
    assert kept.is_file() and not (run / "iter-000002.ckpt").exists()
    assert "Traceback" not in out


@pytest.mark.slow
def test_a_signal_at_train_start_names_what_the_run_dir_holds(tmp_path, cache):
    """The README's "a signal before training writes nothing" was not true once the
    iteration-0 validation ran: its metrics row and best.ckpt are written (so a plain rerun is
    refused). The stop line now names them; ckpt_path=last starts the run again."""
    run = tmp_path / "run"
    probe = ["+callbacks.probe._target_=tests.test_reliability_requeue.SignalProbe"]
    out = run_cli(run, cache, *probe, "+callbacks.probe.at=train_start")
    line = next(ln for ln in out.splitlines() if "before training (train start)" in ln)
    held = "the run dir holds .hydra/, best.ckpt, hparams.yaml, metrics.csv, wandb_id.txt"
    assert line.endswith(
        f"nothing trained, no checkpoint to resume from; {held} (a rerun without "
        "ckpt_path=last is refused); exiting 0 (the same command with ckpt_path=last starts "
        "the run again)"
    ), line
    assert (run / "best.ckpt").is_file() and not (run / "last.ckpt").exists()
