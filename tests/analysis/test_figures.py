"""Each table/figure function on a small synthetic DataFrame."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from synthetic_runs import write_all

from analysis import bar_figures, figures, tables
from analysis.runs import MissingRuns, discover


@pytest.fixture(scope="module")
def df(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return discover([write_all(tmp_path_factory.mktemp("runs") / "runs")])


def test_fig8_draws(df: pd.DataFrame) -> None:
    """Figs 1-7: their drawn values are checked in test_figure_content.py; Fig. 8's in
    test_fig8_stages.py."""
    fig = bar_figures.fig8(df)
    assert isinstance(fig, plt.Figure) and fig.axes
    drawn = sum(len(ax.lines) + len(ax.patches) + len(ax.collections) for ax in fig.axes)
    assert drawn > 0
    plt.close(fig)


def test_curves_show_seed_count_and_stop_steps(df: pd.DataFrame) -> None:
    fig = figures.fig6(df)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "SFPO(K=3, α=0.8) (n=2)" in labels and "SFPO(K=3, α=0.8, no EC) (n=2)" in labels
    stops = [ln for ln in fig.axes[0].lines if list(ln.get_xdata()) == [6, 6]]
    assert len(stops) == 2  # one dashed line per EC run (both stop at step 6)
    plt.close(fig)


def test_table1_hand_computed(df: pd.DataFrame) -> None:
    md = tables.table1(df, "md")
    # Base: step-0 val of seeds 0, 1 = 20, 21 -> 20.5 ± t(0.975, 1) * sd / sqrt(2) = 6.4
    assert "| tiny-qwen2 | Base | 2 | 20.5 ± 6.4 | 20.5 ± 6.4 | – |" in md
    # GRPO ends at 30/31, SFPO at 40/41; paired gain over the same seed's base: 10 and 20 exactly
    assert "| tiny-qwen2 | GRPO | 2 | 30.5 ± 6.4 | 30.5 ± 6.4 | 10.0 ± 0.0 |" in md
    assert "| tiny-qwen2 | SFPO | 2 | 40.5 ± 6.4 | 40.5 ± 6.4 | 20.0 ± 0.0 |" in md
    assert "No published number is shown" in md
    csv = tables.table1(df, "csv").splitlines()
    assert csv[0] == "model,data,method,seeds,bench,mean,lo,hi,paper"
    assert r"\begin{tabular}" in tables.table1(df, "tex")


def test_published_numbers_beside_ours_when_model_and_data_match(df: pd.DataFrame) -> None:
    paper_like = df[df["experiment"] == "paper_main"].assign(
        model="qwen2.5-math-1.5b", data="dapo_math"
    )
    md = tables.table1(paper_like, "md")
    assert "(paper 38.35)" in md and "(paper 40.19)" in md and "(paper 25.73)" in md
    assert "No published number" not in md


def test_efficiency_frame_hand_computed(df: pd.DataFrame) -> None:
    eff = bar_figures.efficiency_frame(df, n_boot=50).set_index(["method", "cost"])
    # GRPO target 30.5 at step 10 (1280 rollouts, 10 s); SFPO reaches it at step 5 (640, 2 s/step)
    assert eff.loc[("SFPO", "rollouts"), "ratio"] == pytest.approx(2.0)
    assert eff.loc[("SFPO", "wall-clock (s)"), "ratio"] == pytest.approx(1.0)
    assert eff.loc[("GRPO-μ", "rollouts"), "ratio"] == pytest.approx(1.0)
    assert set(eff["n_seeds"]) == {2} and set(eff["target"]) == {30.5}
    assert list(eff.columns) == [
        "model",
        "label",
        "ratio",
        "lo",
        "hi",
        "not_reached",
        "n_seeds",
        "target",
    ]


def test_per_seed_costs_to_target(df: pd.DataFrame) -> None:
    per = bar_figures.per_seed_frame(df)
    assert list(per.columns) == ["model", "method", "label", "seed", "cost", "cost_to_target", "target"]  # fmt: skip
    got = per.set_index(["method", "seed", "cost"])["cost_to_target"]
    # target 30.5; seed 0 (val 20 + gain * step): GRPO 30 at step 10 -> never; seed 1: step 10
    assert got[("GRPO", 0, "rollouts")] == float("inf") and got[("GRPO", 1, "rollouts")] == 1280
    assert got[("SFPO", 0, "update passes")] == 25 and got[("SFPO", 1, "update passes")] == 20
    assert got[("GRPO-μ", 0, "wall-clock (s)")] == 20 and got[("GRPO-μ", 1, "rollouts")] == 1280


def test_missing_runs_name_what_is_missing(df: pd.DataFrame) -> None:
    with pytest.raises(MissingRuns, match="skywork"):
        tables.table2(df)
    with pytest.raises(MissingRuns, match="alpha_decay"):
        figures.fig7(df[df["experiment"] != "alpha_decay"])


def test_outputs_are_written_as_png_and_pdf(df: pd.DataFrame, tmp_path: Path) -> None:
    from analysis.plotting import save

    paths = save(figures.fig2(df), tmp_path, "fig2")
    assert [p.name for p in paths] == ["fig2.png", "fig2.pdf"] and all(
        p.stat().st_size > 1000 for p in paths
    )
