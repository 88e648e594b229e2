"""Fig. 4 (efficiency to reach GRPO's best accuracy) and Fig. 8 (memory), from run data."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis import paper
from analysis.efficiency import (
    PASSES,
    paired_ci,
    per_seed_costs,
    seed_tables,
    target_of,
    with_update_passes,
)
from analysis.identity import check_pooling, dedupe
from analysis.plotting import CI_NOTE, palette_for, runs_for, shared_seeds, style
from analysis.runs import MissingRuns
from analysis.stats import curve_ci, mean_ci, select
from analysis.tables import one_variant

_COSTS = {
    "train/rollouts": "rollouts",
    PASSES: "update passes",
    "train/wall_clock_s": "wall-clock (s)",
}
ARMS = ("SFPO", "GRPO-μ")  # each compared with GRPO, paired by seed


def fig4_arms(df: pd.DataFrame) -> dict[str, dict[str, pd.DataFrame]]:
    """``{model: {method: runs}}`` of paper_main (GRPO and at least one of SFPO, GRPO-μ),
    with ``train/update_passes`` added; replicas once, one configuration per method. Each
    ratio pairs GRPO with one arm over the seeds both ran (its own target); with complete seed
    sets every arm shares one seed set and one target."""
    runs = dedupe(runs_for(df, ["paper_main"]))
    check_pooling(runs, "Fig. 4")
    runs = with_update_passes(runs)
    out = {}
    for model, m in runs.groupby("model", sort=True):
        arms = {}
        for method in ("GRPO", *ARMS):
            sel = m[m["method"] == method]
            if len(sel):
                one_variant(sel, "paper_main", model)
                arms[method] = sel
        if "GRPO" in arms and len(arms) > 1:
            out[model] = arms
    if not out:
        raise MissingRuns("paper_main needs GRPO and SFPO (or GRPO-μ) runs with val/avg")
    return out


def efficiency_frame(df: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per model, arm (SFPO, GRPO-μ) and cost: the GRPO/arm ratio with its paired bootstrap
    CI over the seeds both ran (see analysis.efficiency), ``not_reached`` and the target."""
    out = []
    for model, arms in fig4_arms(df).items():
        for arm in (a for a in ARMS if a in arms):
            for cost, name in _COSTS.items():
                g, o = seed_tables(arms["GRPO"], cost=cost), seed_tables(arms[arm], cost=cost)
                if set(g) & set(o):
                    ci = paired_ci(g, o, n_boot, seed)
                    label = arms[arm]["label"].iloc[0]
                    out.append({"model": model, "method": arm, "label": label, "cost": name, **ci})
    if not out:
        raise MissingRuns("paper_main: no seed has both a GRPO and an SFPO/GRPO-μ run with val/avg")
    return pd.DataFrame(out)


