"""Tables pool seeds of one configuration per method, never several variants."""

from __future__ import annotations

import pandas as pd
import pytest
from synthetic_runs import ITERS, write_run

from analysis import paper
from analysis.runs import MissingRuns, discover
from analysis.tables import one_variant, table1, table_frame


def test_several_sfpo_variants_are_refused_not_pooled():
    runs = pd.DataFrame({"label": ["SFPO(K=3, α=0.8)", "SFPO(K=7, α=0.3)"]})
    with pytest.raises(MissingRuns, match="several variants"):
        one_variant(runs, "paper_main", "tiny-qwen2")
    one_variant(runs.iloc[:1], "paper_main", "tiny-qwen2")  # one variant: fine


def test_a_diverged_seed_is_not_dropped_silently():
    import math

    from analysis.stats import curve_ci

    rows = pd.DataFrame(
        {"label": ["GRPO"] * 3, "step": [5] * 3, "metric": ["val/avg"] * 3,
         "value": [10.0, 20.0, math.nan]}
    )  # fmt: skip
    with pytest.warns(UserWarning, match="1 of 3 seeds are NaN/inf"):
        out = curve_ci(rows)
    assert out["n"].tolist() == [2] and out["mean"].tolist() == [15.0]


def test_method_rows_and_base_are_over_the_seeds_every_method_ran(tmp_path):
    """Item 8: an extra GRPO seed (seed 2, a weaker base) neither moves GRPO's row nor the
    Base row; the note names it. val/avg = 20 + seed + gain * step (synthetic_runs)."""
    root = tmp_path / "runs"
    for seed in (0, 1, 2):
        write_run(root / f"grpo_s{seed}", "paper_main", seed=seed, alpha=0.0, gain=1.0,
                  offset=-10.0 if seed == 2 else 0.0)  # fmt: skip
    for seed in (0, 1):
        write_run(root / f"sfpo_s{seed}", "paper_main", seed=seed, alpha=0.8, gain=2.0)
    df = discover([root])
    long = table_frame(df, "paper_main", paper.TABLE1, "dapo_math", paper.TABLE1_BENCHMARKS)
    avg = long[long["bench"] == "avg"].set_index("method")
    assert avg.loc["GRPO", "mean"] == pytest.approx(20.5 + ITERS)  # seeds 0, 1 only
    assert avg.loc["Base", "mean"] == pytest.approx(20.5)
    assert avg.loc["SFPO", "mean"] == pytest.approx(20.5 + 2 * ITERS)
    assert set(avg["seeds"]) == {2}
    assert long.attrs["left_out"] == {"tiny-qwen2": {"GRPO": [2]}}
    assert "left out (not run by every method): GRPO seed 2" in table1(df, "md")


def test_a_run_with_skipped_steps_or_rollbacks_is_marked(tmp_path):
    """Issue 30, item 1: a run that skipped non-finite steps or rolled iterations back to
    theta0 is named in the table's note (a clean run is not)."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        write_run(root / f"grpo_s{seed}", "paper_main", seed=seed, alpha=0.0)
        write_run(root / f"sfpo_s{seed}", "paper_main", seed=seed, alpha=0.8)
    assert "NOT CLEAN" not in table1(discover([root]), "md")
    metrics = root / "sfpo_s1" / "metrics.csv"
    rows = pd.read_csv(metrics)
    train = rows["train/acc"].notna()
    rows.loc[train, "train/skipped_steps"] = 0.0
    rows.loc[train, "train/restored_iterations"] = 0.0
    rows.loc[rows.index[train][-1], ["train/skipped_steps", "train/restored_iterations"]] = [3, 1]
    rows.to_csv(metrics, index=False)
    md = table1(discover([root]), "md")
    assert "NOT CLEAN" in md and "SFPO seed 1: 3 skipped step(s), 1 rollback(s)" in md
