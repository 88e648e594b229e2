"""Tables 1 and 2: final accuracy per (model, method), mean ± 95 % CI half-width over seeds.

A run's number for a benchmark is its own last logged validation ``val/<b>/acc`` (a standalone
evaluation is never put in its place: analysis.evals lists those). "Base" is the same metric at
step 0 (before any update), one value per seed. The published number is printed beside ours
only when the run's model *and* training data are the paper's (``paper.TABLE1``/``TABLE2``).

Methods: GRPO, GRPO-μ (α = 1 with slow correction: K + 1 passes per batch, no reposition; row
only when such runs exist) and SFPO. Below them, paired rows ``SFPO − GRPO`` and
``SFPO − GRPO-μ``: per seed run by both methods, SFPO's final score minus the other's (points);
mean and Student-t 95 % CI over those n seeds (the seeds share a base model, so this is the
comparison with the power to separate methods).
"""

from __future__ import annotations

import io
import re

import pandas as pd

from analysis import paper
from analysis.identity import check_pooling, dedupe
from analysis.runs import MissingRuns
from analysis.stats import mean_ci

_METHODS = ["Base", "GRPO", "GRPO-μ", "SFPO"]
# paired rows below the methods: (minuend, subtrahend), per seed present in both
PAIRS = [("SFPO", "GRPO"), ("SFPO", "GRPO-μ")]
MINUS = "−"  # U+2212, as in "SFPO − GRPO"


def _run_scores(rows: pd.DataFrame, base: bool) -> pd.DataFrame:
    """One row per run: benchmark -> accuracy (final, or step 0 for ``base``)."""
    accs = rows[rows["metric"].str.match(r"^val/[^/]+/acc$")].copy()
    accs["bench"] = accs["metric"].str.split("/").str[1]
    accs = accs[accs["step"] == 0] if base else accs.sort_values("step")  # the last step wins
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


