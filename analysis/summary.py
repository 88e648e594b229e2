"""``paper_figures/summary.json``: the headline comparisons of paper_main, machine-readable.

For the paper_main runs of ONE model (runs of several models: :class:`MissingRuns` naming
them), with GRPO, SFPO and, when run, GRPO-μ (α = 1 with slow correction: K + 1 update passes
per batch, no reposition)::

    sfpo_minus_grpo, sfpo_minus_grpo_mu:   {"mean", "ci_lo", "ci_hi", "n_seeds"}
        paired differences of final held-out Avg accuracy (points), per seed run by both
        methods; mean and 95 % Student-t interval (the Table 1 rows "SFPO − GRPO", ...)
    rollout_ratio, grpo_mu_rollout_ratio, update_pass_ratio, grpo_mu_update_pass_ratio,
    wall_clock_ratio, grpo_mu_wall_clock_ratio:  {"ratio", "ci_lo", "ci_hi", "n_seeds",
        "not_reached"}: GRPO's cost / the method's cost to reach GRPO's best seed-mean
        validation accuracy, paired bootstrap 95 % CI (Fig. 4, analysis.efficiency)
    target_acc (the SFPO pair's target A*), grpo_mu_target_acc (the GRPO-μ pair's), model,
    labels, n_boot, ci_method, per_seed

A missing GRPO-μ arm leaves its keys out. Floats are rounded to 4 decimals; a non-finite
value is written as the string ``"inf"`` / ``"-inf"`` / ``"nan"`` (JSON has no such numbers).
Keys are sorted and the text ends with a newline, so reruns are byte-identical.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from analysis.bar_figures import efficiency_frame
from analysis.identity import check_pooling, dedupe
from analysis.runs import MissingRuns
from analysis.stats import mean_ci
from analysis.tables import model_scores, paired_differences

N_BOOT, BOOT_SEED = 2000, 0
_KEY = {"GRPO": "grpo", "GRPO-μ": "grpo_mu", "SFPO": "sfpo"}
_RATIO_KEYS = {"rollouts": "rollout_ratio", "update passes": "update_pass_ratio",
               "wall-clock (s)": "wall_clock_ratio"}  # fmt: skip
CI_METHOD = {
    "differences": "per seed run by both methods: SFPO final val Avg minus the other's "
    "(points); mean ± t(0.975, n-1) sd / sqrt(n)",
    "ratios": f"paired percentile bootstrap over the shared seeds ({N_BOOT} resamples, the "
    "same seed indices for both arms, target recomputed per resample; 2.5/97.5 percentiles, "
    "inverted CDF)",
}


def _num(x: float) -> float | str:
    x = float(x)
    return round(x, 4) if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))  # fmt: skip


def _paper_main(df: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    runs = df[df["experiment"] == "paper_main"]
    if runs.empty:
        raise MissingRuns("no runs with extras.experiment=paper_main")
    models = sorted(runs["model"].unique())
    if len(models) > 1:
        raise MissingRuns(
            f"summary.json holds one model's comparison; paper_main has runs of {len(models)} "
            f"models ({', '.join(models)}): pass --runs of one model"
        )
    runs = dedupe(runs)
    check_pooling(runs, "summary.json")
    return models[0], runs


def summary(df: pd.DataFrame, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> dict[str, Any]:
    """The summary as a dict (numbers rounded as written); see the module docstring."""
    model, runs = _paper_main(df)
    finals, _ = model_scores(runs, "paper_main", model)
    if "GRPO" not in finals or "SFPO" not in finals:
        raise MissingRuns(f"paper_main/{model}: summary.json needs GRPO and SFPO runs, got {sorted(finals)}")  # fmt: skip
    out: dict[str, Any] = {"model": model, "ci_method": CI_METHOD, "n_boot": n_boot}
    one = runs.drop_duplicates("method").set_index("method")["label"]
    out["labels"] = {_KEY[m]: str(one[m]) for m in finals}
    for other in ("GRPO", "GRPO-μ"):
        if other in finals:
            diff = paired_differences(finals, "SFPO", other)["avg"]
            m, lo, hi = mean_ci(diff.tolist())
            out[f"sfpo_minus_{_KEY[other]}"] = {"mean": _num(m), "ci_lo": _num(lo),
                                               "ci_hi": _num(hi), "n_seeds": len(diff)}  # fmt: skip
    eff = efficiency_frame(df[df["model"] == model], n_boot=n_boot, seed=seed)
    for r in eff.itertuples():
        key = ("" if r.method == "SFPO" else "grpo_mu_") + _RATIO_KEYS[r.cost]
        out[key] = {"ratio": _num(r.ratio), "ci_lo": _num(r.lo), "ci_hi": _num(r.hi),
                    "n_seeds": int(r.n_seeds), "not_reached": _num(r.not_reached)}  # fmt: skip
        # each pair's target A* (GRPO's best over the seeds the pair shares; one value when
        # every arm ran the same seeds)
        out.setdefault("target_acc" if r.method == "SFPO" else "grpo_mu_target_acc", _num(r.target))
    out["per_seed"] = _per_seed(finals)
    return out


def _per_seed(finals: dict[str, pd.DataFrame]) -> list[dict[str, Any]]:
    """Final held-out Avg of each method per seed (absent where the method has no run)."""
    by_seed: dict[int, dict[str, Any]] = {}
    for method, f in finals.items():
        for s, v in zip(f["seed"], f["avg"], strict=True):
            by_seed.setdefault(int(s), {"seed": int(s)})[_KEY[method]] = _num(v)
    return [by_seed[s] for s in sorted(by_seed)]


def summary_json(df: pd.DataFrame, extra: dict[str, Any] | None = None) -> str:
    """The text of ``summary.json`` (sorted keys, indent 2, trailing newline); ``extra``: more
    top-level blocks (the confirmation's ``confirm``, analysis/confirm.py)."""
    data = summary(df) | (extra or {})
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
