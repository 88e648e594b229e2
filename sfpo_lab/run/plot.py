"""A picture of one run or several: held-out accuracy, reward, entropy (trigger marked) and α.

    python -m sfpo_lab.run.plot outputs/train/runs/RUN                 # -> RUN/curves.png
    python -m sfpo_lab.run.plot outputs/train/multiruns/SWEEP          # every job of the sweep
    python -m sfpo_lab.run.plot RUN_A RUN_B                            # -> beside them: their
                                                                   #    common dir/curves.png
    python -m sfpo_lab.run.plot RUN_A RUN_B --out compare.png          # overlay, named

Reads each run's ``metrics.csv`` (x = iteration, i.e. rollout batches) and labels runs by their
command-line overrides (``.hydra/overrides.yaml``), keeping only those that differ between the
runs drawn. A sweep dir (no ``metrics.csv`` of its own) expands to its job subdirs. Drawn with
Matplotlib's Agg canvas (no display, no global pyplot state): cheap enough to run at every
validation (:class:`sfpo_lab.run.curves.CurvesCallback`).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

METRICS_FILE = "metrics.csv"
CURVES_FILE = "curves.png"
REWARD, ENTROPY, ALPHA, TRIGGER = "train/reward", "train/entropy", "sfpo/alpha", "sfpo/stop_step"
_VAL_ACC = re.compile(r"^val/(.+)/acc$")
_STYLES = ("-", "--", ":", "-.")


@dataclass
class Run:
    """One run's curves: ``series[key] = (iterations, values)``, finite values only."""

    path: Path
    series: dict[str, tuple[list[float], list[float]]]
    # the trigger step: the (1-based) iteration whose entropy fired the trigger, i.e. the first
    # sfpo/stop_step logged (docs/algorithm.md); None if it never fired
    trigger: float | None
    overrides: list[str] = field(default_factory=list)
    label: str = ""

    @property
    def benchmarks(self) -> list[str]:
        return sorted(m.group(1) for k in self.series if (m := _VAL_ACC.match(k)))


def read_metrics(path: Path) -> dict[str, tuple[list[float], list[float]]]:
    """Every column of ``metrics.csv`` as (step, value) pairs, skipping blanks and NaNs."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            step = _number(row.get("step"))
            if step is None:
                continue
            for key, text in row.items():
                value = _number(text)
                if key in (None, "step") or value is None:
                    continue
                xs, ys = series.setdefault(key, ([], []))
                xs.append(step)
                ys.append(value)
    return series


def _number(text: str | None) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def load_run(run_dir: str | Path) -> Run:
    """A run dir's curves and overrides (label: the dir name until :func:`label_runs`)."""
    path = Path(run_dir)
    metrics = path / METRICS_FILE
    if not metrics.is_file():
        raise FileNotFoundError(f"{path}: no {METRICS_FILE} (not a run dir)")
    series = read_metrics(metrics)
    triggers = series.get(TRIGGER, ([], []))[1]
    return Run(path, series, triggers[0] if triggers else None, _overrides(path), path.name)


def _overrides(path: Path) -> list[str]:
    file = path / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return []
    items = yaml.safe_load(file.read_text()) or []
    return [o for o in items if not o.lstrip("+~").startswith(("hydra.", "ckpt_path"))]


def expand(paths: list[str | Path]) -> list[Path]:
    """Run dirs: each path that holds ``metrics.csv``, or a sweep dir's job subdirs that do.

    Raises:
        FileNotFoundError: a path with no run in it (named).
    """
    runs: list[Path] = []
    for p in map(Path, paths):
        if (p / METRICS_FILE).is_file():
            runs.append(p)
            continue
        jobs = [d for d in p.iterdir() if (d / METRICS_FILE).is_file()] if p.is_dir() else []
        if not jobs:
            raise FileNotFoundError(f"{p}: no {METRICS_FILE} in it or in its job subdirs")
        runs += sorted(jobs, key=_job_order)
    return runs


def _job_order(job: Path) -> tuple[int, str]:
    """Hydra's job dirs 0, 1, ..., 10 in number order; other names after them."""
    name = job.name
    return (int(name), "") if name.isdigit() else (1 << 62, name)


def label_runs(runs: list[Run]) -> None:
    """Label each run by the overrides that not every run shares (the dir name if none)."""
    common = set.intersection(*(set(r.overrides) for r in runs)) if len(runs) > 1 else set()
    for run in runs:
        own = [o for o in run.overrides if o not in common]
        run.label = " ".join(own) if own else run.path.name
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
    for run in runs:
        if seen[run.label] > 1:
            run.label = f"{run.path.name}: {run.label}"


