"""Checkpoints at rollout-batch boundaries: atomic ``last.ckpt``, keep-last-N, ``best.ckpt``.

Lightning's ModelCheckpoint counts optimizer steps (K+1 per SFPO iteration, 1 after the
entropy trigger), so it cannot save "every N iterations"; this callback counts iterations.
A checkpoint is written to a temporary file, flushed to disk and renamed, so a kill (or a
power loss) during a save never leaves a corrupt ``last.ckpt``: it names the previous complete
checkpoint until the new one is whole. ``last.ckpt`` is a hard link to the newest
``iter-N.ckpt`` (no second copy on disk); older ``iter-*.ckpt`` beyond ``keep_last`` are deleted
only after the new one is in place.

``best.ckpt`` holds only weights that were validated, saved right after the validation that
scored them, with that score (``best``) and their iteration (``best_iteration``): the base
weights after the iteration-0 validation (``on_train_start``), later ones after a validation in
``on_train_batch_end`` / ``on_train_end`` (the :class:`ValidationCallback` runs first). When no
validation scored the current weights, there is no candidate: a stale score is never credited
to weights that were updated after it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import lightning as L

from sfpo_lab.eval.callback import ValidationCallback


class IterationCheckpoint(L.Callback):
    def __init__(self, dirpath: str | Path, every: int, keep_last: int = 2, save_best: bool = True):
        self.dirpath = Path(dirpath)
        self.every = every
        self.keep_last = keep_last
        self.save_best = save_best
        self.best = -math.inf
        self.best_iteration: int | None = None
        # names written by this process: the same on every rank, unlike a filesystem check
        # (per-node dirs, NFS caching), so "save or not" (a collective) is decided alike
        self.saved: set[str] = set()

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_iteration": self.best_iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best", -math.inf)
        self.best_iteration = state.get("best_iteration")

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        # temporaries of a save that was killed: never complete, never referenced
        if trainer.is_global_zero and self.dirpath.is_dir():
            for stale in self.dirpath.glob(".*.ckpt.tmp"):
                stale.unlink()

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._save_best_if_validated(trainer, pl_module)  # the base, scored at iteration 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        self._save_best_if_validated(trainer, pl_module)
        it = pl_module.iteration
        if self.every and it % self.every == 0:
            self.save(trainer, f"iter-{it:06d}.ckpt", also_last=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._save_best_if_validated(trainer, pl_module)
        name = f"iter-{pl_module.iteration:06d}.ckpt"
        if name not in self.saved:
            self.save(trainer, name, also_last=True)

    def _save_best_if_validated(self, trainer: L.Trainer, pl_module: Any) -> None:
        """``best.ckpt`` <- the current weights iff a validation scored these very weights
        (at this iteration) higher than any before (ties keep the earlier model)."""
        if not self.save_best:
            return
        scored = latest_validation(trainer)
        if scored is None or int(scored["iteration"]) != pl_module.iteration:
            return  # no score for the current weights (a stale one belongs to older weights)
        score = scored.get("val/avg", -math.inf)
        if score > self.best:
            self.best, self.best_iteration = score, pl_module.iteration
            self.save(trainer, "best.ckpt")

    def save(self, trainer: L.Trainer, name: str, also_last: bool = False) -> Path:
        """Write ``name`` atomically (all ranks take part, rank 0 renames)."""
        final = self.dirpath / name
        tmp = self.dirpath / f".{name}.tmp"
        trainer.save_checkpoint(tmp)  # refuses non-finite weights (SFPOModule.on_save_checkpoint)
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            _fsync(tmp)
            os.replace(tmp, final)
            if also_last:
                last_tmp = self.dirpath / ".last.ckpt.tmp"
                if last_tmp.exists():
                    last_tmp.unlink()
                os.link(final, last_tmp)
                os.replace(last_tmp, self.dirpath / "last.ckpt")
                self._prune()
            _fsync(self.dirpath)
        trainer.strategy.barrier()
        self.saved.add(name)
        return final

    def _prune(self) -> None:
        kept = sorted(self.dirpath.glob("iter-*.ckpt"))
        for old in kept[: max(0, len(kept) - self.keep_last)]:
            old.unlink()


def latest_validation(trainer: L.Trainer) -> dict[str, float] | None:
    """The newest validation record (``iteration``, ``val/avg``, ...), or None if none ran."""
    for cb in trainer.callbacks:
        if isinstance(cb, ValidationCallback) and cb.history:
            return cb.history[-1]
    return None


def _fsync(path: Path) -> None:
    """Flush a file's data (or a directory's entries) to disk before it is relied upon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