def per_seed_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Per model, method, seed and cost: the cost at which that run's own curve first reaches
    the target ``A*`` (best of GRPO's seed-mean val/avg curve over all its seeds); inf if never."""
    out = []
    for model, arms in fig4_arms(df).items():
        target = target_of(list(seed_tables(arms["GRPO"]).values()))
        for cost, name in _COSTS.items():
            tables = {m: seed_tables(r, cost=cost) for m, r in arms.items()}
            costs = per_seed_costs(tables, target)
            labels = {m: r["label"].iloc[0] for m, r in arms.items()}
            out.append(
                costs.assign(
                    model=model, label=costs["method"].map(labels), cost=name, target=target
                )
            )
    cols = ["model", "method", "label", "seed", "cost", "cost_to_target", "target"]
    return pd.concat(out, ignore_index=True)[cols]


def _acc_vs_cost(ax: plt.Axes, runs: pd.DataFrame, cost: str) -> None:
    """val/avg (mean ± CI over seeds) against the seed-mean cost at each validation step."""
    pal = palette_for(sorted(runs["label"].unique(), key=lambda k: (k != "GRPO", k)))
    acc = curve_ci(select(runs, "val/avg"))
    x = select(runs, cost).groupby(["label", "step"])["value"].mean().rename("x").reset_index()
    acc = acc.merge(x, on=["label", "step"])
    for label, c in acc.groupby("label", sort=True):
        ax.plot(
            c["x"],
            c["mean"],
            marker="o",
            ms=3,
            color=pal[label],
            label=f"{label} (n={c['n'].max()})",
        )
        ax.fill_between(c["x"], c["lo"], c["hi"], color=pal[label], alpha=0.2, lw=0)
    grpo = acc[acc["label"] == "GRPO"]
    if len(grpo):
        ax.axhline(grpo["mean"].max(), ls="--", color="k", lw=0.8, label="GRPO's best (target)")
    ax.set_xlabel(_COSTS[cost])
    ax.set_ylabel("val/avg accuracy (%)")


def _ratio_bars(ax: plt.Axes, eff: pd.DataFrame, pal: dict) -> None:
    """Grouped bars: x = (model, cost), one bar per arm; CI whiskers, ratio and missed share."""
    groups = list(dict.fromkeys(zip(eff["model"], eff["cost"], strict=True)))
    arms = [a for a in ARMS if a in set(eff["method"])]
    width = 0.8 / len(arms)
    y = eff["ratio"].to_numpy(dtype=float)
    finite = np.concatenate([y, eff["lo"], eff["hi"]])
    top = max(1.5, float(np.nanmax(np.where(np.isfinite(finite), finite, np.nan))) * 1.15)
    starred = False
    for r in eff.itertuples():
        x = groups.index((r.model, r.cost)) - 0.4 + width * (arms.index(r.method) + 0.5)
        # an infinite bound (X at the target at step 0 in some resample) is drawn to the top
        err = [[max(r.ratio - r.lo, 0.0)], [max(min(r.hi, top) - r.ratio, 0.0)]]
        (bar,) = ax.bar(x, r.ratio, width, yerr=err, capsize=4, color=pal[r.label], alpha=0.85,
                        label=r.label if groups.index((r.model, r.cost)) == 0 else None)  # fmt: skip
        bar.set_gid(f"{r.method}|{r.cost}")
        above = max(r.ratio, min(r.hi, top)) if math.isfinite(r.ratio) else top
        ax.text(x, above + 0.02 * top, f"{r.ratio:.2f}x\n[{r.lo:.2f}, {r.hi:.2f}]\nmissed {r.not_reached:.0%}", ha="center", va="bottom", fontsize=6.5)  # fmt: skip
        ref = paper.FIG4.get(r.model)
        if ref and r.method == "SFPO" and r.cost in ("rollouts", "wall-clock (s)"):
            ax.plot(x, ref[0 if r.cost == "rollouts" else 1], "k*", ms=10,
                    label=None if starred else "paper (SFPO)")  # fmt: skip
            starred = True
    ax.axhline(1, color="k", lw=0.8)
    ax.set_ylim(0, top * 1.3)
    ax.set_xticks(range(len(groups)), [f"{m}\n{c}" for m, c in groups], fontsize=8)
    ax.set_ylabel("GRPO cost / method's cost to reach target")
    ax.set_title("ratio (>1: cheaper than GRPO); 0 = never reached it")
    ax.legend(fontsize=7, loc="upper right")


def fig4(df: pd.DataFrame) -> plt.Figure:
    """Fig. 4: rollouts, update passes and wall-clock to reach GRPO's best validation accuracy,
    as the ratios GRPO / SFPO and GRPO / GRPO-μ with a paired bootstrap 95 % CI over seeds
    (see analysis.efficiency); the curves show the seeds every method ran."""
    style()
    eff = efficiency_frame(df)
    model = eff["model"].iloc[0]
    runs = shared_seeds(pd.concat(fig4_arms(df)[model].values()), what="Fig. 4")
    pal = palette_for(sorted(runs["label"].unique(), key=lambda k: (k != "GRPO", k)))
    fig, axes = plt.subplots(1, 4, figsize=(21, 3.9))
    for ax, cost in zip(axes[:3], _COSTS, strict=True):
        _acc_vs_cost(ax, runs, cost)
        ax.set_title(f"{model}: accuracy vs {_COSTS[cost]}")
    axes[0].legend(fontsize=7)
    _ratio_bars(axes[3], eff, pal)
    paper_txt = "; ".join(f"{m}: {r:.2f}x / {w:.2f}x" for m, (r, w) in paper.FIG4.items())
    mu = (eff["method"] == "GRPO-μ").any()
    fig.suptitle(
        f"Fig. 4 — cost to reach GRPO's best accuracy [{CI_NOTE}; ratio CI: paired bootstrap "
        "over seeds]\n"
        + (
            "GRPO-μ: α = 1 with slow correction (K + 1 update passes per batch, no reposition). "
            if mu
            else ""
        )  # fmt: skip
        + f"Paper (SFPO, rollouts / wall-clock, other models and 8×H100): {paper_txt}",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def fig8(df: pd.DataFrame) -> plt.Figure:
    """Fig. 8: memory during one training step, SFPO vs GRPO, per stage.

    From ``perf/mem/<stage>`` (GiB; :mod:`sfpo_lab.run.perf`: CUDA peak allocated, reset per
    stage; CPU resident set sampled during the stage): one bar per stage (rollout, logprobs,
    fast_1..fast_K, reposition, slow; GRPO's update) and method, the mean over runs of each
    run's largest value over its iterations. Runs that logged no ``perf/mem/*`` get the
    older figure: one peak per run (``perf/peak_mem_gb``) and SFPO's θ0 snapshot size.
    """
    style()
    runs = runs_for(df, ["memory_profile"])
    if stage_names(runs):
        return _fig8_stages(runs)
    return _fig8_process_peak(runs)


def _fig8_process_peak(runs: pd.DataFrame) -> plt.Figure:
    """Fallback Fig. 8 for runs without per-stage memory: process peak per method."""
    peak = (
        select(runs, "perf/peak_mem_gb").groupby(["label", "run_id"])["value"].max().reset_index()
    )
    if peak.empty:
        raise MissingRuns("memory_profile runs logged no perf/peak_mem_gb")
    snap = select(runs, "sfpo/snapshot_bytes").groupby("label")["value"].max()
    pal = palette_for(peak["label"].unique())
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    labels = sorted(peak["label"].unique(), key=lambda k: (k != "GRPO", k))
    for i, label in enumerate(labels):
        vals = peak[peak["label"] == label]["value"].tolist()
        m, lo, hi = mean_ci(vals)
        ax.bar(i, m, yerr=[[m - lo], [hi - m]], capsize=5, color=pal[label], alpha=0.85)
        ax.plot([i] * len(vals), vals, "k.", ms=5)
        extra = snap.get(label, math.nan)
        txt = f"{m * 1024:.0f} MiB (n={len(vals)})"
        if extra > 0:
            txt += f"\nθ0 snapshot {extra / 2**20:.2f} MiB"
        ax.text(i, m * 1.02, txt, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("peak memory (GiB)")
    ax.set_ylim(0, peak["value"].max() * 1.3)
    cpu = (runs["accelerator"] == "cpu").all()
    note = (
        "NOT a per-stage GPU measurement: on CPU the process peak RSS is logged (Python + torch runtime\n"
        "dominate a ~1M-parameter model); per-stage memory is not logged by the training code."
        if cpu
        else "Peak allocated CUDA memory per run; per-stage memory is not logged by the training code."
    )
    fig.suptitle(
        f"Fig. 8 — memory during training, SFPO vs GRPO [{CI_NOTE}, dots = runs]\n{note}",
        fontsize=8.5,
    )
    fig.tight_layout()
    return fig


MEM_PREFIX = "perf/mem/"
_STAGE_RANK = {"rollout": 0, "logprobs": 1, "reposition": 3, "slow": 4, "update": 5}


def _stage_key(stage: str) -> tuple[int, int, str]:
    """Step order: rollout, logprobs, fast_1..fast_K, reposition, slow, update, others."""
    if stage.startswith("fast_") and stage[5:].isdigit():
        return (2, int(stage[5:]), stage)
    return (_STAGE_RANK.get(stage, 6), 0, stage)


def stage_names(runs: pd.DataFrame) -> list[str]:
    """Stages with a ``perf/mem/<stage>`` value in ``runs``, in step order."""
    metrics = runs.loc[runs["value"].notna(), "metric"].unique()
    names = [m.removeprefix(MEM_PREFIX) for m in metrics if str(m).startswith(MEM_PREFIX)]
    return sorted(names, key=_stage_key)


def stage_memory_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (label, stage): mean, lo, hi over runs of each run's max over iterations (GiB), and
    ``n`` runs."""
    out = []
    for stage in stage_names(runs):
        per_run = select(runs, MEM_PREFIX + stage).dropna(subset=["value"])
        per_run = per_run.groupby(["label", "run_id"])["value"].max().reset_index()
        for label, g in per_run.groupby("label"):
            m, lo, hi = mean_ci(g["value"].tolist())
            out.append({"label": label, "stage": stage, "mean": m, "lo": lo, "hi": hi,
                        "n": len(g)})  # fmt: skip
    return pd.DataFrame(out)


def _fig8_stages(runs: pd.DataFrame) -> plt.Figure:
    """Grouped bars: x = stage, one bar per method; each bar's gid is ``<label>|<stage>``."""
    frame = stage_memory_frame(runs)
    stages = stage_names(runs)
    labels = sorted(frame["label"].unique(), key=lambda k: (k != "GRPO", k))
    pal = palette_for(labels)
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(max(7.5, 1.1 * len(stages)), 4.2))
    for j, label in enumerate(labels):
        sub = frame[frame["label"] == label].set_index("stage")
        legend = label
        for i, stage in enumerate(stages):
            if stage not in sub.index:
                continue
            r = sub.loc[stage]
            x = i - 0.4 + width * (j + 0.5)
            err = [[r["mean"] - r["lo"]], [r["hi"] - r["mean"]]]
            (bar,) = ax.bar(x, r["mean"], width, yerr=err, capsize=3, color=pal[label],
                            alpha=0.85, label=legend)  # fmt: skip
            legend = None  # one legend entry per method
            bar.set_gid(f"{label}|{stage}")
            ax.text(x, r["hi"] * 1.01, f"{r['mean']:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(stages)), stages)
    ax.set_ylabel("peak memory in the stage (GiB)")
    ax.set_ylim(0, frame["hi"].max() * 1.2)
    ax.legend(loc="upper right")
    cpu = (runs["accelerator"] == "cpu").all()
    note = (
        "CPU: resident set size sampled during each stage (the whole process: Python + torch "
        "runtime included)"
        if cpu
        else "CUDA: peak allocated memory, reset at the start of each stage"
    )
    n = int(frame["n"].min())
    fig.suptitle(
        f"Fig. 8 — memory during one training step, per stage, SFPO vs GRPO "
        f"[{CI_NOTE}, n>={n} runs; per run: max over iterations]\n{note}",
        fontsize=8.5,
    )
    fig.tight_layout()
    return fig
