"""Fig. 4's metric against hand-computed cases; update passes against real short runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.efficiency import (
    PASSES,
    cost_to_reach,
    efficiency_ci,
    efficiency_ratio,
    paired_ci,
    passes_per_iteration,
    per_seed_costs,
    run_tables,
    with_update_passes,
)
from analysis.runs import discover

STEPS = [0, 5, 10, 15, 20]
SHORT = Path(__file__).parent / "data" / "short_runs"


def table(accs: list[float], per_step: float = 128.0) -> pd.DataFrame:
    return pd.DataFrame({"acc": accs, "cost": [s * per_step for s in STEPS]}, index=STEPS)


def test_ratio_hand_computed() -> None:
    # GRPO mean curve: [20, 26, 31, 34, 33] -> target 34 at step 15 -> 15 * 128 = 1920 rollouts
    grpo = [table([20, 25, 30, 35, 32]), table([20, 27, 32, 33, 34])]
    # SFPO mean curve: [20, 29, 34, 34.5, 36] -> first >= 34 at step 10 -> 1280 rollouts
    sfpo = [table([20, 30, 35, 36, 36]), table([20, 28, 33, 33, 36])]
    assert efficiency_ratio(grpo, sfpo) == pytest.approx(1920 / 1280)
    # wall-clock: SFPO's steps cost 3 s, GRPO's 1 s -> 15 / 30
    slow_sfpo = [table([20, 30, 35, 36, 36], 3.0), table([20, 28, 33, 33, 36], 3.0)]
    assert efficiency_ratio(
        [table(t["acc"].tolist(), 1.0) for t in grpo], slow_sfpo
    ) == pytest.approx(0.5)


def test_never_reached_and_undefined() -> None:
    grpo = [table([20, 25, 30, 35, 40])]
    assert efficiency_ratio(grpo, [table([20, 21, 22, 23, 24])]) == 0.0
    assert cost_to_reach(table([20, 21, 22, 23, 24]), 40) == math.inf
    flat = [table([30, 25, 20, 20, 20])]  # GRPO's best is the base model: nothing to reach
    assert math.isnan(efficiency_ratio(flat, [table([30, 31, 32, 33, 34])]))


def test_ci_collapses_when_seeds_agree_and_is_deterministic() -> None:
    grpo = [table([20, 25, 30, 35, 32])] * 3
    sfpo = [table([20, 30, 35, 36, 36])] * 3
    ci = efficiency_ci(grpo, sfpo, n_boot=200)
    assert ci["ratio"] == ci["lo"] == ci["hi"] == pytest.approx(15 / 10)
    assert ci["not_reached"] == 0.0
    spread = [table([20, 25, 30, 35, 32]), table([20, 20, 21, 22, 23]), table([20, 30, 35, 40, 45])]
    a, b = (
        efficiency_ci(spread, sfpo, n_boot=300, seed=1),
        efficiency_ci(spread, sfpo, n_boot=300, seed=1),
    )
    assert a == b and a["lo"] <= a["ratio"] <= a["hi"]


def test_run_tables_from_tidy_rows() -> None:
    rows = pd.DataFrame(
        [
            {"run_id": "r", "step": 0, "metric": "val/avg", "value": 20.0},
            {"run_id": "r", "step": 0, "metric": "train/rollouts", "value": 0.0},
            {"run_id": "r", "step": 1, "metric": "train/rollouts", "value": 128.0},  # no val here
            {"run_id": "r", "step": 5, "metric": "val/avg", "value": 30.0},
            {"run_id": "r", "step": 5, "metric": "train/rollouts", "value": 640.0},
        ]
    )
    (t,) = run_tables(rows)
    assert t.index.tolist() == [0, 5]
    assert t["acc"].tolist() == [20.0, 30.0] and t["cost"].tolist() == [0.0, 640.0]


def test_paired_bootstrap_uses_the_same_seeds_for_both_arms() -> None:
    """Seed 1 is seed 0 shifted up 10 points in both arms (a better base model). Paired, every
    resample shifts both curves alike: R = 1920 / 1280 = 1.5 always. Unpaired, GRPO's and
    SFPO's resampled levels differ: with mean shifts g, s in {0 (1/4), 5 (1/2), 10 (1/4)},
    s > g (prob 5/16) gives R = 3 (SFPO at 35 + g by step 5), s < g (5/16) never reaches it."""
    g0, s0 = [20, 25, 30, 35, 32], [20, 30, 35, 36, 36]
    grpo = [table(g0), table([a + 10 for a in g0])]
    sfpo = [table(s0), table([a + 10 for a in s0])]
    paired = efficiency_ci(grpo, sfpo, n_boot=4000, seed=3)
    assert (paired["ratio"], paired["lo"], paired["hi"]) == pytest.approx((1.5, 1.5, 1.5))
    assert paired["not_reached"] == 0.0 and paired["n_seeds"] == 2
    unpaired = efficiency_ci(grpo, sfpo, n_boot=4000, seed=3, paired=False)
    assert (unpaired["lo"], unpaired["hi"]) == (0.0, 3.0)
    assert unpaired["not_reached"] == pytest.approx(5 / 16, abs=0.03)
    with pytest.raises(ValueError, match="one run per seed in both arms"):
        efficiency_ci(grpo, sfpo[:1])


def test_paired_ci_pairs_by_seed_and_drops_unshared_seeds() -> None:
    g0, s0 = [20, 25, 30, 35, 32], [20, 30, 35, 36, 36]
    grpo = {0: table(g0), 1: table([a + 10 for a in g0]), 5: table([90] * 5)}
    sfpo = {1: table([a + 10 for a in s0]), 0: table(s0), 7: table([0] * 5)}
    ci = paired_ci(grpo, sfpo, n_boot=200)
    assert ci == {"ratio": 1.5, "lo": 1.5, "hi": 1.5, "not_reached": 0.0, "n_seeds": 2, "target": 40.0}  # fmt: skip
    with pytest.raises(LookupError, match="no seed in both arms"):
        paired_ci({0: table(g0)}, {1: table(s0)})


def test_per_seed_costs_on_each_runs_own_curve() -> None:
    arms = {"GRPO": {0: table([20, 25, 30, 35, 32])}, "SFPO": {0: table([20, 30, 35, 36, 36]), 1: table([20] * 5)}}  # fmt: skip
    got = per_seed_costs(arms, target=35.0)
    assert got.to_dict("list") == {"method": ["GRPO", "SFPO", "SFPO"], "seed": [0, 0, 1], "cost_to_target": [1920.0, 1280.0, math.inf]}  # fmt: skip


def test_passes_per_iteration() -> None:
    fast, alpha = np.array([3, 3, 0, 0]), np.array([0.8, 0.8, 0.0, 0.0])
    assert passes_per_iteration(fast, alpha, True).tolist() == [4, 4, 1, 1]
    assert passes_per_iteration(fast, alpha, False).tolist() == [3, 3, 1, 1]  # no Stage III
    assert passes_per_iteration(np.zeros(2), np.zeros(2), False).tolist() == [1, 1]  # GRPO


def test_update_passes_of_real_short_runs() -> None:
    """Real runs (data/short_runs/README.md): GRPO 1 pass per batch; SFPO K=3 with slow
    correction 4 until the trigger (stop_step 2: alpha 0 from step 3), then 1; without slow
    correction 3, then 1."""
    df = with_update_passes(discover([SHORT]))
    got = {
        rid.split("/")[-1]: g.sort_values("step")["value"].tolist()
        for rid, g in df[df["metric"] == PASSES].groupby("run_id")
    }
    assert got == {"grpo": [0, 1, 2, 3], "sfpo": [0, 4, 8, 9, 10], "noslow": [0, 3, 6, 7, 8]}
    stops = df[df["metric"] == "sfpo/stop_step"].groupby("run_id")["value"].max()
    assert stops.to_dict() == {"short_runs/noslow": 2.0, "short_runs/sfpo": 2.0}
    # the cost column Fig. 4 reads at the validation steps (every step here)
    (t,) = [t for t in run_tables(df[df["run_id"] == "short_runs/sfpo"], cost=PASSES)]
    assert t.index.tolist() == [0, 1, 2, 3, 4] and t["cost"].tolist() == [0, 4, 8, 9, 10]


def test_update_passes_refuse_inconsistent_logs() -> None:
    df = discover([SHORT / "sfpo"])
    bad = df.copy()
    bad.loc[(bad["metric"] == "sfpo/fast_steps") & (bad["step"] == 3), "value"] = 3.0
    with pytest.raises(
        ValueError, match=r"sfpo/fast_steps \[3.0, 3.0, 3.0, 0.0\] disagree with K=3"
    ):
        with_update_passes(bad)
    gap = df[~((df["metric"] == "sfpo/alpha") & (df["step"] == 2))]
    with pytest.raises(ValueError, match=r"sfpo/alpha not logged at every step 1..4"):
        with_update_passes(gap)
