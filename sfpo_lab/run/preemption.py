"""Preemption: SIGTERM / SIGUSR1 / SIGINT -> finish the iteration, save a checkpoint, exit 0.

Clusters (SLURM, Kubernetes) announce preemption with a signal some seconds before the kill.
The handler only sets a flag; the decision is taken at the next rollout-batch boundary, on
every rank together (the flag is summed over ranks), so a signal that reached only rank 0
stops all ranks at the same iteration and no collective is left waiting. Then the iteration's
checkpoint is written (``iter-N.ckpt`` + ``last.ckpt``, atomically) and the process leaves with
exit code 0, so a requeued job resumes with ``ckpt_path=last``.

Lightning's own SIGTERM handler is replaced while training runs: it stops only at the end of
an epoch (never, in our one-epoch loop) and issues a collective from inside the handler.

Ctrl-C (SIGINT) is a preemption too (Lightning's KeyboardInterrupt saved nothing): the first
one says at once (on stderr) that the run saves at the next boundary; a second one stops at
once with exit code 130 and one line saying what was lost (the iterations since the newest
``iter-N.ckpt``, and the one in progress) and what is kept (that checkpoint: saves are atomic).

Before training starts (data, model load, warm-up, the iteration-0 validation),
:class:`EarlySignals` holds the same signals: the run stops at the next step boundary with
exit code 0 and no checkpoint (nothing was trained), so ``ckpt_path=last`` starts it afresh;
its line names what the run dir already holds (``.hydra/`` once the model is prepared; the
iteration-0 validation's ``metrics.csv`` row and ``best.ckpt`` when the signal came during it),
which is why a plain rerun (without ``ckpt_path``) is refused.
:class:`FinalValidation` makes the final validation the run's whatever stopped it: a run
resumed from a checkpoint of its last iteration still validates, and ``last.ckpt`` is saved
again after a final validation that came after it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from sfpo_lab.checkpointing import IterationCheckpoint

SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
ABORT_EXIT = 128 + signal.SIGINT  # a second Ctrl-C: the shell's code for "killed by SIGINT"


class Preempted(SystemExit):
    """Raised (exit code 0) after the preemption checkpoint is on disk."""

    def __init__(self) -> None:
        super().__init__(0)


class Aborted(SystemExit):
    """Raised from the handler of a second SIGINT (exit code 130): stop now, save nothing."""

    def __init__(self) -> None:
        super().__init__(ABORT_EXIT)


def _say(line: str) -> None:
    """One line on stderr from a signal handler (rank 0): ``os.write``, which is reentrant,
    unlike ``print`` or logging, which the interrupted code may be in the middle of."""
    if rank_zero_only.rank == 0:
        os.write(sys.stderr.fileno(), f"{line}\n".encode())


def _second_sigint(signum: int, first: int | None) -> bool:
    """Whether this signal is a Ctrl-C after an earlier stop signal (stop at once)."""
    return signum == signal.SIGINT and first is not None


def newest_checkpoint(dirpath: Path) -> tuple[int, Path] | None:
    """``(iteration, path)`` of the newest ``iter-N.ckpt`` in ``dirpath`` (None if none)."""
    found = []
    for path in dirpath.glob("iter-*.ckpt"):
        try:
            found.append((int(path.name[5:-5]), path))
        except ValueError:
            continue
    return max(found) if found else None


def lost_line(dirpath: Path, done: int) -> str:
    """What a stop at once loses after ``done`` finished iterations, and what is kept."""
    newest = newest_checkpoint(dirpath)
    kept = newest[0] if newest is not None else 0
    lost = f"iteration {done + 1} (in progress)"
    if done > kept:
        lost = f"iterations {kept + 1}-{done} and {lost}"
    where = f"{newest[1]} (iteration {kept}) is kept" if newest else "no checkpoint was written"
    return (
        f"[preemption] second SIGINT: stopped at once, no checkpoint saved; lost: {lost}; "
        f"{where}; exit {ABORT_EXIT}"
    )


class EarlySignals:
    """SIGTERM / SIGUSR1 before training: a flag (no I/O in the handler), checked by
    :meth:`check` between the set-up steps and by :class:`PreemptionCallback` at train start.
    Use as a context manager (handlers restored at exit; main thread only)."""

    def __init__(
        self, signals: tuple[signal.Signals, ...] = SIGNALS, dirpath: str | Path | None = None
    ) -> None:
        self.signals = signals
        self.dirpath = Path(dirpath) if dirpath is not None else None  # named when stopping
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if _second_sigint(signum, self.received):
            _say(
                "[preemption] second SIGINT outside training: stopped at once, no checkpoint "
                f"saved (nothing was being trained); exit {ABORT_EXIT}"
            )
            raise Aborted
        self.received = signum
        if signum == signal.SIGINT:
            _say(
                "[preemption] SIGINT: stopping at the next step boundary (Ctrl-C again to "
                "stop at once)"
            )

    def __enter__(self) -> EarlySignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            if previous is not None:
                signal.signal(sig, previous)
        self._previous = {}

    def check(self, step: str) -> None:
        """Leave with exit code 0 if a signal came (before ``step``)."""
        if self.received is not None:
            _stop_before_training(signal.Signals(self.received).name, step, self.dirpath)


def _stop_before_training(what: str, step: str, dirpath: Path | None = None) -> None:
    rank_zero_info(
        f"[preemption] {what} before training ({step}): nothing trained, no checkpoint to "
        f"resume from; {_written(dirpath)}; exiting 0 (the same command with ckpt_path=last "
        "starts the run again)"
    )
    raise Preempted


def _written(dirpath: Path | None) -> str:
    """What the run dir already holds (a run dir with these refuses a plain rerun)."""
    from sfpo_lab.run.rundir import LOCK_FILE

    names = sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in (dirpath.iterdir() if dirpath is not None and dirpath.is_dir() else [])
        if p.name != LOCK_FILE and not p.name.endswith(".log")
    )
    if not names:
        return "nothing written"
    return f"the run dir holds {', '.join(names)} (a rerun without ckpt_path=last is refused)"


class FinalValidation(L.Callback):
    """Put after the :class:`IterationCheckpoint`: a run resumed at (or past) ``iterations``
    stops at once, so that ``on_train_end`` runs its final validation (an empty epoch would
    loop for ever); ``last.ckpt`` is saved again when that validation came after the
    iteration's checkpoint, so a finished run's checkpoint holds its final score."""

    def __init__(self, checkpoint: IterationCheckpoint, iterations: int) -> None:
        self.checkpoint = checkpoint
        self.iterations = iterations
        self._saved_before_end: set[str] = set()
        self._validations = 0

    def _mark(self, trainer: L.Trainer) -> None:
        self._saved_before_end = set(self.checkpoint.saved)
        self._validations = _validations(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._mark(trainer)
        if pl_module.iteration >= self.iterations:
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        self._mark(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        name = f"iter-{pl_module.iteration:06d}.ckpt"
        if name in self._saved_before_end and _validations(trainer) > self._validations:
            self.checkpoint.save(trainer, name, also_last=True)


def _validations(trainer: L.Trainer) -> int:
    from sfpo_lab.eval.callback import ValidationCallback

    return sum(len(cb.history) for cb in trainer.callbacks if isinstance(cb, ValidationCallback))


class PreemptionCallback(L.Callback):
    """Turns SIGTERM / SIGUSR1 / SIGINT into "checkpoint at the next iteration boundary, exit
    0"; a second SIGINT stops at once (exit 130, saying what was lost).

    Args:
        checkpoint: the run's :class:`IterationCheckpoint` (writes the files).
        signals: the signals to handle.
        early: the :class:`EarlySignals` of the set-up: a signal it caught (or Lightning's
            SIGTERM flag) stops the run at train start, after the iteration-0 validation.
    """

    def __init__(
        self,
        checkpoint: IterationCheckpoint,
        signals: tuple[signal.Signals, ...] = SIGNALS,
        early: EarlySignals | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self.signals = signals
        self.early = early
        if early is not None and early.dirpath is None:
            early.dirpath = self.checkpoint.dirpath  # what a stop at set-up names
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._done = 0  # finished iterations, for the line of a second Ctrl-C

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        # no collectives inside a signal handler; the only I/O is one os.write on a Ctrl-C
        if _second_sigint(signum, self.received):
            _say(lost_line(self.checkpoint.dirpath, self._done))
            raise Aborted
        self.received = signum
        if signum == signal.SIGINT:
            _say(
                f"[preemption] SIGINT: saving at the end of iteration {self._done + 1}, then "
                "exiting (Ctrl-C again to stop at once without saving)"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        # after Lightning registered its handlers (Trainer._run), so ours replace them; a
        # SIGTERM before this point is seen through trainer.received_sigterm (Lightning's)
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)
        self._done = pl_module.iteration
        early = self.early.received if self.early is not None else None
        asked = early is not None or trainer.received_sigterm
        flag = torch.tensor(float(asked), device=pl_module.device)
        if float(trainer.strategy.reduce(flag, reduce_op="sum")) > 0:  # all ranks alike
            what = signal.Signals(early).name if early is not None else "SIGTERM"
            what = what if asked else "a signal on another rank"
            _stop_before_training(what, "train start", self.checkpoint.dirpath)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        self._done = pl_module.iteration
        asked = self.received is not None or trainer.received_sigterm  # Lightning's, at set-up
        flag = torch.tensor(float(asked), device=pl_module.device)
        if float(trainer.strategy.reduce(flag, reduce_op="sum")) == 0:
            return
        it = pl_module.iteration
        name = f"iter-{it:06d}.ckpt"
        if name not in self.checkpoint.saved:  # the regular save may have run
            self.checkpoint.save(trainer, name, also_last=True)
        if self.received is not None:
            what = signal.Signals(self.received).name
        else:
            what = "SIGTERM" if trainer.received_sigterm else "a signal on another rank"
        rank_zero_info(
            f"[preemption] {what}: saved {self.checkpoint.dirpath / name} at iteration {it}; "
            "exiting 0 (resume with ckpt_path=last)"
        )
        raise Preempted

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            if previous is not None:
                signal.signal(sig, previous)
        self._previous = {}
