"""What each figure draws (lines' x/y, bar heights, labels, titles, notes) against the values
computed by hand from the synthetic runs (``synthetic_runs``: seeds 0 and 1; val/avg = 20 +
seed + gain * step at steps 0, 5, 10; train/acc = 0.2 + 0.01 * gain * step + 0.001 * seed).
Fig. 8 is tested in test_fig8_stages.py."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from synthetic_runs import write_all

from analysis import bar_figures, diagram, figures
from analysis.runs import discover

T_HALF = 12.7062047 * np.std([0.0, 1.0], ddof=1) / np.sqrt(2)  # 95 % CI half-width, 2 seeds
STEPS = list(range(1, 11))


@pytest.fixture(scope="module")
def df(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return discover([write_all(tmp_path_factory.mktemp("runs") / "runs")])


def curves(ax: plt.Axes) -> dict[str, tuple[list[float], list[float]]]:
    """Labelled lines of an axes: label -> (x, y)."""
    return {
        ln.get_label(): (list(map(float, ln.get_xdata())), list(map(float, ln.get_ydata())))
        for ln in ax.lines
        if not ln.get_label().startswith("_")
    }


def val_avg(gain: float) -> list[float]:
    return [20.5 + gain * s for s in (0, 5, 10)]


def train_acc(gain: float) -> list[float]:
    """Per-seed 3-step centred moving average (edges: 2 points), then the mean of seeds 0, 1."""
    raw = [0.2005 + 0.01 * gain * s for s in STEPS]
    return [float(np.mean(raw[max(0, i - 1) : i + 2])) for i in range(len(raw))]


def check(ax: plt.Axes, want: dict[str, tuple[list[float], list[float]]]) -> None:
    got = curves(ax)
    assert set(got) == set(want), (ax.get_title(), sorted(got))
    for label, (x, y) in want.items():
        assert got[label][0] == pytest.approx(x), label
        assert got[label][1] == pytest.approx(y), label


def test_fig1_draws_the_reposition_on_the_line_theta0_thetak() -> None:
    fig = diagram.fig1()
    ax = fig.axes[0]
    points = {(round(float(ln.get_xdata()[0]), 6), round(float(ln.get_ydata()[0]), 6)) for ln in ax.lines if len(ln.get_xdata()) == 1}  # fmt: skip
    theta = [(0.0, 0.0), (0.9, 1.0), (2.0, -0.1), (3.2, 1.2)]
    tilde = (0.6 * 3.2, 0.6 * 1.2)  # θ0 + α(θK − θ0), α = 0.6
    assert points == {*theta, tilde, (tilde[0] + 0.25, round(tilde[1] + 0.85, 6))}
    chord = [ln for ln in ax.lines if ln.get_linestyle() == ":"]
    assert [list(chord[0].get_xdata()), list(chord[0].get_ydata())] == [[0.0, 3.2], [0.0, 1.2]]
    texts = {t.get_text() for t in ax.texts}
    assert {"Stage I — fast trajectory", "Stage II — reposition", "Stage III — slow correction"} <= texts  # fmt: skip
    assert "K = 3, α = 0.6" in ax.get_title()
    plt.close(fig)


def test_fig2_validation_curves_and_paired_change(df: pd.DataFrame) -> None:
    fig = figures.fig2(df)
    top, bottom = fig.axes
    x = [0.0, 5.0, 10.0]
    check(top, {"GRPO (n=2)": (x, val_avg(1.0)), "GRPO-μ(K=3) (n=2)": (x, val_avg(1.5)), "SFPO(K=3, α=0.8) (n=2)": (x, val_avg(2.0))})  # fmt: skip
    change = {"GRPO (n=2)": (x, [0.0, 5.0, 10.0]), "GRPO-μ(K=3) (n=2)": (x, [0.0, 7.5, 15.0]), "SFPO(K=3, α=0.8) (n=2)": (x, [0.0, 10.0, 20.0])}  # fmt: skip
    check(bottom, change)
    # bands: Student t over 2 seeds on top; the paired change is the same for both seeds
    ys = np.concatenate([p.vertices[:, 1] for p in top.collections[0].get_paths()])
    assert (ys.min(), ys.max()) == pytest.approx((20.5 - T_HALF, 30.5 + T_HALF))
    ys = np.concatenate([p.vertices[:, 1] for p in bottom.collections[2].get_paths()])
    assert (ys.min(), ys.max()) == pytest.approx((0.0, 20.0))
    assert top.get_title() == "tiny-qwen2" and "Fig. 2" in fig._suptitle.get_text()
    # GRPO grey, GRPO-μ and SFPO two other, distinct colours; the note says what GRPO-μ is
    colors = {ln.get_label(): ln.get_color() for ln in top.lines}
    assert colors["GRPO (n=2)"] == (0.35, 0.35, 0.35)
    assert len({str(c) for c in colors.values()}) == 3
    assert (
        fig.texts[-1].get_text().startswith("GRPO-μ(K=k) = SFPO with α = 1 and slow correction on")
    )
    plt.close(fig)


def test_fig3_training_dynamics(df: pd.DataFrame) -> None:
    fig = figures.fig3(df)
    assert [ax.get_title() for ax in fig.axes] == ["response length (tokens)", "entropy (nats/token)", "reward"]  # fmt: skip
    x = [float(s) for s in STEPS]
    for ax, f in zip(fig.axes, (lambda s: 10 + 0.1 * s, lambda s: 0.5 - 0.01 * s, lambda s: 0.3 + 0.01 * s), strict=True):  # fmt: skip
        raw = [f(s) for s in STEPS]
        y = [float(np.mean(raw[max(0, i - 1) : i + 2])) for i in range(len(raw))]
        check(ax, {"GRPO (n=2)": (x, y), "GRPO-μ(K=3) (n=2)": (x, y), "SFPO(K=3, α=0.8) (n=2)": (x, y)})  # fmt: skip
    assert "tiny-qwen2" in fig._suptitle.get_text()
    plt.close(fig)


def test_fig4_cost_curves_and_ratio_bars(df: pd.DataFrame) -> None:
    fig = bar_figures.fig4(df)
    rollouts, passes, wall, bars = fig.axes
    target = ([0.0, 1.0], [30.5, 30.5])  # axhline at GRPO's best seed-mean accuracy
    g, mu, s = "GRPO (n=2)", "GRPO-μ(K=3) (n=2)", "SFPO(K=3, α=0.8) (n=2)"
    r = [0.0, 640.0, 1280.0]
    check(rollouts, {g: (r, val_avg(1.0)), mu: (r, val_avg(1.5)), s: (r, val_avg(2.0)), "GRPO's best (target)": target})  # fmt: skip
    # update passes: GRPO 1 per batch; SFPO and GRPO-μ 4 (K + 1) until the trigger at step 6,
    # then 1: 20 after step 5, 25 after step 10
    p = [0.0, 20.0, 25.0]
    check(passes, {g: ([0.0, 5.0, 10.0], val_avg(1.0)), mu: (p, val_avg(1.5)), s: (p, val_avg(2.0)), "GRPO's best (target)": target})  # fmt: skip
    # wall-clock: GRPO 1 s per step, SFPO and GRPO-μ (K=3) 2 s per step
    w = [0.0, 10.0, 20.0]
    check(wall, {g: ([0.0, 5.0, 10.0], val_avg(1.0)), mu: (w, val_avg(1.5)), s: (w, val_avg(2.0)), "GRPO's best (target)": target})  # fmt: skip
    # GRPO reaches 30.5 at step 10 (1280 rollouts, 10 passes, 10 s), SFPO at step 5 (640, 20,
    # 10 s), GRPO-μ (28 at step 5) at step 10 (1280, 25, 20 s)
    heights = {b.get_gid(): b.get_height() for b in bars.patches}
    want = {"SFPO|rollouts": 2.0, "SFPO|update passes": 0.5, "SFPO|wall-clock (s)": 1.0,
            "GRPO-μ|rollouts": 1.0, "GRPO-μ|update passes": 0.4, "GRPO-μ|wall-clock (s)": 0.5}  # fmt: skip
    assert heights == pytest.approx(want)
    ticks = [t.get_text() for t in bars.get_xticklabels()]
    assert ticks == [f"tiny-qwen2\n{c}" for c in ("rollouts", "update passes", "wall-clock (s)")]
    # the seeds differ only in level, the same in both arms: every paired resample agrees
    assert [t.get_text().split("\n")[:2] for t in bars.texts][:2] == [["2.00x", "[2.00, 2.00]"], ["0.50x", "[0.50, 0.50]"]]  # fmt: skip
    assert "paired bootstrap" in fig._suptitle.get_text() and "GRPO-μ" in fig._suptitle.get_text()
    plt.close(fig)


def test_fig5_k_alpha_and_slow_correction(df: pd.DataFrame) -> None:
    fig = figures.fig5(df)
    a, b, c, d = fig.axes
    x = [float(s) for s in STEPS]
    grpo, sfpo = ("GRPO (n=2)", (x, train_acc(1.0))), ("SFPO(K=3, α=0.8) (n=2)", (x, train_acc(2.0)))  # fmt: skip
    mu = ("GRPO-μ(K=3) (n=2)", (x, train_acc(1.5)))  # paper_main's alpha = 1 run, at K = 3
    check(a, dict([grpo, sfpo, mu, ("SFPO(K=3, α=0.3) (n=2)", (x, train_acc(1.5)))]))
    # curves in order of the configured alpha: GRPO-μ last, at alpha = 1
    legend = [t.get_text() for t in a.get_legend().get_texts()]
    assert legend == ["GRPO (n=2)", "SFPO(K=3, α=0.3) (n=2)", "SFPO(K=3, α=0.8) (n=2)", "GRPO-μ(K=3) (n=2)"]  # fmt: skip
    check(b, dict([grpo, ("SFPO(K=7, α=0.6) (n=2)", (x, train_acc(1.2)))]))
    check(c, dict([grpo, sfpo, ("SFPO(K=3, α=0.8, no slow) (n=2)", (x, train_acc(1.1)))]))
    v = [0.0, 5.0, 10.0]
    want_d = {"GRPO (n=2)": (v, val_avg(1.0)), "SFPO(K=3, α=0.8) (n=2)": (v, val_avg(2.0)), "SFPO(K=3, α=0.8, no slow) (n=2)": (v, val_avg(1.1))}  # fmt: skip
    check(d, want_d)
    assert [ax.get_title() for ax in (a, b)] == ["(a) K=3, varying α", "(b) K=7, varying α"]
    note = fig.texts[-1].get_text().splitlines()
    assert note[0].startswith("entropy trigger per run")
    for label in ("GRPO-μ(K=3)", "SFPO(K=3, α=0.3)", "SFPO(K=3, α=0.8)", "SFPO(K=3, α=0.8, no slow)", "SFPO(K=7, α=0.6)"):  # fmt: skip
        assert f"{label}: trigger on (window 5), fired at step: s0@6, s1@6" in note
    assert note[-2].startswith("GRPO-μ(K=k) = SFPO with α = 1") and note[-1].endswith("(drawn at α = 1 in panels a/b)")  # fmt: skip
    assert len(note) == 8  # GRPO is not listed: the trigger is unused at alpha = 0
    plt.close(fig)


def _ec_figure(fig: plt.Figure, other: str, gain: float) -> None:
    entropy, alpha, acc, val = fig.axes
    on = "SFPO(K=3, α=0.8) (n=2)"
    x = [float(s) for s in STEPS]
    stopped = [0.8] * 5 + [0.0] * 5  # the synthetic trigger fires at step 6
    stop = {"z-score stop step": ([6.0, 6.0], [0.0, 1.0])}  # axvline, labelled once
    check(alpha, stop | {on: (x, stopped), other: (x, stopped if "decay" in other else [0.8] * 10)})  # fmt: skip
    check(acc, stop | {on: (x, train_acc(2.0)), other: (x, train_acc(gain))})
    v = [0.0, 5.0, 10.0]
    check(val, stop | {on: (v, val_avg(2.0)), other: (v, val_avg(gain))})
    for ax in fig.axes:  # one dashed line per trigger-on run, at its stop step
        stops = [list(ln.get_xdata()) for ln in ax.lines if ln.get_linestyle() == "--"]
        assert stops == [[6, 6]] * (4 if "decay" in other else 2)
    assert [ax.get_title() for ax in fig.axes] == ["train/entropy", "sfpo/alpha", "train/acc", "val/avg"]  # fmt: skip
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert on in legend and other in legend


def test_fig6_entropy_control_on_off(df: pd.DataFrame) -> None:
    fig = figures.fig6(df)
    _ec_figure(fig, "SFPO(K=3, α=0.8, no EC) (n=2)", 1.8)
    note = fig.texts[-1].get_text().splitlines()
    assert note[1:] == [
        "SFPO(K=3, α=0.8): trigger on (window 5), fired at step: s0@6, s1@6",
        "SFPO(K=3, α=0.8, no EC): trigger off",
    ]
    plt.close(fig)


def test_fig7_alpha_decay(df: pd.DataFrame) -> None:
    fig = figures.fig7(df)
    _ec_figure(fig, "SFPO(K=3, α=0.8, linear decay over 3) (n=2)", 1.9)
    assert "Fig. 7" in fig._suptitle.get_text()
    plt.close(fig)
