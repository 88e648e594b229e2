"""Fig. 4's metric: how much less it costs SFPO (or GRPO-μ) to reach GRPO's best accuracy.

Definition (for one model/setting and one pair of arms, GRPO and X = SFPO or GRPO-μ;
``a_{m,s}(t)`` = validation accuracy of method m, seed s, at validation step t;
``c_{m,s}(t)`` = its cumulative cost at t: rollouts generated (``train/rollouts``), update
passes (``train/update_passes``, derived by :func:`with_update_passes`), or training
wall-clock seconds (``train/wall_clock_s``)):

1. Seeds: those both arms ran (paired: a seed's runs share their base model and first rollout
   batch). Seed-mean curves ``a_m(t) = mean_s a_{m,s}(t)``, ``c_m(t) = mean_s c_{m,s}(t)``,
   over the validation steps every run of the arm logged.
2. Target ``A* = max_t a_GRPO(t)``: the best accuracy of GRPO's seed-mean curve.
3. Cost to target ``C_m = c_m(T_m)`` with ``T_m = min {t : a_m(t) >= A*}`` (the first logged
   validation step at or above the target; no interpolation between validation points);
   ``C_m = inf`` if the curve never reaches it.
4. Ratio ``R = C_GRPO / C_X``: > 1 means X gets there cheaper (the paper reports 3.2-4.9x
   for SFPO in rollouts). ``R = 0`` if X never reaches the target; ``R = NaN`` if both reach
   it at zero cost (GRPO's best is the base model at step 0: nothing to reach).
5. 95 % CI: paired percentile bootstrap over seeds — the shared seeds are resampled with
   replacement, the SAME indices for both arms, steps 1-4 are recomputed (the target too),
   and the 2.5 / 97.5 percentiles (inverted CDF, no interpolation: R can be inf) of R are
   the interval; resamples with R = NaN are left out. ``not_reached`` ("missed"): the share
   of resamples in which X never reached the target (R = 0).
6. Per seed: each method's cost to the point target ``A*`` on its own curve (``inf`` when
   never reached), :func:`per_seed_costs`.

Update passes: one pass = one sweep of the update over the iteration's rollout batch
(``update.ppo_mini_batches`` optimizer steps). The engine (``sfpo_lab.algos.sfpo.SFPO``) runs,
per iteration with alpha ``α_t`` (logged ``sfpo/alpha``), ``K`` fast passes if ``α_t > 0``
(logged ``sfpo/fast_steps``; 0 after the entropy trigger with decay ``zero``), then one more
pass if ``α_t = 0`` (the plain GRPO update) or slow correction is on (Stage III). So GRPO: 1;
SFPO and GRPO-μ: K + 1 until the trigger fires, 1 after; SFPO without slow correction: K, 1
after the trigger.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

RunTable = pd.DataFrame
"""One run: index = validation step, columns ``acc`` and ``cost``."""
PASSES = "train/update_passes"


def passes_per_iteration(
    fast_steps: np.ndarray, alpha: np.ndarray, slow_correction: bool
) -> np.ndarray:
    """Update passes of each iteration: ``fast_steps + [alpha == 0 or slow_correction]``.

    Args:
        fast_steps: ``[iterations]`` logged ``sfpo/fast_steps`` (K while alpha > 0, else 0).
        alpha: ``[iterations]`` logged ``sfpo/alpha``, the alpha each iteration ran with.
        slow_correction: the run's ``sfpo.slow_correction``.
    """
    last = (np.asarray(alpha, dtype=float) == 0) | bool(slow_correction)
    return np.asarray(fast_steps, dtype=float) + last.astype(float)


def _run_passes(run: pd.DataFrame) -> pd.DataFrame:
    """Cumulative update passes at steps 0..last of one run (tidy rows, metric PASSES)."""
    rid, K, slow = (
        run["run_id"].iloc[0],
        int(run["K"].iloc[0]),
        bool(run["slow_correction"].iloc[0]),
    )
    wide = run[run["metric"].isin(["sfpo/alpha", "sfpo/fast_steps"])].pivot_table(
        index="step", columns="metric", values="value", aggfunc="last"
    )
    if "sfpo/alpha" not in wide:
        raise ValueError(f"{rid}: no sfpo/alpha logged; cannot count update passes")
    last = int(wide.index.max()) if len(wide) else 0
    if wide["sfpo/alpha"].dropna().index.tolist() != list(range(1, last + 1)):
        raise ValueError(f"{rid}: sfpo/alpha not logged at every step 1..{last}")
    alpha = wide["sfpo/alpha"].to_numpy(dtype=float)
    implied = K * (alpha > 0)  # the engine's rule: K fast passes iff alpha > 0
    fast = wide["sfpo/fast_steps"].to_numpy(dtype=float) if "sfpo/fast_steps" in wide else implied
    if not np.array_equal(np.nan_to_num(fast, nan=-1.0), implied):
        raise ValueError(
            f"{rid}: sfpo/fast_steps {fast.tolist()} disagree with K={K} and sfpo/alpha "
            f"{alpha.tolist()} (K fast passes iff alpha > 0)"
        )
    cum = np.concatenate([[0.0], np.cumsum(passes_per_iteration(fast, alpha, slow))])
    first = run.iloc[0]
    out = pd.DataFrame({"step": np.arange(len(cum)), "metric": PASSES, "value": cum})
    return out.assign(**{c: first[c] for c in run.columns if c not in out})[run.columns]


def with_update_passes(rows: pd.DataFrame) -> pd.DataFrame:
    """Tidy rows plus, per run, ``train/update_passes``: cumulative passes at each step."""
    if rows.empty:
        return rows
    extra = [_run_passes(g) for _, g in rows.groupby("run_id", sort=True)]
    return pd.concat([rows[rows["metric"] != PASSES], *extra], ignore_index=True)


def run_tables(
    rows: pd.DataFrame, acc: str = "val/avg", cost: str = "train/rollouts"
) -> list[RunTable]:
    """Tidy rows of several runs -> one table per run (validation steps only)."""
    return list(seed_tables(rows, acc, cost, by="run_id").values())


def seed_tables(
    rows: pd.DataFrame, acc: str = "val/avg", cost: str = "train/rollouts", by: str = "seed"
) -> dict:
    """``{seed: RunTable}`` (sorted by seed) of one arm's runs; one run per seed."""
    tables = {}
    for key, g in rows.groupby(by, sort=True):
        if g["run_id"].nunique() > 1:
            raise ValueError(f"{by}={key}: runs {sorted(g['run_id'].unique())}; pass one per seed")
        wide = g[g["metric"].isin([acc, cost])].pivot_table(
            index="step", columns="metric", values="value", aggfunc="last"
        )
        if acc in wide and cost in wide:
            tables[key] = wide[[acc, cost]].dropna().set_axis(["acc", "cost"], axis=1)
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


