"""Tables 1 and 2: final accuracy per (model, method), mean ± 95 % CI half-width over seeds.

A run's number for a benchmark is its standalone evaluation (``eval/<b>/acc``) when one was
written into the run dir, else its last logged ``val/<b>/acc``. "Base" is the same metric at
step 0 (before any update), one value per seed. The published number is printed beside ours
only when the run's model *and* training data are the paper's (``paper.TABLE1``/``TABLE2``).
"""

from __future__ import annotations

import io
import re

import pandas as pd

from analysis import paper
from analysis.identity import check_pooling, dedupe
from analysis.runs import MissingRuns
from analysis.stats import mean_ci

_METHODS = ["Base", "GRPO", "SFPO"]


def _run_scores(rows: pd.DataFrame, base: bool) -> pd.DataFrame:
    """One row per run: benchmark -> accuracy (final, or step 0 for ``base``)."""
    accs = rows[rows["metric"].str.match(r"^(val|eval)/[^/]+/acc$")].copy()
    accs["bench"] = accs["metric"].str.split("/").str[1]
    accs["kind"] = accs["metric"].str.split("/").str[0]
    if base:
        accs = accs[(accs["kind"] == "val") & (accs["step"] == 0)]
    else:  # eval beats val; within a kind the last step wins
        accs = accs.assign(prio=(accs["kind"] == "eval").astype(int)).sort_values(["prio", "step"])
    last = accs.groupby(["run_id", "bench"]).tail(1)
    wide = last.pivot_table(index="run_id", columns="bench", values="value", aggfunc="last")
    seeds = rows.groupby("run_id")["seed"].first()
    return wide.assign(seed=seeds.reindex(wide.index)).sort_values(["seed"], kind="stable")


def one_variant(runs: pd.DataFrame, experiment: str, model: str) -> None:
    """A table row pools seeds of one configuration, never several variants of a method."""
    labels = sorted(runs["label"].unique())
    if len(labels) > 1:
        raise MissingRuns(
            f"{experiment}/{model}: several variants {labels} would be pooled into one row; "
            "pass only one configuration per method (e.g. --runs of that experiment's sweep)"
        )


