"""The pre-registered confirmation's analysis on synthetic per-seed curves whose answer is known."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis import confirm
from analysis.confirm import REGISTERED, Refused, analyse, holm, load_plan

ARMS = {"A": {"alpha": 0.0, "lr": 3e-4}, "B": {"alpha": 0.8, "lr": 3e-4},
        "C": {"alpha": 0.8, "lr": 8.8e-5}}  # fmt: skip
SEEDS = list(range(10, 30))
PLAN = {"arms": ARMS, "seeds": SEEDS, "threshold": 28.0, "analysis": {"commit": "test"}}
STEPS = range(0, 51, 5)


def runs(shift: dict[str, float], noise: float = 0.5, rng_seed: int = 0) -> pd.DataFrame:
    """Tidy val/avg rows: seed s, arm a at step t = 24 + 0.1 t + shift[a] (from step 5 on)
    + a seed effect + N(0, noise) evaluation noise, so B - A over steps 5-50 is known."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for arm, cfg in ARMS.items():
        for s in SEEDS:
            base = rng.normal(0, 1)
            for t in STEPS:
                v = 24 + 0.1 * t + base + (shift[arm] if t else 0) + rng.normal(0, noise)
                rows.append({"run_id": f"{arm}_s{s}", "alpha": cfg["alpha"], "lr": cfg["lr"],
                             "identity": arm, "seed": s, "step": t, "metric": "val/avg", "value": v})  # fmt: skip
    return pd.DataFrame(rows)


def test_a_real_gain_of_b_is_a_success_and_c_reads_as_step_size() -> None:
    out = analyse(runs({"A": 0.0, "B": 2.0, "C": 0.0}), PLAN)["confirm"]
    prim = out["B_minus_A_mean_acc_5_50"]
    assert prim["n_seeds"] == 20 and prim["mean"] == pytest.approx(2.0, abs=0.4)
    assert prim["ci_lo"] > 0 and prim["success"] and prim["p"] < 1e-3 and prim["wilcoxon_p"] < 1e-3
    assert out["C_minus_A_mean_acc_5_50"]["ci_lo"] < 0 < out["C_minus_A_mean_acc_5_50"]["ci_hi"]
    assert out["B_minus_A_acc_at_50"]["mean"] == pytest.approx(2.0, abs=0.6)
    ratio = out["rollout_ratio_A_over_B"]
    assert ratio["mean"] > 1.5 and ratio["ci_lo"] > 1 and ratio["n_seeds"] == 20
    assert out["reading"].endswith("the gain, if any, is step size, not repositioning")
    assert out["missing_runs"] == []
    for key in ("C_minus_A_mean_acc_5_50", "rollout_ratio_A_over_B", "B_minus_A_acc_at_50"):
        assert out[key]["p_holm"] >= out[key]["p"]


def test_no_gain_is_a_failure_and_every_run_is_still_reported() -> None:
    df = runs({"A": 0.0, "B": 0.0, "C": 1.5}, rng_seed=1)
    df = df[~((df["run_id"] == "B_s12") & (df["step"] == 50))]  # an unfinished run
    out = analyse(df, PLAN)["confirm"]
    prim = out["B_minus_A_mean_acc_5_50"]
    assert not prim["success"] and prim["ci_lo"] < 0 < prim["ci_hi"] and prim["n_seeds"] == 19
    assert out["missing_runs"] == ["B_s12"]
    assert out["C_minus_A_mean_acc_5_50"]["ci_lo"] > 0
    assert out["reading"].startswith("B does not beat A; C does")


def test_only_the_registered_primary_and_plan_are_accepted(tmp_path) -> None:  # noqa: ANN001
    df = runs({"A": 0.0, "B": 0.0, "C": 0.0})
    with pytest.raises(Refused, match="registered primary is 'B_minus_A_mean_acc_5_50'"):
        analyse(df, PLAN, primary="B_minus_A_acc_at_50")
    other = {"registered": {**REGISTERED, "primary": {**REGISTERED["primary"], "steps": [0, 50]}}}
    (tmp_path / "plan.yaml").write_text(json.dumps(other))
    with pytest.raises(Refused, match="differs"):
        load_plan(tmp_path / "plan.yaml")
    stray = df.assign(lr=df["lr"].where(df["run_id"] != "A_s10", 1e-3))
    with pytest.raises(Refused, match="A_s10: alpha=0, lr=0.001 is no arm"):
        analyse(stray, PLAN)


def test_the_committed_plan_registers_this_analysis() -> None:
    plan = load_plan()  # refuses unless analysis/confirm.py is byte for byte the registered one
    assert plan["seeds"] == SEEDS and plan["arms"]["C"]["lr"] == pytest.approx(8.8e-5)
    assert set(plan["arms"]) >= {"A", "B", "C"}


def test_holm_and_the_threshold_crossing() -> None:
    assert holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06], nan_ok=True)
    curve = pd.Series([24.0, 26.0, 30.0], index=[0, 5, 10])
    assert confirm.crossing(curve, 28.0) == pytest.approx(7.5 * 128)
    assert math.isinf(confirm.crossing(curve, 31.0))


def test_the_runner_runs_the_registered_arms_seed_by_seed(tmp_path, capsys) -> None:  # noqa: ANN001
    from analysis import reproduce

    runs = reproduce.confirm_plan()
    plan = load_plan()
    assert len(runs) == len(plan["arms"]) * 20
    assert [r.name for r in runs[:4]] == [f"confirm/{a}_s10" for a in plan["arms"]]
    for r in runs:
        arm, seed = r.name.removeprefix("confirm/").split("_s")
        assert r.overrides == (*plan["arms"][arm]["overrides"], f"seed={seed}")
    assert reproduce.main(["--plan", "confirm", "--root", str(tmp_path), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("new     confirm/") == len(runs)
