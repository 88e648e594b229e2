"""Standalone evaluations (``python -m sfpo_lab.eval``) found under the run roots, shown as what
they are: one row per (evaluation, benchmark), labelled with the settings it ran with.

An evaluation never stands in for a training result: the tables and figures read each run's own
validation (``val/<benchmark>/acc`` in ``metrics.csv``). An evaluation is recognised by its
``summary.json`` holding ``benchmarks`` (a training run's holds ``return_value``/``summary``);
its settings come from the ``evaluated`` block (:mod:`sfpo_lab.eval.record`), or from
``settings`` for evaluations written before that block existed.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.runs import MissingRuns

EVAL_COLUMNS = ["eval_dir", "run", "ckpt", "iteration", "benchmark", "problems", "limit", "n",
                "temperature", "top_p", "max_new_tokens", "parser", "acc", "ci_lo", "ci_hi"]  # fmt: skip


def _settings(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluation's settings, flat: from ``evaluated`` (else the older ``settings``)."""
    ev = summary.get("evaluated")
    if isinstance(ev, Mapping):
        sampling, parser = ev.get("sampling") or {}, ev.get("parser") or {}
        return {"ckpt": ev.get("ckpt"), "iteration": ev.get("iteration"), "limit": ev.get("limit"),
                "n": ev.get("n"), **{k: sampling.get(k) for k in ("temperature", "top_p", "max_new_tokens")},
                "parser": parser.get("answer_parsing"), "problems": ev.get("benchmarks") or {}}  # fmt: skip
    s = summary.get("settings") or {}
    return {"ckpt": s.get("ckpt"), "iteration": s.get("iteration"), "limit": s.get("limit"),
            "n": s.get("n"), **{k: s.get(k) for k in ("temperature", "top_p", "max_new_tokens")},
            "parser": s.get("answer_parsing"), "problems": {}}  # fmt: skip


def _owning_run(path: Path, root: Path) -> str:
    """The training run dir (holding ``metrics.csv``) an evaluation sits in, relative to the
    root's parent; empty when it is not inside one."""
    for parent in [path, *path.parents]:
        if (parent / "metrics.csv").is_file():
            return parent.relative_to(root.parent).as_posix()
        if parent == root:
            break
    return ""


def eval_rows(eval_dir: Path, root: Path) -> list[dict[str, Any]]:
    """One row per benchmark of the evaluation whose ``summary.json`` is in ``eval_dir``."""
    summary = json.loads((eval_dir / "summary.json").read_text())
    benchmarks = summary.get("benchmarks")
    if not isinstance(benchmarks, Mapping):
        return []  # a training run's summary.json
    s = _settings(summary)
    problems = s.pop("problems")
    label = eval_dir.relative_to(root.parent).as_posix()
    return [
        {
            "eval_dir": label,
            "run": _owning_run(eval_dir, root),
            **s,
            "benchmark": name,
            "problems": problems.get(name, m.get("n_problems")),
            "acc": m.get("acc"),
            "ci_lo": m.get("ci_lo"),
            "ci_hi": m.get("ci_hi"),
        }  # fmt: skip
        for name, m in benchmarks.items()
    ]


def find_evals(roots: Iterable[Path]) -> pd.DataFrame:
    """Every standalone evaluation under ``roots`` (empty, with columns, if none)."""
    rows: list[dict[str, Any]] = []
    for root in roots:
        root = Path(root).resolve()
        for path in sorted(root.rglob("summary.json")):
            rows += eval_rows(path.parent, root)
    return pd.DataFrame(rows, columns=EVAL_COLUMNS)


def _cell(v: Any) -> str:
    return "–" if v is None or v == "" or (isinstance(v, float) and math.isnan(v)) else str(v)


def evals_table(evals: pd.DataFrame, fmt: str = "md") -> str:
    """``md`` | ``csv`` text listing the evaluations; :class:`MissingRuns` when there are none."""
    if evals.empty:
        raise MissingRuns("no standalone evaluation (python -m sfpo_lab.eval) under the runs")
    if fmt == "csv":
        buf = io.StringIO()
        evals.to_csv(buf, index=False, float_format="%.4f")
        return buf.getvalue()
    note = ("**Standalone evaluations** (python -m sfpo_lab.eval), each with its own checkpoint, "
            "problems, n and sampling; not training results (the tables read each run's own "
            "validation). acc: mean accuracy over the problems and samples (%), 95 % CI.")  # fmt: skip
    cols = ["eval_dir", "run", "ckpt", "iteration", "benchmark", "problems", "limit", "n",
            "temperature", "top_p", "max_new_tokens", "parser", "acc"]  # fmt: skip
    lines = [note, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in evals.itertuples(index=False):
        cells = {c: getattr(r, c) for c in cols}
        cells["ckpt"] = Path(str(r.ckpt)).name if r.ckpt else "–"
        cells["acc"] = f"{r.acc:.2f} [{r.ci_lo:.2f}, {r.ci_hi:.2f}]"
        lines.append("| " + " | ".join(_cell(v) for v in cells.values()) + " |")
    return "\n".join(lines) + "\n"
