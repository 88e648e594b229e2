"""Figures 2, 3, 5, 6, 7 of the paper as ``(DataFrame) -> Figure`` functions.

Every curve is the mean over seeds with a 95 % CI band (see :mod:`analysis.stats`); the legend
gives each curve's number of seeds. Per-iteration training metrics are noisy at toy scale
(16 prompts x 8 samples per batch), so ``train/`` curves use a 3-step centered moving average
(per run, before averaging over seeds); validation curves are raw.
"""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pandas as pd

from analysis.plotting import (
    CI_NOTE,
    add_note,
    band_plot,
    dedupe_runs,
    mark_stops,
    runs_for,
    shared_seeds,
    style,
    trigger_note,
)
from analysis.runs import MissingRuns
from analysis.stats import minus_start, select

TRAIN_WINDOW = 3
GRPO_MU_NOTE = (
    "GRPO-μ(K=k) = SFPO with α = 1 and slow correction on:\n"
    "K + 1 update passes per rollout batch, no reposition (the equal-compute control)"
)


def _title(fig: plt.Figure, text: str, df: pd.DataFrame) -> None:
    scale = ", ".join(sorted(set(df["scale"]))) if "scale" in df else ""
    fig.suptitle(f"{text}\n[{scale} scale; {CI_NOTE}]", fontsize=10)


def _legend(fig: plt.Figure, ax: plt.Axes) -> None:
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=min(len(labels), 4), bbox_to_anchor=(0.5, -0.08)
    )


def fig2(df: pd.DataFrame) -> plt.Figure:
    """Fig. 2: average validation accuracy vs step, GRPO, GRPO-μ (when run) and SFPO, per base
    model; below, the change since step 0 per run (paired by seed: each run minus its own
    base model's accuracy, so a spread between bases, e.g. a warm-up per seed, does not hide
    the effect of training). Only the seeds every method ran are drawn."""
    style()
    runs = shared_seeds(runs_for(df, ["paper_main"]), what="Fig. 2")
    models = sorted(runs["model"].unique())
    fig, axes = plt.subplots(2, len(models), figsize=(4.8 * len(models), 6.4), squeeze=False)
    for col, model in enumerate(models):
        top, bottom = axes[0][col], axes[1][col]
        band_plot(top, runs, "val/avg", model=model)
        top.set_title(model)
        top.set_ylabel("val/avg accuracy (%)")
        delta = minus_start(select(runs, "val/avg", model=model)).assign(metric="val/avg change")
        band_plot(bottom, delta, "val/avg change")
        bottom.axhline(0, color="k", lw=0.6)
        bottom.set_ylabel("change since step 0 (points)")
    _legend(fig, axes[1][0])
    _title(fig, "Fig. 2 — validation accuracy vs step", runs)
    fig.tight_layout()
    if (runs["method"] == "GRPO-μ").any():
        add_note(fig, GRPO_MU_NOTE, y=-0.1)
    return fig


