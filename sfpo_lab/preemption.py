"""Preemption: SIGTERM / SIGUSR1 -> finish the iteration, save a checkpoint, exit 0.

Clusters (SLURM, Kubernetes) announce preemption with a signal some seconds before the kill.
The handler only sets a flag; the decision is taken at the next rollout-batch boundary, on
every rank together (the flag is summed over ranks), so a signal that reached only rank 0
stops all ranks at the same iteration and no collective is left waiting. Then the iteration's
checkpoint is written (``iter-N.ckpt`` + ``last.ckpt``, atomically) and the process leaves with
exit code 0, so a requeued job resumes with ``ckpt_path=last``.

Lightning's own SIGTERM handler is replaced while training runs: it stops only at the end of
an epoch (never, in our one-epoch loop) and issues a collective from inside the handler.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from sfpo_lab.checkpointing import IterationCheckpoint

SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SystemExit):
    """Raised (exit code 0) after the preemption checkpoint is on disk."""

    def __init__(self) -> None:
        super().__init__(0)


class PreemptionCallback(L.Callback):
    """Turns SIGTERM / SIGUSR1 into "checkpoint at the next iteration boundary, exit 0".

    Args:
        checkpoint: the run's :class:`IterationCheckpoint` (writes the files).
        signals: the signals to handle.
    """

    def __init__(
        self, checkpoint: IterationCheckpoint, signals: tuple[signal.Signals, ...] = SIGNALS
    ) -> None:
        self.checkpoint = checkpoint
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum  # no I/O, no collectives inside a signal handler

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        # after Lightning registered its handlers (Trainer._run), so ours replace them; a
        # SIGTERM before this point is seen through trainer.received_sigterm (Lightning's)
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
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
