"""Regenerate every table and figure of the paper from runs.

    python analysis/make_figures.py                      # from the committed runs (DEFAULT_RUNS)
    python analysis/make_figures.py --runs outputs/train  # any Hydra run/multirun dirs (repeatable)
                                                        # -> a fresh outputs/figures/<time>/
    python analysis/make_figures.py --wandb-project ENTITY/PROJECT --wandb-group toy/paper_main
    python analysis/make_figures.py --only fig5 --out /tmp/figs
    python analysis/make_figures.py --runs outputs/repro --collect paper_figures/repro_runs

Outputs go to ``paper_figures/`` only when drawn from the committed runs (no ``--runs``, or
``--collect`` into one of them); other runs without ``--out`` go to a fresh
``outputs/figures/<time>/``, so one folder never mixes two run sets. A table or figure whose
runs are missing prints one line saying what is missing, and its files from an earlier call in
that folder are removed; the others are still made. One that would pool or compare runs with different settings (analysis.identity) is
refused with a line naming the differing settings, and the command exits 2. Tables:
``<name>.md``, ``.tex``, ``.csv``; figures: ``<name>.png`` and ``.pdf`` (Fig. 4 also
``fig4_efficiency.csv`` and ``fig4_per_seed.csv``); ``summary``: ``summary.json``
(analysis.summary: the paired SFPO − GRPO and SFPO − GRPO-μ differences and Fig. 4's ratios);
``evals``: ``evals.md``, ``evals.csv``, the standalone evaluations (``python -m sfpo_lab.eval``)
found under ``--runs``, each labelled with its settings (never in a table's place: the tables
read each run's own validation).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from analysis import bar_figures, diagram, figures, summary, tables  # noqa: E402
from analysis.evals import evals_table, find_evals  # noqa: E402
from analysis.identity import MixedRuns  # noqa: E402
from analysis.plotting import save  # noqa: E402
from analysis.runs import (  # noqa: E402
    MissingRuns,
    discover,
    discover_wandb,
    find_run_dirs,
    incomplete_runs,
    name_lr,
)

REPO = Path(__file__).resolve().parents[1]
# the committed runs: the CPU reproduction (analysis/reproduce.py) and, for Table 2 only, the
# earlier one-digit toy task's skywork twin (docs/reproduction.md)
DEFAULT_RUNS = [REPO / "paper_figures" / "repro_runs", REPO / "paper_figures" / "toy_runs"]
DEFAULT_OUT = REPO / "paper_figures"
CONFIRM_RUNS = REPO / "paper_figures" / "confirm_runs"  # analysis/confirm.py's (issue 27)
TABLES: dict[str, Callable[..., str]] = {"table1": tables.table1, "table2": tables.table2}
FIGURES: dict[str, Callable] = {
    "fig1": diagram.fig1,
    "fig2": figures.fig2,
    "fig3": figures.fig3,
    "fig4": bar_figures.fig4,
    "fig5": figures.fig5,
    "fig6": figures.fig6,
    "fig7": figures.fig7,
    "fig8": bar_figures.fig8,
}
OUTPUTS = [*TABLES, *FIGURES, "summary", "evals"]
# the compact run data a figure needs: no checkpoints, no W&B files
_KEEP = (".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.csv", "summary.json")
_KEEP_GLOBS = ("*.summary.json", "*.records.jsonl")


def collect(roots: list[Path], dest: Path) -> int:
    """Copy config + metrics CSV + eval outputs of every run under ``roots`` into ``dest``
    (same relative layout, ``dest/<root name>/<run>``); returns the number of runs copied."""
    n = 0
    for root in roots:
        for run in find_run_dirs(root):
            target = dest / root.name / run.relative_to(root)
            files = [run / k for k in _KEEP] + [p for g in _KEEP_GLOBS for p in run.glob(g)]
            for f in files:
                if f.is_file():
                    (target / f.relative_to(run)).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, target / f.relative_to(run))
            n += 1
    return n


def output_files(name: str) -> list[str]:
    """The file names one output writes (what a skipped output leaves stale)."""
    if name in TABLES or name == "evals":
        return [f"{name}.{fmt}" for fmt in ("md", "tex", "csv")]
    if name == "summary":
        return ["summary.json"]
    extra = ["fig4_efficiency.csv", "fig4_per_seed.csv"] if name == "fig4" else []
    return [f"{name}.png", f"{name}.pdf", *extra]


def remove_stale(name: str, out: Path) -> list[str]:
    """Delete the files ``name`` wrote into ``out`` earlier (from other runs); their names."""
    gone = [f for f in output_files(name) if (out / f).is_file()]
    for f in gone:
        (out / f).unlink()
    return gone


def fresh_out() -> Path:
    """A new ``outputs/figures/<date_time-microseconds>`` (relative to the working dir, as
    Hydra's run dirs)."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S") + f"-{time.time_ns() // 1000 % 1_000_000:06d}"
    return Path("outputs") / "figures" / stamp


def write_output(
    name: str,
    df: pd.DataFrame,
    out: Path,
    evals: pd.DataFrame | None = None,
    confirm: dict[str, Any] | None = None,
) -> list[Path]:
    """Make one output; raises :class:`MissingRuns` when its runs are absent (``evals``: the
    standalone evaluations, :func:`analysis.evals.find_evals`; ``confirm``: the registered
    confirmation's block for ``summary.json``, :func:`confirm_block`)."""
    if name == "evals":
        texts = {fmt: evals_table(find_evals([]) if evals is None else evals, fmt) for fmt in ("md", "csv")}  # fmt: skip
        for fmt, text in texts.items():
            (out / f"evals.{fmt}").write_text(text)
        return [out / f"evals.{fmt}" for fmt in texts]
    if name == "summary":  # the headline numbers, machine-readable
        text = summary.summary_json(df, {"confirm": confirm} if confirm else None)
        (path := out / "summary.json").write_text(text, encoding="utf-8")
        return [path]
    if name in TABLES:
        paths = []
        for fmt in ("md", "tex", "csv"):
            text = TABLES[name](df, fmt)
            (path := out / f"{name}.{fmt}").write_text(text)
            paths.append(path)
        return paths
    fig = FIGURES[name](df)
    paths = save(fig, out, name)
    if name == "fig4":  # the numbers behind the bars, and each seed's cost to the target
        eff = bar_figures.efficiency_frame(df)
        eff.to_csv(path := out / "fig4_efficiency.csv", index=False, float_format="%.4f")
        per_seed = bar_figures.per_seed_frame(df)
        per_seed.to_csv(seeds := out / "fig4_per_seed.csv", index=False, float_format="%.4f")
        paths += [path, seeds]
    return paths


def confirm_block(runs: Path = CONFIRM_RUNS) -> dict[str, Any] | None:
    """The pre-registered confirmation's statistics (analysis/confirm.py, its registered
    analysis unchanged) from its committed runs, as ``confirm.json`` holds them; None while
    no run is committed. Its refusals (a run not of the plan, a changed analysis) propagate."""
    from analysis import confirm
    from analysis.runs import discover, incomplete_runs

    df = discover([runs]) if runs.is_dir() else pd.DataFrame()
    if df.empty:
        return None
    result = confirm.analyse(df[~df["run_id"].isin(set(incomplete_runs(df)))], confirm.load_plan())
    return confirm._json(result["confirm"])  # NaN -> null, as in confirm.json


def load(args: argparse.Namespace) -> pd.DataFrame:
    frames = [discover(args.runs)] if args.runs else []
    if args.wandb_project:
        frames.append(discover_wandb(args.wandb_project, args.wandb_group, args.wandb_tag))
    frames = [f for f in frames if len(f)]
    # a label names the lr when the runs read together use more than one (analysis.runs)
    return name_lr(pd.concat(frames, ignore_index=True)) if frames else discover([])


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=Path, action="append", help=f"run root (repeatable; default {' + '.join(str(r.relative_to(REPO)) for r in DEFAULT_RUNS)})")  # fmt: skip
    p.add_argument("--wandb-project", help="entity/project to read runs from with wandb.Api()")
    p.add_argument("--wandb-group", help="only W&B runs of this group")
    p.add_argument("--wandb-tag", action="append", help="only W&B runs with any of these tags")
    p.add_argument("--out", type=Path, help="output dir (default: paper_figures for the committed runs, else a fresh outputs/figures/<time>)")  # fmt: skip
    p.add_argument("--only", action="append", help=f"outputs to make (repeatable/comma list): {', '.join(OUTPUTS)}")  # fmt: skip
    p.add_argument(
        "--collect", type=Path, help="copy compact run data from --runs here first, then use it"
    )
    args = p.parse_args(argv)
    if args.runs is None and not args.wandb_project:
        args.runs = list(DEFAULT_RUNS)
    only = [x for o in args.only or [] for x in o.split(",") if x]
    unknown = sorted(set(only) - set(OUTPUTS))
    if unknown:
        p.error(f"--only {','.join(unknown)}: unknown output (allowed: {', '.join(OUTPUTS)})")
    args.only = only or OUTPUTS
    return args