def target_of(grpo: Sequence[RunTable]) -> float:
    """``A*``: the best accuracy of GRPO's seed-mean curve."""
    return float(_stack(grpo)[0].mean(0).max())


def cost_to_reach(curve: RunTable, target: float, eps: float = 1e-9) -> float:
    """Cost at the first step whose ``acc`` is >= ``target`` (inf if none)."""
    hit = curve[curve["acc"] >= target - eps]
    return float(hit["cost"].iloc[0]) if len(hit) else math.inf


def efficiency_ratio(grpo: Sequence[RunTable], other: Sequence[RunTable]) -> float:
    """``R = C_GRPO / C_X`` as defined in the module docstring."""
    return _ratio(_stack(grpo), _stack(other))


def efficiency_ci(
    grpo: Sequence[RunTable],
    other: Sequence[RunTable],
    n_boot: int = 2000,
    seed: int = 0,
    paired: bool = True,
) -> dict[str, float]:
    """Point ratio, bootstrap 95 % CI and how often X missed the target (``not_reached``).

    ``paired``: ``grpo[i]`` and ``other[i]`` are the same seed; each resample draws seed
    indices once and uses them for both arms (``n_seeds``). ``paired=False`` resamples the
    arms independently (``n_grpo``, ``n_other``): wider when seeds share a base model."""
    if paired and len(grpo) != len(other):
        raise ValueError(f"paired bootstrap needs one run per seed in both arms, got {len(grpo)} GRPO and {len(other)} other")  # fmt: skip
    rng = np.random.default_rng(seed)
    g, s = _stack(grpo), _stack(other)
    boots = []
    for _ in range(n_boot):
        gi = rng.integers(0, len(grpo), len(grpo))
        si = gi if paired else rng.integers(0, len(other), len(other))
        boots.append(_ratio((g[0][gi], g[1][gi]), (s[0][si], s[1][si])))
    b = np.asarray(boots, dtype=float)
    b = b[~np.isnan(b)]
    lo, hi = np.quantile(b, [0.025, 0.975], method="inverted_cdf") if len(b) else (math.nan,) * 2
    sizes = {"n_seeds": len(grpo)} if paired else {"n_grpo": len(grpo), "n_other": len(other)}
    return {
        "ratio": _ratio(g, s),
        "lo": float(lo),
        "hi": float(hi),
        "not_reached": float((b == 0).mean()) if len(b) else math.nan,
        **sizes,
    }


def paired_ci(grpo: dict, other: dict, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """:func:`efficiency_ci` over the seeds both ``{seed: RunTable}`` arms hold, plus the
    point ``target``; raises ``LookupError`` when they share no seed."""
    seeds = sorted(set(grpo) & set(other))
    if not seeds:
        raise LookupError(f"no seed in both arms (GRPO {sorted(grpo)}, other {sorted(other)})")
    g, o = [grpo[k] for k in seeds], [other[k] for k in seeds]
    return {**efficiency_ci(g, o, n_boot, seed, paired=True), "target": target_of(g)}


def per_seed_costs(arms: dict[str, dict], target: float) -> pd.DataFrame:
    """``method, seed, cost_to_target`` (inf when never reached) for ``{method: {seed: table}}``."""
    rows = [
        {"method": m, "seed": s, "cost_to_target": cost_to_reach(t, target)}
        for m, tables in arms.items()
        for s, t in sorted(tables.items())
    ]
    return pd.DataFrame(rows, columns=["method", "seed", "cost_to_target"])