def fig3(df: pd.DataFrame) -> plt.Figure:
    """Fig. 3: response length, entropy and reward vs step, GRPO, GRPO-μ (when run) and SFPO
    (paper_main runs of DS-R1-Distill-Qwen-7B as in the paper when present, else the first
    model by name)."""
    style()
    runs = shared_seeds(runs_for(df, ["paper_main"]), what="Fig. 3")
    models = sorted(runs["model"].unique())
    runs = runs[
        runs["model"]
        == ("ds-r1-distill-qwen-7b" if "ds-r1-distill-qwen-7b" in models else models[0])
    ]
    panels = [
        ("train/response_length/mean", "response length (tokens)"),
        ("train/entropy", "entropy (nats/token)"),
        ("train/reward", "reward"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, (metric, name) in zip(axes, panels, strict=True):
        band_plot(ax, runs, metric, window=TRAIN_WINDOW)
        ax.set_title(name)
    _legend(fig, axes[0])
    _title(fig, f"Fig. 3 — training dynamics ({runs['model'].iloc[0]})", runs)
    fig.tight_layout()
    return fig


def fig5(df: pd.DataFrame) -> plt.Figure:
    """Fig. 5: (a) K=3 and (b) K=7 with several alpha vs GRPO; (c) training and (d) validation
    accuracy with slow correction on/off vs GRPO."""
    style()
    grid = runs_for(df, ["ablation_k_alpha", "paper_main"])
    grid = grid[grid["ec"] & grid["slow_correction"] & (grid["decay"] == "zero")]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for ax, k in zip(axes[:2], (3, 7), strict=True):
        sel = shared_seeds(grid[(grid["K"] == k) | (grid["method"] == "GRPO")], what="Fig. 5")
        if (sel["method"] != "GRPO").any():
            band_plot(ax, sel, "train/acc", order=by_alpha(sel), window=TRAIN_WINDOW)
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no SFPO runs with K={k}", ha="center", transform=ax.transAxes)
        ax.set_title(f"({'ab'[k == 7]}) K={k}, varying α")
    try:
        slow = runs_for(df, ["slow_correction", "paper_main"])
        slow = slow[
            slow["ec"] & (slow["decay"] == "zero") & ((slow["K"] == 3) | (slow["method"] == "GRPO"))
        ]
        slow = shared_seeds(slow[slow["alpha"].isin([0.0, 0.8])], what="Fig. 5c/d")
        for ax, metric, tag in ((axes[2], "train/acc", "c"), (axes[3], "val/avg", "d")):
            band_plot(ax, slow, metric, window=TRAIN_WINDOW if metric.startswith("train") else 1)
            ax.set_title(f"({tag}) slow correction on/off: {metric}")
            ax.legend(fontsize=7)
    except LookupError as err:
        slow = grid.iloc[:0]
        for ax in axes[2:]:
            ax.text(0.5, 0.5, str(err), ha="center", wrap=True, transform=ax.transAxes)
    _title(
        fig,
        "Fig. 5 — ablations: K × α and slow correction (train/acc = fraction of correct rollouts)",
        grid,
    )
    fig.tight_layout()
    note = trigger_note(pd.concat([dedupe_runs(grid), slow]))
    if (grid["method"] == "GRPO-μ").any():
        note += f"\n{GRPO_MU_NOTE} (drawn at α = 1 in panels a/b)"
    add_note(fig, note)
    return fig


def by_alpha(runs: pd.DataFrame) -> list[str]:
    """Labels in order of the configured alpha (``sfpo.alpha``, not the label; GRPO = 0
    first, GRPO-μ at 1), ties by label."""
    one = runs.drop_duplicates("label")
    return [r.label for r in sorted(one.itertuples(), key=lambda r: (float(r.alpha), r.label))]


def _ec_panels(fig_title: str, runs: pd.DataFrame, hue_note: str) -> plt.Figure:
    panels = [
        ("train/entropy", TRAIN_WINDOW),
        ("sfpo/alpha", 1),
        ("train/acc", TRAIN_WINDOW),
        ("val/avg", 1),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for ax, (metric, window) in zip(axes, panels, strict=True):
        band_plot(ax, runs, metric, window=window)
        mark_stops(ax, runs[runs["ec"]])
        ax.set_title(metric)
    _legend(fig, axes[1])
    _title(fig, f"{fig_title} (dashed: each EC run's z-score stop step; {hue_note})", runs)
    fig.tight_layout()
    add_note(fig, trigger_note(runs), y=-0.1)
    return fig


def _matching(df: pd.DataFrame, experiment: str, vary: tuple[str, ...], what: str) -> pd.DataFrame:
    """SFPO runs of ``experiment`` plus SFPO runs of any experiment (e.g. paper_main) whose
    effective config equals one of theirs except in the keys starting with a ``vary`` prefix
    — the other arm of an on/off comparison."""
    own = runs_for(df, [experiment], grpo_baseline=False)
    own = own[own["method"] == "SFPO"]
    if own.empty:
        raise MissingRuns(f"no SFPO runs with extras.experiment={experiment}")

    def rest(config: str) -> str:
        c = json.loads(config)
        return json.dumps({k: v for k, v in c.items() if not k.startswith(vary)}, sort_keys=True)

    targets = set(own.drop_duplicates("run_id")["config"].map(rest))
    pool = dedupe_runs(df[df["method"] == "SFPO"])
    one = pool.drop_duplicates("run_id")
    keep = set(one.loc[one["config"].map(rest).isin(targets), "run_id"])
    return shared_seeds(pool[pool["run_id"].isin(keep)], what=what)


def fig6(df: pd.DataFrame) -> plt.Figure:
    """Fig. 6: SFPO with and without entropy control; dashed lines at the stop steps."""
    style()
    own_decay = df[~df["ec"] | (df["decay"] == "zero")]  # the trigger-on arm: alpha -> 0
    runs = _matching(
        own_decay, "entropy_control", ("sfpo.entropy_control.", "sfpo.decay"), "Fig. 6"
    )
    return _ec_panels("Fig. 6 — entropy control on/off", runs, "after the stop α = 0")


def fig7(df: pd.DataFrame) -> plt.Figure:
    """Fig. 7: what alpha does after the stop step: set to zero vs linear decay."""
    style()
    runs = _matching(df, "alpha_decay", ("sfpo.decay",), "Fig. 7")
    runs = runs[runs["ec"]]
    note = "linear: α decays to 0 over sfpo.decay_steps"
    return _ec_panels("Fig. 7 — α after the stop step: zero vs linear decay", runs, note)
