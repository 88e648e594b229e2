"""The pre-registered confirmation's analysis on synthetic per-seed curves whose answer is known."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis import confirm
from analysis.confirm import REGISTERED, Refused, analyse, holm, load_plan

ARMS = {"A": {"alpha": 0.0, "lr": 3e-4, "overrides": ["experiment=repro/confirm", "algorithm=grpo"]},
        "B": {"alpha": 0.8, "lr": 3e-4, "overrides": ["experiment=repro/confirm", "algorithm=sfpo"]},
        "C": {"alpha": 0.8, "lr": 8.8e-5, "overrides": ["experiment=repro/confirm_step", "algorithm=sfpo"]}}  # fmt: skip
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
            run = registered_run(arm)
            for t in STEPS:
                v = 24 + 0.1 * t + base + (shift[arm] if t else 0) + rng.normal(0, noise)
                rows.append({"run_id": f"{arm}_s{s}", "alpha": cfg["alpha"], "lr": cfg["lr"], **run,
                             "identity": arm, "seed": s, "step": t, "metric": "val/avg", "value": v})  # fmt: skip
    return pd.DataFrame(rows)


def registered_run(arm: str) -> dict:
    """The run-level columns (analysis.runs) of a registered run of ``arm``."""
    want = confirm.registered_settings(ARMS[arm], ARMS[arm]["alpha"])
    ec = want.pop("sfpo.entropy_control.enabled")
    return {"experiment": want.pop("experiment"), "method": want.pop("method"), "ec": ec,
            "config": json.dumps(want)}  # fmt: skip


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


def test_identical_curves_give_ratio_1_and_curves_that_never_cross_give_none() -> None:
    steps = np.arange(0.0, 51, 5)
    flat = np.full((3, len(steps)), 30.0)  # 3 seeds, above the threshold from step 0
    idx = np.arange(3)[None, :]
    assert confirm._ratios({"A": flat, "B": flat}, steps, idx, 28.0)[0] == 1.0
    assert math.isnan(confirm._ratios({"A": flat, "B": flat}, steps, idx, 31.0)[0])
    df = runs({"A": 0.0, "B": 0.0, "C": 0.0})
    same = df.copy()  # B's curves = A's
    same.loc[same["run_id"].str[0] == "B", "value"] = df.loc[df["run_id"].str[0] == "A", "value"].to_numpy()  # fmt: skip
    ratio = confirm.rollout_ratio(confirm.assign_arms(same, PLAN), 20.0, 200, 0)
    assert ratio["mean"] == 1.0 and ratio["ci_lo"] == ratio["ci_hi"] == 1.0 and ratio["p"] == 1.0
    never = confirm.rollout_ratio(confirm.assign_arms(same, PLAN), 99.0, 200, 0)
    assert math.isnan(never["mean"]) and math.isnan(never["p"]) and never["undefined_share"] == 1.0
    assert "| rollout_ratio_A_over_B | – | [–, –] |" in confirm.markdown(
        analyse(df, PLAN | {"threshold": 99.0})["confirm"], PLAN
    )


def test_runs_outside_the_plan_seeds_are_left_out_and_other_settings_refused() -> None:
    df = runs({"A": 0.0, "B": 1.0, "C": 0.0})
    extra = df[df["run_id"] == "A_s10"].assign(run_id="A_s3", seed=3, value=0.0)
    out = analyse(pd.concat([df, extra]), PLAN)["confirm"]
    assert out["left_out_seed_not_in_plan"] == ["A_s3"]
    assert out["arm_means"]["A"]["n_seeds"] == 20 and out["missing_runs"] == []
    for key, bad in (("val.limit", 100), ("data.toy.split", "text"), ("iterations", 80)):
        cfg = json.loads(df["config"].iloc[0]) | {key: bad}
        stray = df.assign(config=df["config"].where(df["run_id"] != "A_s11", json.dumps(cfg)))
        with pytest.raises(Refused, match=f"A_s11: {key}={bad!r}, arm A registers"):
            analyse(stray, PLAN)
    on = df.assign(ec=df["ec"] | (df["run_id"] == "B_s12"))
    with pytest.raises(Refused, match="B_s12: sfpo.entropy_control.enabled=True, arm B"):
        analyse(on, PLAN)
    mu = df.assign(method=df["method"].where(df["run_id"] != "C_s13", "GRPO-μ"))
    with pytest.raises(Refused, match="C_s13: method='GRPO-μ', arm C registers 'SFPO'"):
        analyse(mu, PLAN)


def test_a_run_of_another_experiment_is_refused(tmp_path, capsys) -> None:  # noqa: ANN001
    """A committed run of experiment=repro/paper_main (alpha 0.8, lr 3e-4: arm B's method and
    lr) read by the confirmation's command line: one line, exit 2, naming run and setting."""
    plan = {"analysis": {"sha256": confirm.file_digest()}, "registered": REGISTERED,
            "seeds": SEEDS, "arms": ARMS, "threshold": 28.0}  # fmt: skip
    (tmp_path / "plan.yaml").write_text(json.dumps(plan))
    run = confirm.REPO / "paper_figures/repro_runs/repro/paper_main/sfpo_s1"
    code = confirm.main(["--runs", str(run), "--plan", str(tmp_path / "plan.yaml"), "--out", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 2 and out == [
        "confirm: REFUSED — sfpo_s1: extras.experiment='paper_main' is not the confirmation's "
        "(confirm, confirm_step)"
    ]
    assert not (tmp_path / "confirm.json").exists()