def draw(runs: list[Run]) -> Figure:
    """Four panels: held-out accuracy per benchmark, reward, entropy (trigger marked), α.

    Each curve's ``gid`` is ``"<metric key>|<run label>"``, a trigger marker's
    ``"trigger|<run label>"`` (tests and scripts find them by it).
    """
    fig = Figure(figsize=(12, 7.5), layout="constrained")
    acc, reward, entropy, alpha = fig.subplots(2, 2, sharex=True).flat
    single = len(runs) == 1
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for run, color in zip(runs, colors, strict=True):
        for i, bench in enumerate(run.benchmarks):
            _line(
                acc,
                run,
                f"val/{bench}/acc",
                f"C{i % 10}" if single else color,
                label=bench if single else _bench_label(run, bench),
                style="-" if single else _STYLES[i % len(_STYLES)],
                marker="o",
            )
        _line(reward, run, REWARD, color, label="reward" if single else _short(run.label))
        _line(entropy, run, ENTROPY, color, label="entropy" if single else _short(run.label))
        _line(alpha, run, ALPHA, color, label="α" if single else _short(run.label))
        if run.trigger is not None:
            entropy.axvline(
                run.trigger,
                color=color,
                ls="--",
                lw=1.2,
                label=f"stop_step={run.trigger:g}" + ("" if single else f" ({_short(run.label)})"),
                gid=f"trigger|{run.label}",
            )
    acc.set_title("held-out accuracy (%)")
    reward.set_title("reward (training rollouts)")
    entropy.set_title("entropy of rollouts (dashed: trigger step, α = 0 after it)")
    alpha.set_title("α (SFPO interpolation)")
    alpha.set_ylim(-0.05, 1.05)
    for ax in (acc, reward, entropy, alpha):
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        elif ax in (acc, entropy) or not single:  # one run: its name is the title already
            ax.legend(fontsize=8, loc="best")
    for ax in (entropy, alpha):
        ax.set_xlabel("iteration (rollout batches)")
    parents = {r.path.parent for r in runs}
    title = f"{len(runs)} runs" + (f" in {parents.pop()}" if len(parents) == 1 else "")
    if single:
        title = "\n".join([str(runs[0].path), *textwrap.wrap(" ".join(runs[0].overrides), 160)])
    fig.suptitle(title, fontsize=9)
    return fig


def _bench_label(run: Run, bench: str) -> str:
    return _short(run.label if len(run.benchmarks) == 1 else f"{run.label} · {bench}")


def _short(label: str) -> str:
    return textwrap.shorten(label, 70, placeholder=" …")


def _line(ax, run: Run, key: str, color: str, *, label: str, style: str = "-", marker=None):
    if key not in run.series:
        return
    xs, ys = run.series[key]
    ax.plot(
        xs,
        ys,
        ls=style,
        color=color,
        lw=1.4,
        label=label,
        gid=f"{key}|{run.label}",
        marker=marker if len(xs) <= 40 else None,
        ms=3,
    )


def save(fig: Figure, out: str | Path) -> Path:
    """Write ``fig`` as PNG through a temporary file (a reader never sees half a picture)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    FigureCanvasAgg(fig)  # Agg, whatever the process-wide backend
    fig.savefig(tmp, format="png", dpi=100)
    tmp.replace(out)
    return out


def plot_runs(paths: list[str | Path], out: str | Path) -> Path:
    """Expand ``paths`` to run dirs, draw them in one figure and write it to ``out``."""
    runs = [load_run(p) for p in expand(paths)]
    label_runs(runs)
    return save(draw(runs), out)


def default_out(runs: list[str | Path]) -> Path:
    """Where a plot goes without ``--out``: beside the runs it draws, not in the working
    directory: ``<dir>/curves.png`` for one dir, else ``curves.png`` in the deepest directory
    that holds all of them (the parent of the first when they share only the filesystem root)."""
    paths = [Path(r).expanduser().resolve() for r in runs]
    if len(paths) == 1:
        return paths[0] / CURVES_FILE
    common = Path(os.path.commonpath(paths))
    return (paths[0].parent if common == Path(common.anchor) else common) / CURVES_FILE


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m sfpo_lab.run.plot", description=__doc__.split("\n")[0]
    )
    parser.add_argument("runs", nargs="+", help="run dirs or multirun (sweep) dirs")
    parser.add_argument(
        "--out",
        help="PNG to write (default: beside the runs: <dir>/curves.png for one dir, else "
        "curves.png in the runs' deepest common directory)",
    )
    args = parser.parse_args(argv)
    out = args.out or default_out(args.runs)
    try:
        written = plot_runs(args.runs, out)
    except FileNotFoundError as err:
        parser.error(str(err))
    print(f"wrote {written}")
    return written


if __name__ == "__main__":
    main()
