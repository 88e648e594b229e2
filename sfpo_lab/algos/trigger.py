"""The entropy trigger of SFPO (Alg. 1, Eq. 11): when to stop the fast phase."""

from __future__ import annotations

import math
from typing import Any

TRIGGER_MODES = ("upper", "abs")


class EntropyTrigger:
    """Detects the entropy jump that ends SFPO's fast phase (Alg. 1, Eq. 11).

    ``update(H_s)`` appends the batch entropy; once ``window`` values are held,
    z = (H_s - mean(last window)) / (population std(last window) + 1e-9), the window including
    H_s itself (authors' code). The test is ``z >= tau`` for ``mode="upper"`` (the authors'
    released code) or ``|z| >= tau`` for ``mode="abs"`` (the paper's Alg. 1).
    """

    def __init__(self, window: int = 30, tau: float = 1.0, mode: str = "upper") -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise ValueError(f"window (omega) must be an integer >= 2, got {window!r}")
        if not (isinstance(tau, int | float) and math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau (z-score threshold) must be a finite number > 0, got {tau!r}")
        if mode not in TRIGGER_MODES:
            raise ValueError(f"mode must be one of {list(TRIGGER_MODES)}, got {mode!r}")
        self.window, self.tau, self.mode = window, float(tau), mode
        self.history: list[float] = []

    def zscore(self) -> float:
        """z of the latest value over the last ``window`` values; NaN during warm-up."""
        if len(self.history) < self.window:
            return math.nan
        recent = self.history[-self.window :]
        mean = math.fsum(recent) / self.window
        std = math.sqrt(math.fsum((h - mean) ** 2 for h in recent) / self.window)
        return (recent[-1] - mean) / (std + 1e-9)

    def passes(self, z: float) -> bool:
        """Whether ``z`` crosses the threshold (NaN never does)."""
        return (z if self.mode == "upper" else abs(z)) >= self.tau

    def update(self, entropy: float) -> tuple[float, bool]:
        """Record ``entropy``; return ``(z, fired)``. Non-finite values are not recorded."""
        if not math.isfinite(entropy):
            return math.nan, False
        self.history.append(float(entropy))
        del self.history[: -self.window]  # only the window is ever needed
        z = self.zscore()
        return z, self.passes(z)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [float(h) for h in state["history"]][-self.window :]
