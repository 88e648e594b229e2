"""Fig. 4's metric: how much less it costs SFPO to reach GRPO's best validation accuracy.

Definition (for one model/setting; ``a_{m,s}(t)`` = validation accuracy of method m, seed s,
at validation step t; ``c_{m,s}(t)`` = its cumulative cost at t: rollouts generated, or
training wall-clock seconds):

1. Seed-mean curves ``a_m(t) = mean_s a_{m,s}(t)``, ``c_m(t) = mean_s c_{m,s}(t)``, over the
   validation steps every seed of the method logged.
2. Target ``A* = max_t a_GRPO(t)``: the best accuracy of GRPO's seed-mean curve.
3. Cost to target ``C_m = c_m(T_m)`` with ``T_m = min {t : a_m(t) >= A*}`` (the first logged
   validation step at or above the target; no interpolation between validation points);
   ``C_m = inf`` if the curve never reaches it.
4. Ratio ``R = C_GRPO / C_SFPO``: > 1 means SFPO gets there cheaper (the paper reports 3.2-4.9x
   in rollouts). ``R = 0`` if SFPO never reaches the target; ``R = NaN`` if both reach it at
   zero cost (GRPO's best is the base model at step 0: nothing to reach).
5. 95 % CI: percentile bootstrap over seeds — each method's seeds are resampled with
   replacement (independently), steps 1-4 are recomputed, 2.5 / 97.5 percentiles of R.
   With 3 seeds per method there are only 10 distinct resamples per arm: the CI is coarse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

RunTable = pd.DataFrame
"""One run: index = validation step, columns ``acc`` and ``cost``."""


def run_tables(
    rows: pd.DataFrame, acc: str = "val/avg", cost: str = "train/rollouts"
) -> list[RunTable]:
    """Tidy rows of several runs -> one table per run (validation steps only)."""
    tables = []
    for _, g in rows.groupby("run_id", sort=True):
        wide = g[g["metric"].isin([acc, cost])].pivot_table(
            index="step", columns="metric", values="value", aggfunc="last"
        )
        if acc not in wide or cost not in wide:
            continue
        tables.append(wide[[acc, cost]].dropna().set_axis(["acc", "cost"], axis=1))
    return tables


def _stack(tables: Sequence[RunTable]) -> tuple[np.ndarray, np.ndarray]:
    """``(acc, cost)``, each ``[runs, steps]`` over the steps every run logged."""
    steps = sorted(set.intersection(*(set(t.index) for t in tables)))
    acc = np.stack([t.loc[steps, "acc"].to_numpy(dtype=float) for t in tables])
    cost = np.stack([t.loc[steps, "cost"].to_numpy(dtype=float) for t in tables])
    return acc, cost


def _cost_to(acc: np.ndarray, cost: np.ndarray, target: float, eps: float = 1e-9) -> float:
    """Seed-mean cost at the first step where the seed-mean accuracy is >= target."""
    hit = np.flatnonzero(acc.mean(0) >= target - eps)
    return float(cost.mean(0)[hit[0]]) if len(hit) else math.inf


def _ratio(g: tuple[np.ndarray, np.ndarray], s: tuple[np.ndarray, np.ndarray]) -> float:
    target = float(g[0].mean(0).max())
    c_g, c_s = _cost_to(*g, target), _cost_to(*s, target)
    if math.isinf(c_s):
        return 0.0
    if c_s == 0:
        return math.nan if c_g == 0 else math.inf
    return c_g / c_s


def cost_to_reach(curve: RunTable, target: float, eps: float = 1e-9) -> float:
    """Cost at the first step whose ``acc`` is >= ``target`` (inf if none)."""
    hit = curve[curve["acc"] >= target - eps]
    return float(hit["cost"].iloc[0]) if len(hit) else math.inf


def efficiency_ratio(grpo: Sequence[RunTable], sfpo: Sequence[RunTable]) -> float:
    """``R = C_GRPO / C_SFPO`` as defined in the module docstring."""
    return _ratio(_stack(grpo), _stack(sfpo))


def efficiency_ci(
    grpo: Sequence[RunTable], sfpo: Sequence[RunTable], n_boot: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Point ratio, bootstrap 95 % CI over seeds, and how often SFPO missed the target."""
    rng = np.random.default_rng(seed)
    g, s = _stack(grpo), _stack(sfpo)
    boots = []
    for _ in range(n_boot):
        gi = rng.integers(0, len(grpo), len(grpo))
        si = rng.integers(0, len(sfpo), len(sfpo))
        boots.append(_ratio((g[0][gi], g[1][gi]), (s[0][si], s[1][si])))
    b = np.asarray(boots, dtype=float)
    b = b[~np.isnan(b)]
    # no interpolation between order statistics: ratios can be inf (SFPO at zero cost)
    lo, hi = np.quantile(b, [0.025, 0.975], method="inverted_cdf") if len(b) else (math.nan,) * 2
    return {
        "ratio": _ratio(g, s),
        "lo": float(lo),
        "hi": float(hi),
        "not_reached": float((b == 0).mean()) if len(b) else math.nan,
        "n_grpo": len(grpo),
        "n_sfpo": len(sfpo),
    }
