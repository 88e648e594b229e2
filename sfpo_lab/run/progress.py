"""The training progress bar in RL iterations (rollout batches), not Lightning epochs.

``iteration 12/80 ━━━━━━━━╸━━━━━━ 0:00:13 • 0:01:15 reward: 0.312 acc: 0.312 alpha: 0.800
val/avg: 27.1%``: iterations done out of ``iterations`` (a resumed run starts at its checkpoint's
iteration), elapsed and remaining time, the module's progress-bar metrics and the last held-out
``val/avg``. A run has no meaningful epoch (``max_epochs=-1``), so none is shown.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import CustomBarColumn, CustomTimeColumn
from rich.progress import TextColumn

from sfpo_lab.run import quiet

_ORDER = ("reward", "acc", "alpha", "val/avg")


def iterations_of(pl_module: L.LightningModule) -> tuple[int, int | None]:
    """(iterations done, iterations planned) of an SFPO module (``None`` when it has no plan)."""
    done = int(getattr(pl_module, "iteration", 0))
    run_cfg = getattr(pl_module, "run_cfg", None)
    total = getattr(run_cfg, "iterations", None)
    return done, (int(total) if total is not None else None)


class IterationProgressBar(RichProgressBar):
    """``RichProgressBar`` counting the module's ``iteration`` up to ``run_cfg.iterations``.

    Also installs :mod:`sfpo_lab.run.quiet` (the repeated library notices) when built, so every
    run with this bar is quiet without a change in the runner.
    """

    def __init__(self, console_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if console_kwargs is None and not sys.stdout.isatty():
            # a log file gets the last frame only: on one line, not cut at Rich's 80 columns
            console_kwargs = {"width": 160}
        super().__init__(console_kwargs=console_kwargs, **kwargs)
        quiet.install()

    @property
    def total_train_batches(self) -> int | float:
        _, total = iterations_of(self.trainer.lightning_module)
        return total if total is not None else super().total_train_batches

    def description(self, pl_module: L.LightningModule) -> str:
        done, total = iterations_of(pl_module)
        return f"iteration {done}/{total if total is not None else '?'}"

    def _get_train_description(self, current_epoch: int) -> str:
        return self.description(self.trainer.lightning_module)

    def configure_columns(self, trainer: L.Trainer) -> list:
        # no "batches done" (the description counts iterations) and no it/s (minutes per
        # iteration on real models): elapsed • remaining says more
        return [
            TextColumn("[progress.description]{task.description}"),
            CustomBarColumn(
                bar_width=24,
                complete_style=self.theme.progress_bar,
                finished_style=self.theme.progress_bar_finished,
                pulse_style=self.theme.progress_bar_pulse,
            ),
            CustomTimeColumn(style=self.theme.time),
        ]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._show(pl_module, reset=True)  # a resumed run starts at its checkpoint's iteration

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        self._show(pl_module)

    def _show(self, pl_module: L.LightningModule, reset: bool = False) -> None:
        """Set the bar to the module's iteration; ``reset``: also restart the clock and the
        speed estimate (a resume's jump to its checkpoint's iteration is not progress)."""
        if self.progress is None or self.is_disabled or self.train_progress_bar_id is None:
            return
        done, _ = iterations_of(pl_module)
        description = self.description(pl_module)
        if self.theme.description:
            description = f"[{self.theme.description}]{description}"
        task = self.train_progress_bar_id
        if reset:
            total = self.total_train_batches
            self.progress.reset(task, total=total, completed=done, description=description)
        else:
            self.progress.update(task, completed=done, description=description)
        self.refresh()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The module's ``bar_metrics`` (and any ``prog_bar`` logs), the last ``val/avg``; no
        ``v_num``."""
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        items.update(getattr(pl_module, "bar_metrics", None) or {})  # the last iteration's
        last = getattr(pl_module, "last_val", None) or {}
        if last.get("val/avg") is not None:
            items["val/avg"] = f"{float(last['val/avg']):.1f}%"
        first = [k for k in _ORDER if k in items]
        return {k: items[k] for k in first + [k for k in items if k not in first]}