def _method_scores(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(final, start)`` scores of the same runs (one row per run, indexed by run_id)."""
    return _run_scores(rows, base=False), _run_scores(rows, base=True)


def table_frame(
    df: pd.DataFrame, experiment: str, published: dict, paper_data: str, benchmarks: list[str]
) -> pd.DataFrame:
    """Long table: model, method, seeds, bench, mean, lo, hi, paper (NaN when not comparable).

    Replicas count once; a method's row pools runs of one effective config (else
    :class:`analysis.identity.MixedRuns`). A run's gain is its final Avg minus its own step-0
    Avg (base and final from the same run); the Base row is step 0 of the GRPO runs (of the
    SFPO runs when there is no GRPO run), one per seed."""
    runs = df[df["experiment"] == experiment]
    if runs.empty:
        raise MissingRuns(f"no runs with extras.experiment={experiment}")
    runs = dedupe(runs)
    check_pooling(runs, f"{experiment} table", by="label", within="model")
    out = []
    for model, mrows in runs.groupby("model", sort=True):
        data = mrows["data"].iloc[0]
        per_method: dict[str, pd.DataFrame] = {}
        starts: dict[str, pd.DataFrame] = {}
        for method in ("GRPO", "SFPO"):
            sel = mrows[mrows["method"] == method]
            if len(sel):
                one_variant(sel, experiment, model)
                per_method[method], starts[method] = _method_scores(sel)
        per_method["Base"] = next(iter(starts.values()))
        for method in _METHODS:
            scores = per_method.get(method)
            if scores is None or scores.empty:
                continue
            benches = [b for b in scores.columns if b != "seed"]
            scores = scores.assign(avg=scores[benches].mean(axis=1))
            if method != "Base":  # paired within the run: its own step-0 accuracy
                start = starts[method]
                start_avg = start[[b for b in benches if b in start]].mean(axis=1)
                scores["gain"] = scores["avg"] - start_avg.reindex(scores.index)
            ref = published.get((model, method)) if data == paper_data else None
            order = [b for b in benchmarks if b in benches] + sorted(set(benches) - set(benchmarks))
            extra = ["avg", "gain"] if "gain" in scores else ["avg"]
            for i, b in enumerate([*order, *extra]):
                m, lo, hi = mean_ci(scores[b].tolist())
                col = (benchmarks + ["avg"]).index(b) if b in benchmarks + ["avg"] else None
                pub = ref[col] if ref is not None and col is not None else float("nan")
                out.append(
                    {"model": model, "data": data, "method": method, "seeds": len(scores),
                     "bench": b, "order": i, "mean": m, "lo": lo, "hi": hi, "paper": pub}
                )  # fmt: skip
    return pd.DataFrame(out)


def _cell(r: pd.Series) -> str:
    s = f"{r['mean']:.1f} ± {(r['hi'] - r['lo']) / 2:.1f}" if r["seeds"] > 1 else f"{r['mean']:.1f}"
    return s + (f" (paper {r['paper']:.2f})" if pd.notna(r["paper"]) else "")


def _grid(long: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    benches = long.sort_values("order").drop_duplicates("bench")["bench"].tolist()
    header = ["model", "method", "seeds", *[paper.BENCHMARK_TITLES.get(b, b) for b in benches]]
    rows = []
    for (model, method), g in long.groupby(["model", "method"], sort=False):
        cells = {r["bench"]: _cell(r) for _, r in g.iterrows()}
        rows.append([model, method, str(g["seeds"].iloc[0]), *[cells.get(b, "–") for b in benches]])
    return header, rows


def _note(long: pd.DataFrame, paper_data: str) -> str:
    comparable = long["paper"].notna().any()
    n = int(long["seeds"].max())
    note = (
        f"Final accuracy (%), mean ± 95 % CI half-width (Student t) over {n} seed(s); "
        "Δ = each run's final Avg minus its own step-0 Avg, then averaged."
    )
    if not comparable:
        note += (
            f" No published number is shown: these runs' model/data ({', '.join(sorted(set(long['model'])))}"
            f" on {', '.join(sorted(set(long['data'])))}) are not the paper's ({paper_data})."
        )
    return note


def render(long: pd.DataFrame, fmt: str, title: str, paper_data: str) -> str:
    """``md`` | ``tex`` | ``csv`` text of a long table from :func:`table_frame`."""
    if fmt == "csv":
        buf = io.StringIO()
        long.drop(columns="order").to_csv(buf, index=False, float_format="%.4f")
        return buf.getvalue()
    header, rows = _grid(long)
    note = _note(long, paper_data)
    if fmt == "md":
        lines = [f"**{title}.** {note}", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n"

    def esc(s: str) -> str:
        return re.sub(r"([%_&#])", r"\\\1", s).replace("±", r"$\pm$")

    lines = [
        r"\begin{table}[t]", r"\centering", rf"\caption{{{esc(title)}. {esc(note)}}}",
        r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}", r"\toprule",
        " & ".join(esc(h) for h in header) + r" \\", r"\midrule",
        *[" & ".join(esc(c) for c in r) + r" \\" for r in rows],
        r"\bottomrule", r"\end{tabular}", r"\end{table}",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def table1(df: pd.DataFrame, fmt: str = "md") -> str:
    """Table 1: avg pass@1 per benchmark, Base / GRPO / SFPO (experiment ``paper_main``)."""
    long = table_frame(df, "paper_main", paper.TABLE1, "dapo_math", paper.TABLE1_BENCHMARKS)
    return render(long, fmt, "Table 1 — accuracy after RL (DAPO+MATH in the paper)", "dapo_math")


def table2(df: pd.DataFrame, fmt: str = "md") -> str:
    """Table 2: AIME24/25 after RL on Skywork-OR1 (experiment ``skywork``)."""
    long = table_frame(df, "skywork", paper.TABLE2, "skywork", paper.TABLE2_BENCHMARKS)
    return render(long, fmt, "Table 2 — accuracy after RL (Skywork-OR1 in the paper)", "skywork")