def _committed(runs: list[Path] | None) -> bool:
    return runs is not None and {r.resolve() for r in runs} <= {r.resolve() for r in DEFAULT_RUNS}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.collect:
        n = collect(args.runs, args.collect)
        print(f"collected {n} runs into {args.collect}")
        # collected into the committed run data: draw from all of it (the committed outputs)
        args.runs = list(DEFAULT_RUNS) if _committed([args.collect]) else [args.collect]
    if args.out is None:
        args.out = DEFAULT_OUT if _committed(args.runs) and not args.wandb_project else fresh_out()
        print(f"writing to {args.out}")
    df = load(args)
    partial = incomplete_runs(df)
    if partial:
        print(f"skipping {len(partial)} incomplete run(s): {', '.join(partial)}")
        df = df[~df["run_id"].isin(partial)]
    n_ids = df.drop_duplicates(["identity", "seed"]).shape[0] if len(df) else 0
    print(f"{df['run_id'].nunique()} runs ({n_ids} distinct config x seed), {len(df)} rows from {[str(r) for r in args.runs or []]}")  # fmt: skip
    evals = find_evals(args.runs or [])
    args.out.mkdir(parents=True, exist_ok=True)
    made, refused = 0, 0
    # the committed confirmation joins the committed summary (CI regenerates both)
    block = None
    if "summary" in args.only and _committed(args.runs):
        try:
            block = confirm_block()
        except ValueError as err:  # confirm.Refused / MixedRuns: the summary goes without it
            print(f"summary: confirm block REFUSED — {type(err).__name__}: {err}")
    for name in args.only:
        try:
            paths = write_output(name, df, args.out, evals, block)
        except (MissingRuns, MixedRuns) as err:
            refused += isinstance(err, MixedRuns)
            gone = remove_stale(name, args.out)
            print(f"{name}: {'REFUSED' if isinstance(err, MixedRuns) else 'skipped'} — {err}"
                  + (f" (removed {', '.join(gone)}, made from other runs)" if gone else ""))  # fmt: skip
            continue
        made += 1
        print(f"{name}: " + ", ".join(p.name for p in paths))
    return 2 if refused else 0 if made else 1


if __name__ == "__main__":
    sys.exit(main())
