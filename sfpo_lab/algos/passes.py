"""The update passes of one SFPO stage (:class:`~sfpo_lab.algos.sfpo.SFPO`): each runs a
caller's whole ``update`` function, or a ``closure`` followed by the engine's optimizer step,
and their reported metrics are accumulated into one summary."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class Passes:
    """Runs single update passes for one :meth:`SFPO.step` and accumulates their stats."""

    def __init__(self, engine: Any, closure: Callable | None, update: Callable | None) -> None:
        self.check(closure, update)
        self.engine, self.closure, self.update = engine, closure, update
        self.updates = self.skipped = 0
        self.metrics: dict[str, list[float]] = {}

    @staticmethod
    def check(closure: Callable | None, update: Callable | None) -> None:
        if (closure is None) == (update is None):
            raise ValueError("SFPO needs exactly one of closure or update")

    def __call__(self) -> None:
        self.updates += 1
        if self.update is not None:
            self._record(self.update())
            return
        with torch.enable_grad():
            loss = self.closure()
        self._record(loss)
        if loss is not None and not math.isfinite(as_float(loss)):
            self.skipped += 1  # a NaN/inf loss means NaN grads: never step on them
            return
        hook = self.engine.before_step
        if hook is not None and hook() is False:
            self.skipped += 1
            return
        self.engine.optimizer.step()

    def _record(self, out: Any) -> None:
        if out is None:
            return
        items = out.items() if isinstance(out, dict) else [("loss", out)]
        for key, value in items:
            self.metrics.setdefault(key, []).append(as_float(value))

    def summary(self) -> dict[str, float]:
        """Mean of each reported metric over the passes; counts (``skipped_steps``) summed."""
        skipped = self.skipped + sum(self.metrics.get("skipped_steps", []))
        stats = {k: sum(v) / len(v) for k, v in self.metrics.items() if k != "skipped_steps"}
        stats.update(updates=float(self.updates), skipped_steps=float(skipped))
        return stats


def as_float(value: Any) -> float:
    return float(value.detach().item()) if isinstance(value, Tensor) else float(value)
