"""Fig. 4's metric against hand-computed cases."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.efficiency import cost_to_reach, efficiency_ci, efficiency_ratio, run_tables

STEPS = [0, 5, 10, 15, 20]


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
