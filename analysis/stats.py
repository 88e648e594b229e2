"""Across-seed statistics: mean and a 95 % confidence interval, per step of a curve.

The interval is Student's t: ``mean ± t_{0.975, n-1} · sd / sqrt(n)`` over the n seeds (runs)
at that step. With 3 seeds ``t = 4.30``, so bands are wide: that is the honest width of
three samples, not a plotting choice. With one seed the band collapses to the line.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of finite ``values`` (NaN/inf dropped); NaNs if none are left."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if len(x) == 1:
        return m, m, m
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, m - half, m + half


def select(df: pd.DataFrame, metric: str, **where: object) -> pd.DataFrame:
    """Rows of one metric, filtered by run columns (a list/tuple/set value = any of)."""
    out = df[df["metric"] == metric]
    for col, val in where.items():
        out = (
            out[out[col].isin(val)] if isinstance(val, list | tuple | set) else out[out[col] == val]
        )
    return out


def smooth(rows: pd.DataFrame, window: int) -> pd.DataFrame:
    """Centered moving average of ``value`` over steps, per run (``window`` <= 1: unchanged)."""
    if window <= 1 or rows.empty:
        return rows
    rows = rows.sort_values(["run_id", "step"]).copy()
    rows["value"] = rows.groupby("run_id")["value"].transform(
        lambda v: v.rolling(window, center=True, min_periods=1).mean()
    )
    return rows


def curve_ci(rows: pd.DataFrame, by: str = "label") -> pd.DataFrame:
    """Tidy rows of one metric -> per ``(by, step)``: ``mean``, ``lo``, ``hi``, ``n`` (seeds
    with a finite value there). A seed whose value is NaN/inf (a diverged run) is left out of
    that step's mean and band, and a warning names the metric and step: it must not vanish
    silently, since dropping diverged seeds biases the curve upward."""
    out = []
    for (key, step), g in rows.groupby([by, "step"], sort=True):
        values = g["value"].astype(float)
        finite = int(np.isfinite(values).sum())
        if finite < len(values):
            metric = g["metric"].iloc[0] if "metric" in g else "value"
            warnings.warn(
                f"{metric} at step {step} ({key}): {len(values) - finite} of {len(values)} "
                "seeds are NaN/inf and left out of the mean and band",
                stacklevel=2,
            )
        m, lo, hi = mean_ci(values.tolist())
        out.append({by: key, "step": step, "mean": m, "lo": lo, "hi": hi, "n": finite})
    return pd.DataFrame(out, columns=[by, "step", "mean", "lo", "hi", "n"])


def minus_start(rows: pd.DataFrame) -> pd.DataFrame:
    """``value`` minus the same run's value at its first step (a paired, per-seed change)."""
    rows = rows.sort_values(["run_id", "step"]).copy()
    rows["value"] = rows["value"] - rows.groupby("run_id")["value"].transform("first")
    return rows


def final_values(rows: pd.DataFrame) -> pd.DataFrame:
    """Each run's value at its last logged step (one row per run)."""
    return rows.sort_values("step").groupby("run_id", as_index=False).tail(1)