def model_scores(
    mrows: pd.DataFrame, experiment: str, model: str
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """``(final, start)`` per method present (GRPO, GRPO-μ, SFPO) among one model's runs:
    one row per run, a column per benchmark, ``avg`` (their mean) and ``seed``; ``final``
    also ``gain`` (the run's final avg minus its own step-0 avg)."""
    finals: dict[str, pd.DataFrame] = {}
    starts: dict[str, pd.DataFrame] = {}
    for method in _METHODS[1:]:
        sel = mrows[mrows["method"] == method]
        if sel.empty:
            continue
        one_variant(sel, experiment, model)
        final, start = _method_scores(sel)
        benches = [b for b in final.columns if b != "seed"]
        final = final.assign(avg=final[benches].mean(axis=1))
        start_avg = start[[b for b in benches if b in start]].mean(axis=1)
        finals[method] = final.assign(gain=final["avg"] - start_avg.reindex(final.index))
        starts[method] = start.assign(
            avg=start[[b for b in start.columns if b != "seed"]].mean(axis=1)
        )
    return finals, starts


def paired_differences(finals: dict[str, pd.DataFrame], a: str, b: str) -> pd.DataFrame:
    """Per seed present in both ``a`` and ``b``: ``a``'s score minus ``b``'s, for every
    benchmark, ``avg`` and ``gain`` (points); indexed by seed (ascending)."""
    x, y = finals[a].set_index("seed"), finals[b].set_index("seed")
    for name, t in ((a, x), (b, y)):
        if t.index.duplicated().any():  # dedupe + one_variant make this impossible upstream
            raise ValueError(f"{name}: several runs per seed {sorted(t.index)}; cannot pair")
    seeds = sorted(set(x.index) & set(y.index))
    cols = [c for c in x.columns if c in y.columns]
    return x.loc[seeds, cols] - y.loc[seeds, cols]


def shared_seeds(finals: dict[str, pd.DataFrame]) -> tuple[set[int], dict[str, list[int]]]:
    """The seeds every method present ran, and per method the seeds it ran beyond them (left
    out of its row, so the rows differ by method, not by which seeds each happened to get)."""
    seeds = {m: {int(x) for x in f["seed"]} for m, f in finals.items()}
    shared = set.intersection(*seeds.values()) if seeds else set()
    return shared, {m: sorted(s - shared) for m, s in seeds.items() if s - shared}


def _method_rows(
    finals: dict[str, pd.DataFrame], starts: dict[str, pd.DataFrame], where: str
) -> tuple[dict[str, pd.DataFrame], dict[str, list[int]]]:
    """Base and each method over the shared seeds (Base: step 0 of the first method's runs,
    GRPO's when present), and the seeds left out per method."""
    shared, left_out = shared_seeds(finals)
    if not shared:
        ran = {m: sorted(int(x) for x in f["seed"]) for m, f in finals.items()}
        raise MissingRuns(f"{where}: no seed was run by every method ({ran}); run the same seeds")
    base = next(iter(starts.values()))
    rows = {"Base": base[base["seed"].isin(shared)]}
    rows |= {m: f[f["seed"].isin(shared)] for m, f in finals.items()}
    return rows, left_out


def _order(scores: pd.DataFrame, benchmarks: list[str]) -> list[str]:
    """Benchmarks in the paper's order, then others by name, then ``avg`` (and ``gain``)."""
    benches = [b for b in scores.columns if b not in ("seed", "avg", "gain")]
    order = [b for b in benchmarks if b in benches] + sorted(set(benches) - set(benchmarks))
    return [*order, "avg", *(["gain"] if "gain" in scores else [])]


def _rows(
    model: str,
    data: str,
    method: str,
    scores: pd.DataFrame,
    order: list[str],
    ref: list[float] | None,
    benchmarks: list[str],
) -> list[dict]:
    """Long-table rows of one method (or paired difference): mean and CI per column."""
    out = []
    for i, b in enumerate(order):
        m, lo, hi = mean_ci(scores[b].tolist())
        col = (benchmarks + ["avg"]).index(b) if b in benchmarks + ["avg"] else None
        pub = ref[col] if ref is not None and col is not None else float("nan")
        out.append({"model": model, "data": data, "method": method, "seeds": len(scores),
                    "bench": b, "order": i, "mean": m, "lo": lo, "hi": hi, "paper": pub})  # fmt: skip
    return out


def table_frame(
    df: pd.DataFrame, experiment: str, published: dict, paper_data: str, benchmarks: list[str]
) -> pd.DataFrame:
    """Long table: model, method, seeds, bench, mean, lo, hi, paper (NaN when not comparable).

    Replicas count once; a method's row pools runs of one effective config (else
    :class:`analysis.identity.MixedRuns`). Method rows and Base are over the seeds every
    method of the model ran (a seed only some ran is left out and named in
    ``.attrs["left_out"]``, ``{model: {method: [seeds]}}``, and the note). A run's gain is its
    final Avg minus its own step-0 Avg (base and final from the same run); the Base row is step
    0 of the GRPO runs (of the next method present when there is no GRPO run), one per seed.
    Below the methods, paired rows ``SFPO − GRPO`` and ``SFPO − GRPO-μ``: per seed run by both,
    SFPO's score minus the other's (points), mean and Student-t CI over those seeds."""
    runs = df[df["experiment"] == experiment]
    if runs.empty:
        raise MissingRuns(f"no runs with extras.experiment={experiment}")
    runs = dedupe(runs)
    check_pooling(runs, f"{experiment} table", by="label", within="model")
    out, left_out = [], {}
    for model, mrows in runs.groupby("model", sort=True):
        data = mrows["data"].iloc[0]
        finals, starts = model_scores(mrows, experiment, model)
        per_method, left = _method_rows(finals, starts, f"{experiment}/{model}")
        if left:
            left_out[model] = left
        for method in _METHODS:
            scores = per_method.get(method)
            if scores is None or scores.empty:
                continue
            ref = published.get((model, method)) if data == paper_data else None
            cols = _order(scores, benchmarks)
            out += _rows(model, data, method, scores, cols, ref, benchmarks)
        for a, b in PAIRS:
            diff = paired_differences(finals, a, b) if a in finals and b in finals else None
            if diff is not None and len(diff):
                name = f"{a} {MINUS} {b}"
                out += _rows(model, data, name, diff, _order(diff, benchmarks), None, benchmarks)
    long = pd.DataFrame(out)
    long.attrs["left_out"] = left_out
    long.attrs["unclean"] = unclean_runs(runs)
    return long


def unclean_runs(runs: pd.DataFrame) -> list[str]:
    """``"<model> <method> seed <s>: <k> skipped step(s), <r> rollback(s)"`` for every run that
    skipped a non-finite optimizer step or rolled an SFPO iteration back to theta0 (its last
    ``train/skipped_steps`` / ``train/restored_iterations``, both cumulative counters)."""
    keys = ("train/skipped_steps", "train/restored_iterations")
    rows = runs[runs["metric"].isin(keys)]
    if rows.empty:
        return []
    last = rows.groupby(["model", "method", "seed", "metric"])["value"].max().unstack("metric")
    last = last.reindex(columns=list(keys)).fillna(0)
    bad = last[(last > 0).any(axis=1)]
    return [
        f"{model} {method} seed {seed}: {int(r[keys[0]])} skipped step(s), "
        f"{int(r[keys[1]])} rollback(s)"
        for (model, method, seed), r in bad.iterrows()
    ]


def _cell(r: pd.Series) -> str:
    m = f"{r['mean']:+.1f}" if MINUS in r["method"] else f"{r['mean']:.1f}"
    s = f"{m} ± {(r['hi'] - r['lo']) / 2:.1f}" if r["seeds"] > 1 else m
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
    pairs = sorted(m for m in set(long["method"]) if MINUS in m)
    if pairs:
        note += (
            f" Paired rows ({', '.join(pairs)}): per seed run by both methods (the same base "
            "model and RL seed), the first's final score minus the second's, in points; mean ± "
            "95 % CI half-width (Student t) over those seeds; seeds = their number."
        )
    for model, left in (long.attrs.get("left_out") or {}).items():
        shown = "; ".join(f"{m} seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))}" for m, s in left.items())  # fmt: skip
        note += (
            f" {model}: method rows and Base are over the seeds every method ran; left out "
            f"(not run by every method): {shown} (the paired rows use each pair's shared seeds)."
        )
    unclean = long.attrs.get("unclean") or []
    if unclean:
        note += f" NOT CLEAN (non-finite steps skipped or iterations rolled back): {'; '.join(unclean)}."
    if "GRPO-μ" in set(long["method"]):
        note += (
            " GRPO-μ: SFPO with α = 1 and slow correction on (K + 1 update passes per rollout "
            "batch, no reposition), the equal-compute control."
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
        s = re.sub(r"([%_&#])", r"\\\1", s).replace("±", r"$\pm$")
        return s.replace("μ", r"$\mu$").replace(MINUS, "$-$").replace("α", r"$\alpha$")

    lines = [
        r"\begin{table}[t]", r"\centering", rf"\caption{{{esc(title)}. {esc(note)}}}",
        r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}", r"\toprule",
        " & ".join(esc(h) for h in header) + r" \\", r"\midrule",
        *[" & ".join(esc(c) for c in r) + r" \\" for r in rows],
        r"\bottomrule", r"\end{tabular}", r"\end{table}",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def table1(df: pd.DataFrame, fmt: str = "md") -> str:
    """Table 1: avg pass@1 per benchmark, Base / GRPO / GRPO-μ / SFPO and the paired
    differences SFPO − GRPO, SFPO − GRPO-μ (experiment ``paper_main``)."""
    long = table_frame(df, "paper_main", paper.TABLE1, "dapo_math", paper.TABLE1_BENCHMARKS)
    return render(long, fmt, "Table 1 — accuracy after RL (DAPO+MATH in the paper)", "dapo_math")


def table2(df: pd.DataFrame, fmt: str = "md") -> str:
    """Table 2: AIME24/25 after RL on Skywork-OR1 (experiment ``skywork``)."""
    long = table_frame(df, "skywork", paper.TABLE2, "skywork", paper.TABLE2_BENCHMARKS)
    return render(long, fmt, "Table 2 — accuracy after RL (Skywork-OR1 in the paper)", "skywork")
