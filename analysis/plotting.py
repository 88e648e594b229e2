"""Shared plotting: seaborn style, run selection, mean ± 95 % CI bands, deterministic saving."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on the machines this runs on

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis.identity import check_pooling, dedupe  # noqa: E402
from analysis.runs import MissingRuns  # noqa: E402
from analysis.stats import curve_ci, select, smooth  # noqa: E402

CI_NOTE = "mean ± 95 % CI (Student t) over the seeds all curves share"


def style() -> None:
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "legend.frameon": False})


def dedupe_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Keep one run per identical effective config + seed (e.g. GRPO under K=3 and K=7, or
    paper_main's SFPO and the slow-correction grid's α=0.8/slow-on point): see
    :func:`analysis.identity.dedupe`."""
    return dedupe(df)


def runs_for(
    df: pd.DataFrame, experiments: Sequence[str], grpo_baseline: bool = True
) -> pd.DataFrame:
    """Runs of these experiments; if they hold no GRPO run, GRPO runs of any experiment with
    the same model, data and iterations are added as the baseline (alpha = 0 makes the other
    SFPO settings irrelevant). Raises :class:`MissingRuns` when there are none."""
    sel = df[df["experiment"].isin(experiments)]
    if sel.empty:
        raise MissingRuns(f"no runs with extras.experiment in {list(experiments)}")
    if grpo_baseline and not (sel["method"] == "GRPO").any():
        same = (
            df["model"].isin(sel["model"].unique())
            & df["data"].isin(sel["data"].unique())
            & df["iterations"].isin(sel["iterations"].unique())
        )
        sel = pd.concat([sel, df[same & (df["method"] == "GRPO")]])
    return dedupe_runs(sel)


def shared_seeds(runs: pd.DataFrame, by: str = "label", what: str = "figure") -> pd.DataFrame:
    """Only the seeds every ``by`` group has, so curves in one panel differ by method, not by
    which seeds (at toy scale: which warm-up base models) each happened to get. Replicas are
    counted once, and runs that a ``by`` group would pool, or that the panel would compare,
    must not differ in settings the labels do not name (:class:`analysis.identity.MixedRuns`)."""
    runs = dedupe(runs)
    check_pooling(runs, what, by=by)
    seeds = runs.groupby(by)["seed"].agg(lambda s: set(s.unique()))
    common = set.intersection(*seeds) if len(seeds) else set()
    return runs[runs["seed"].isin(common)]


def palette_for(labels: Iterable[str]) -> dict[str, tuple]:
    """GRPO always grey; the other labels in seaborn's colorblind palette, in order."""
    labels = [x for x in dict.fromkeys(labels) if x != "GRPO"]
    colors = sns.color_palette("colorblind", max(len(labels), 1))
    return {"GRPO": (0.35, 0.35, 0.35), **dict(zip(labels, colors, strict=False))}


def band_plot(
    ax: plt.Axes,
    df: pd.DataFrame,
    metric: str,
    hue: str = "label",
    order: Sequence[str] | None = None,
    window: int = 1,
    palette: dict | None = None,
    **where: object,
) -> pd.DataFrame:
    """Mean line and 95 % CI band across seeds of ``metric`` vs step, one per ``hue`` value;
    returns the aggregated curve (``hue, step, mean, lo, hi, n``)."""
    rows = smooth(select(df, metric, **where), window)
    if rows.empty:
        ax.text(0.5, 0.5, f"no {metric} logged", ha="center", va="center", transform=ax.transAxes)
        return pd.DataFrame()
    curve = curve_ci(rows, by=hue)
    keys = (
        list(order) if order else sorted(curve[hue].unique(), key=lambda k: (k != "GRPO", str(k)))
    )
    palette = palette or palette_for(keys)
    shade = 0.2 if len(keys) <= 3 else 0.08  # many overlapping bands: keep the lines readable
    for key in keys:
        c = curve[curve[hue] == key]
        if c.empty:
            continue
        n = rows[rows[hue] == key]["run_id"].nunique()
        color = palette.get(key)
        ax.plot(c["step"], c["mean"], color=color, lw=1.6, label=f"{key} (n={n})")
        ax.fill_between(c["step"], c["lo"], c["hi"], color=color, alpha=shade, lw=0)
    ax.set_xlabel("step (rollout batch)")
    ax.set_ylabel(metric + (f" ({window}-step moving avg)" if window > 1 else ""))
    return curve


def stop_steps(df: pd.DataFrame) -> pd.Series:
    """Each run's trigger step (``sfpo/stop_step`` at its last step: the 1-based iteration whose
    entropy fired, docs/algorithm.md; NaN = never)."""
    rows = select(df, "sfpo/stop_step").sort_values("step").groupby("run_id").tail(1)
    return rows.set_index("run_id")["value"]


def mark_stops(ax: plt.Axes, df: pd.DataFrame, color: str = "k") -> None:
    """Dashed vertical line at every run's stop step (thin), labelled once with the count."""
    steps = stop_steps(df).dropna()
    for i, s in enumerate(sorted(steps)):
        ax.axvline(
            s,
            ls="--",
            lw=0.8,
            color=color,
            alpha=0.6,
            label="z-score stop step" if i == 0 else None,
        )


def trigger_note(runs: pd.DataFrame) -> str:
    """One line per SFPO / GRPO-μ label: whether the entropy trigger was on (and its window),
    and per seed the step at which it fired (``never`` = not within the run). GRPO is left
    out: the trigger is not read at alpha = 0."""
    stops = stop_steps(runs)
    one = runs.drop_duplicates("run_id").sort_values(["label", "seed", "run_id"])
    lines = ["entropy trigger per run (s<seed>@<step it fired>):"]
    for label, g in one[one["method"] != "GRPO"].groupby("label", sort=True):
        if not g["ec"].any():
            lines.append(f"{label}: trigger off")
            continue
        window = json.loads(g["config"].iloc[0]).get("sfpo.entropy_control.window", "?")
        fired = ", ".join(
            f"s{r.seed}@{'never' if pd.isna(stops.get(r.run_id)) else int(stops[r.run_id])}"
            for r in g.itertuples()
        )
        lines.append(f"{label}: trigger on (window {window}), fired at step: {fired}")
    return "\n".join(lines) if len(lines) > 1 else ""


def add_note(fig: plt.Figure, text: str, y: float = -0.02) -> None:
    """A small-print note under the figure (kept by ``bbox_inches="tight"`` when saving)."""
    if text:
        fig.text(0.01, y, text, ha="left", va="top", fontsize=7, family="monospace")


def save(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    """``<name>.png`` and ``<name>.pdf`` (PDF without a creation date, so reruns are stable)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], bbox_inches="tight", metadata={"Software": None})
    fig.savefig(
        paths[1],
        bbox_inches="tight",
        metadata={"CreationDate": None, "Producer": None, "Creator": None},
    )
    plt.close(fig)
    return paths
