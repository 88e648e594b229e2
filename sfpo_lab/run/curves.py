"""``curves.png`` in the run dir after each validation and at the end of the run.

Drawn from the run's own ``metrics.csv`` by :mod:`sfpo_lab.run.plot` (held-out accuracy per
benchmark, reward, entropy with the trigger step, α), on rank 0, with Matplotlib's Agg canvas:
about a second per picture. A validation logged at iteration s is drawn at the start of
iteration s + 1 (the validation callback runs after this one at each iteration end), the last
one after the fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from sfpo_lab.run.plot import CURVES_FILE, METRICS_FILE


class CurvesCallback(L.Callback):
    """Writes ``<dirpath>/curves.png`` from ``<dirpath>/metrics.csv``.

    Args:
        dirpath: the run dir (``${paths.output_dir}``), where the CSV logger writes.
        filename: the picture's file name.
    """

    def __init__(self, dirpath: str, filename: str = CURVES_FILE) -> None:
        self.dirpath = Path(dirpath)
        self.filename = filename
        self._drawn_for: object = None  # the validation (module.last_val) last drawn
        self._warned = False

    @property
    def path(self) -> Path:
        return self.dirpath / self.filename

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        last = getattr(pl_module, "last_val", None)
        if last and last is not self._drawn_for:
            self._drawn_for = last
            self.draw(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self.draw(trainer):
            rank_zero_info(f"[curves] {self.path}")

    def draw(self, trainer: L.Trainer) -> bool:
        """Draw now (rank 0); ``False`` when there is nothing to draw or drawing failed."""
        if not trainer.is_global_zero:
            return False
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.save()  # rows still buffered
        if not (self.dirpath / METRICS_FILE).is_file():
            return False
        from sfpo_lab.run.plot import draw, label_runs, load_run, save

        try:
            run = load_run(self.dirpath)
            label_runs([run])
            save(draw([run]), self.path)
        except Exception as err:  # a picture is never worth a training run: say so, go on
            if not self._warned:
                rank_zero_warn(f"[curves] {self.path} not drawn: {type(err).__name__}: {err}")
                self._warned = True
            return False
        return True
