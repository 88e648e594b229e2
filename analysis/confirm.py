"""The pre-registered confirmation's analysis (issue 27; plan: analysis/confirm_plan.yaml).

    python analysis/confirm.py                      # from the committed runs (paper_figures/confirm_runs)
    python analysis/confirm.py --runs outputs/confirm --out /tmp/confirm
    python analysis/confirm.py --split-sizes        # held-out split sizes, counted

Registered before any run (:data:`REGISTERED`; the plan file repeats it and records the commit
and sha256 of this file, and this analysis refuses to run when either differs):

- **primary**: per seed, the mean held-out accuracy (``val/avg``, %) over validation steps
  5-50; B - A paired over seeds; paired Student-t 95 % CI, its p, and Wilcoxon's signed-rank p.
  Success = the CI's lower bound > 0. No other primary statistic is reported (``--primary``
  accepts only the registered name).
- **secondary**, Holm-corrected together: C - A on the primary statistic (paired t); the
  rollout ratio A / B to the plan's fixed threshold on smoothed seed-mean curves, with a
  paired bootstrap (10,000 resamples, fixed seed); B - A accuracy at batch 50 (paired t).

Every run read must be the registered run of a plan arm (the confirmation's experiment, the
registered settings, the arm's method and lr: :data:`REGISTERED` ``runs``), else the analysis
stops naming the run and the setting; so does an arm whose runs differ in settings. Runs of
seeds outside the plan are left out and listed; a missing or unfinished run is listed.
Outputs: ``confirm.json`` (the ``confirm`` block: per registered statistic ``{mean, ci_lo,
ci_hi, n_seeds, p}``, for ``summary.json``), ``confirm_per_seed.csv`` and ``confirm.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from scipy import stats as sps  # noqa: E402

from analysis.stats import mean_ci  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "analysis" / "confirm_plan.yaml"
RUNS = REPO / "paper_figures" / "confirm_runs"
METRIC = "val/avg"
ROLLOUTS_PER_BATCH = 16 * 8  # data.batch_size x rollout.n: the same in every arm

REGISTERED: dict[str, Any] = {
    "primary": {
        "name": "B_minus_A_mean_acc_5_50",
        "metric": METRIC,
        "per_seed": "mean over validation steps 5, 10, ..., 50",
        "contrast": ["B", "A"],
        "test": "paired Student-t 95% CI (two-sided p) and Wilcoxon signed-rank (two-sided)",
        "success": "ci_lo > 0",
    },
    "secondary": [
        {"name": "C_minus_A_mean_acc_5_50", "contrast": ["C", "A"], "test": "paired t"},
        {
            "name": "rollout_ratio_A_over_B",
            "contrast": ["A", "B"],
            "test": "paired bootstrap, percentile 95% CI, p = 2 min(P(r <= 1), P(r >= 1))",
            "curve": "seed-mean val/avg, centered moving average over 3 validation points",
            "cost": "rollouts at the first crossing of the threshold, linearly interpolated",
        },
        {"name": "B_minus_A_acc_at_50", "contrast": ["B", "A"], "test": "paired t"},
    ],
    "correction": "Holm over the secondary p values",
    "steps": [5, 50],
    "val_every": 5,
    "bootstrap": {"resamples": 10000, "seed": 2027},
    # every run read must be one of the plan's (extras.experiment; effective-config leaves,
    # analysis.identity; the trigger as configured); `sfpo` leaves where alpha > 0
    "runs": {
        "experiments": ["confirm", "confirm_step"],
        "settings": {
            "data.toy.split": "terms",
            "iterations": 50,
            "val.limit": 500,
            "val.n": 4,
            "val.every": 5,
            "sfpo.entropy_control.enabled": False,
        },  # fmt: skip
        "sfpo": {"sfpo.K": 3, "sfpo.slow_correction": True},
    },
}
_METHOD = {"grpo": "GRPO", "sfpo": "SFPO", "grpo_mu": "GRPO-μ"}  # an arm's algorithm= -> method


class Refused(ValueError):
    """The analysis asked for is not the registered one (the message says what differs)."""


def file_digest(path: Path = Path(__file__)) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_plan(path: Path = PLAN, check_digest: bool = True) -> dict[str, Any]:
    """The plan file, checked against :data:`REGISTERED` and this file's sha256."""
    plan = yaml.safe_load(Path(path).read_text())
    if plan.get("registered") != REGISTERED:
        raise Refused(f"{path}: its 'registered' analysis differs from analysis/confirm.py's")
    want = plan.get("analysis", {}).get("sha256")
    if check_digest and want != file_digest():
        raise Refused(
            f"analysis/confirm.py (sha256 {file_digest()[:12]}) is not the registered analysis "
            f"(sha256 {str(want)[:12]}, commit {plan.get('analysis', {}).get('commit')})"
        )
    return plan


def registered_settings(arm: dict[str, Any], alpha: float) -> dict[str, Any]:
    """What a run of ``arm`` (a plan arm) must have: its experiment and method (from the arm's
    overrides) and the registered settings (:data:`REGISTERED` ``runs``)."""
    over = dict(o.split("=", 1) for o in arm["overrides"])
    reg = REGISTERED["runs"]
    want = {"experiment": over["experiment"].rsplit("/", 1)[-1], "method": _METHOD[over["algorithm"]]}  # fmt: skip
    return want | reg["settings"] | (reg["sfpo"] if alpha > 0 else {})


def check_run(run: Any, arms: dict[str, dict[str, Any]]) -> str:
    """The plan arm of one run row (analysis.runs columns); :class:`Refused` (naming the run
    and the setting) unless it is the registered run of that arm."""
    if run.experiment not in REGISTERED["runs"]["experiments"]:
        raise Refused(f"{run.run_id}: extras.experiment={run.experiment!r} is not the confirmation's (confirm, confirm_step)")  # fmt: skip
    hits = [a for a, s in arms.items() if math.isclose(run.alpha, s["alpha"]) and math.isclose(run.lr, s["lr"], rel_tol=1e-6)]  # fmt: skip
    if len(hits) != 1:
        raise Refused(f"{run.run_id}: alpha={run.alpha:g}, lr={run.lr:g} is no arm of the plan")
    have = json.loads(run.config) | {"experiment": run.experiment, "method": run.method,
                                     "sfpo.entropy_control.enabled": bool(run.ec)}  # fmt: skip
    for key, value in registered_settings(arms[hits[0]], run.alpha).items():
        if have.get(key, "<absent>") != value:
            raise Refused(f"{run.run_id}: {key}={have.get(key, '<absent>')!r}, arm {hits[0]} registers {value!r}")  # fmt: skip
    return hits[0]


def assign_arms(df: pd.DataFrame, plan: dict[str, Any]) -> pd.DataFrame:
    """Tidy run rows (analysis.runs) -> the runs of the plan's seeds, with an ``arm`` column
    (by sfpo.alpha, optim.lr). Every run read, of any seed, must be the registered run of its
    arm (:func:`check_run`); an arm holding two settings or two runs of one seed is refused."""
    runs = df.drop_duplicates("run_id")
    arm_of = {run.run_id: check_run(run, plan["arms"]) for run in runs.itertuples(index=False)}
    out = df.assign(arm=df["run_id"].map(arm_of))
    out = out[out["seed"].isin(plan["seeds"])]
    for arm, g in out.drop_duplicates("run_id").groupby("arm"):
        if g["identity"].nunique() > 1:
            raise Refused(f"arm {arm}: its runs differ in settings ({g['run_id'].tolist()[:4]})")
        if g["seed"].duplicated().any():
            raise Refused(f"arm {arm}: two runs of one seed ({g['run_id'].tolist()[:4]})")
    return out


def per_seed(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (arm, seed): ``mean_acc_5_50`` (NaN unless all 10 points exist),
    ``acc_at_50`` and ``acc_0``, from the ``val/avg`` rows."""
    lo, hi = REGISTERED["steps"]
    steps = list(range(lo, hi + 1, REGISTERED["val_every"]))
    rows = []
    for (arm, seed), g in df[df["metric"] == METRIC].groupby(["arm", "seed"], sort=True):
        v = g.set_index("step")["value"].astype(float)
        window = v.reindex(steps)
        rows.append({
            "arm": arm, "seed": int(seed), "run_id": g["run_id"].iloc[0],
            "acc_0": v.get(0, math.nan), "acc_at_50": v.get(hi, math.nan),
            "mean_acc_5_50": float(window.mean()) if window.notna().all() else math.nan,
        })  # fmt: skip
    return pd.DataFrame(rows, columns=["arm", "seed", "run_id", "acc_0", "acc_at_50", "mean_acc_5_50"])  # fmt: skip


def paired(seeds: pd.DataFrame, col: str, a: str, b: str) -> tuple[dict[str, Any], np.ndarray]:
    """``a - b`` of ``col`` per seed both have: ``{mean, ci_lo, ci_hi, n_seeds, p}``."""
    wide = seeds.pivot(index="seed", columns="arm", values=col)
    if a not in wide or b not in wide:
        return {"mean": None, "ci_lo": None, "ci_hi": None, "n_seeds": 0, "p": None}, np.array([])
    d = (wide[a] - wide[b]).dropna().to_numpy()
    m, lo, hi = mean_ci(d.tolist())
    p = float(sps.ttest_1samp(d, 0.0).pvalue) if len(d) > 1 and d.std() > 0 else None
    return {"mean": m, "ci_lo": lo, "ci_hi": hi, "n_seeds": len(d), "p": p}, d


def smooth3(curves: np.ndarray) -> np.ndarray:
    """Centered moving average over 3 points along the last axis (2 at the ends)."""
    padded = np.pad(curves, [(0, 0)] * (curves.ndim - 1) + [(1, 1)], constant_values=np.nan)
    window = np.stack([padded[..., :-2], padded[..., 1:-1], padded[..., 2:]])
    return np.nanmean(window, axis=0)


def crossings(curves: np.ndarray, steps: np.ndarray, threshold: float) -> np.ndarray:
    """Rollouts at which each curve (rows; columns: ``steps``) first reaches ``threshold``,
    linearly interpolated from the previous point; inf where it never does."""
    curves = np.atleast_2d(curves)
    above = curves >= threshold
    first = above.argmax(axis=1)
    prev = np.maximum(first - 1, 0)
    rows = np.arange(len(curves))
    v1, v0 = curves[rows, first], curves[rows, prev]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(first > 0, (threshold - v0) / (v1 - v0), 0.0)
    step = steps[prev] + frac * (steps[first] - steps[prev])
    return np.where(above.any(axis=1), step * ROLLOUTS_PER_BATCH, np.inf)


def crossing(curve: pd.Series, threshold: float) -> float:
    """:func:`crossings` of one curve (index: step)."""
    return float(crossings(curve.to_numpy(float), curve.index.to_numpy(float), threshold)[0])


def _ratios(curves: dict[str, np.ndarray], steps: np.ndarray, idx: np.ndarray, thr: float) -> np.ndarray:  # fmt: skip
    """A's cost over B's for each row of seed indices ``idx`` (resamples x seeds): NaN when
    neither reaches ``thr``, 1 when both cost the same (both at step 0 included), 0 when only
    A does, inf when only B does or B costs 0 and A more."""
    cost = {a: crossings(smooth3(m[idx].mean(axis=1)), steps, thr) for a, m in curves.items()}
    a, b = cost["A"], cost["B"]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(b == 0, np.inf, a / np.where(b == 0, 1.0, b))
    return np.where(np.isinf(a) & np.isinf(b), np.nan, np.where(a == b, 1.0, r))


def rollout_ratio(df: pd.DataFrame, threshold: float, resamples: int, seed: int) -> dict[str, Any]:
    """A's rollouts to ``threshold`` over B's (> 1: B faster), on smoothed seed-mean curves of
    the seeds both ran; paired bootstrap over seeds (the same indices for both arms)."""
    val = df[(df["metric"] == METRIC) & df["arm"].isin(["A", "B"])]
    wide = val.pivot_table(index=["arm", "seed"], columns="step", values="value")
    arms = set(wide.index.get_level_values(0))
    seeds = sorted(set(wide.loc["A"].dropna().index) & set(wide.loc["B"].dropna().index)) if {"A", "B"} <= arms else []  # fmt: skip
    if len(seeds) < 2:
        return {"mean": None, "ci_lo": None, "ci_hi": None, "n_seeds": len(seeds), "p": None}
    steps = wide.columns.to_numpy(float)
    curves = {a: wide.loc[a].loc[seeds].to_numpy(float) for a in ("A", "B")}
    full = float(_ratios(curves, steps, np.arange(len(seeds))[None, :], threshold)[0])
    rng = np.random.default_rng(seed)
    boot = _ratios(curves, steps, rng.integers(0, len(seeds), (resamples, len(seeds))), threshold)
    ok = boot[~np.isnan(boot)]
    lo, hi = np.percentile(ok, [2.5, 97.5]) if len(ok) else (math.nan, math.nan)
    p = min(1.0, 2 * min(np.mean(ok <= 1), np.mean(ok >= 1))) if len(ok) else math.nan
    return {"mean": full, "ci_lo": float(lo), "ci_hi": float(hi), "n_seeds": len(seeds), "p": float(p),
            "threshold": threshold, "undefined_share": float(np.isnan(boot).mean())}  # fmt: skip


def holm(ps: list[float | None]) -> list[float | None]:
    """Holm-adjusted p values (None stays None and does not count)."""
    known = sorted((p, i) for i, p in enumerate(ps) if p is not None and not math.isnan(p))
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))
        out[i] = running
    return out


def analyse(df: pd.DataFrame, plan: dict[str, Any], primary: str | None = None) -> dict[str, Any]:
    """The registered statistics of the runs ``df`` (tidy rows, analysis.runs)."""
    name = REGISTERED["primary"]["name"]
    if primary not in (None, name):
        raise Refused(f"primary statistic {primary!r} refused: the registered primary is {name!r}")
    arms = assign_arms(df, plan)
    left_out = sorted(set(df["run_id"]) - set(arms["run_id"]))
    df, seeds = arms, per_seed(arms)
    block: dict[str, Any] = {}
    prim, d = paired(seeds, "mean_acc_5_50", "B", "A")
    prim["wilcoxon_p"] = float(sps.wilcoxon(d).pvalue) if len(d) > 1 and np.any(d != 0) else None
    prim["success"] = bool(prim["ci_lo"] is not None and prim["ci_lo"] > 0)
    block[name] = prim
    boot = REGISTERED["bootstrap"]
    second = {
        "C_minus_A_mean_acc_5_50": paired(seeds, "mean_acc_5_50", "C", "A")[0],
        "rollout_ratio_A_over_B": rollout_ratio(
            df, float(plan["threshold"]), boot["resamples"], boot["seed"]
        ),  # fmt: skip
        "B_minus_A_acc_at_50": paired(seeds, "acc_at_50", "B", "A")[0],
    }
    for (key, stat), p_holm in zip(second.items(), holm([s["p"] for s in second.values()]), strict=True):  # fmt: skip
        block[key] = stat | {"p_holm": p_holm}
    planned = {(a, s) for a in plan["arms"] for s in plan["seeds"]}
    have = {(a, s) for a, s, v in zip(seeds["arm"], seeds["seed"], seeds["mean_acc_5_50"], strict=True) if not math.isnan(v)}  # fmt: skip
    block["missing_runs"] = sorted(f"{a}_s{s}" for a, s in planned - have)
    block["left_out_seed_not_in_plan"] = left_out
    block["arm_means"] = {a: paired_mean(seeds, a) for a in sorted(plan["arms"])}
    block["reading"] = reading(block)
    return {"confirm": block, "per_seed": seeds}


def paired_mean(seeds: pd.DataFrame, arm: str) -> dict[str, Any]:
    m, lo, hi = mean_ci(seeds.loc[seeds["arm"] == arm, "mean_acc_5_50"].tolist())
    n = int(seeds.loc[seeds["arm"] == arm, "mean_acc_5_50"].notna().sum())
    return {"mean": m, "ci_lo": lo, "ci_hi": hi, "n_seeds": n}


def reading(block: dict[str, Any]) -> str:
    """The registered reading of the outcome (docs/confirm_plan.md, "What each outcome means")."""
    prim = block[REGISTERED["primary"]["name"]]
    c = block["C_minus_A_mean_acc_5_50"]
    c_wins = c["ci_lo"] is not None and c["ci_lo"] > 0 and (c["p_holm"] or 1) < 0.05
    if prim["n_seeds"] == 0:
        return "no runs"
    if prim["success"] and not c_wins:
        return "B beats A and C does not: the gain, if any, is step size, not repositioning"
    if prim["success"]:
        return "B beats A and C beats A at GRPO's per-batch step: repositioning helps"
    if c_wins:
        return "B does not beat A; C does (secondary, Holm): repositioning at a matched step"
    return "no gain of SFPO over GRPO detected (primary not met)"


def split_sizes() -> str:
    """The toy task's held-out split sizes, counted (docs/reproduction.md quotes this)."""
    from sfpo_lab.data.toy import ToyArithmetic, terms_key

    lines = []
    for data, n, split in (("toy", 2, "text"), ("toy_3op", 3, "text"), ("toy_3op_heldout", 3, "terms")):  # fmt: skip
        task = ToyArithmetic(ops="+-", num_operands=n, max_operand=9, split=split)
        train = {terms_key(p.problem) for p in task.train()}
        held = task.heldout()
        twins = sum(terms_key(p.problem) in train for p in held)
        twins500 = sum(terms_key(p.problem) in train for p in held[:500])
        lines.append(
            f"data={data} (split={split}): {len(task.problems())} problems, {len(task.train())} "
            f"train, {len(held)} held out; held-out problems sharing their signed terms with a "
            f"training problem: {twins} (of the 500 validated: {twins500})"
        )
    return "\n".join(lines)


def markdown(block: dict[str, Any], plan: dict[str, Any]) -> str:
    def f(x: Any, fmt: str = "+.2f") -> str:
        return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)

    rows = ["| statistic | mean | 95 % CI | n seeds | p | p (Holm) |", "|---|---|---|---|---|---|"]
    for key, st in block.items():
        if isinstance(st, dict) and "ci_lo" in st and "n_seeds" in st and key != "arm_means":
            ci = f"[{f(st['ci_lo'])}, {f(st['ci_hi'])}]"
            p = f(st["p"], ".3g") + (f"; Wilcoxon {f(st['wilcoxon_p'], '.3g')}" if "wilcoxon_p" in st else "")  # fmt: skip
            rows.append(f"| {key} | {f(st['mean'])} | {ci} | {st['n_seeds']} | {p} | {f(st.get('p_holm'), '.3g')} |")  # fmt: skip
    means = ", ".join(f"{a} {f(m['mean'], '.2f')} (n={m['n_seeds']})" for a, m in block["arm_means"].items())  # fmt: skip
    missing = ", ".join(block["missing_runs"]) or "none"
    left_out = ", ".join(block["left_out_seed_not_in_plan"]) or "none"
    return "\n".join([
        f"# Confirmation (plan: analysis/confirm_plan.yaml, analysis commit {plan['analysis']['commit']})",  # fmt: skip
        "", *rows, "",
        f"Per-arm mean held-out accuracy over steps 5-50 (%): {means}.",
        f"Primary success (CI lower bound > 0): {block[REGISTERED['primary']['name']]['success']}.",
        f"Reading: {block['reading']}.", f"Missing or unfinished runs: {missing}.",
        f"Left out (seed not in the plan): {left_out}.", "",
    ])  # fmt: skip


def _json(x: Any) -> Any:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json(v) for v in x]
    return round(x, 6) if isinstance(x, float) else x


def write(result: dict[str, Any], plan: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    block = _json(result["confirm"])
    paths = [out / "confirm.json", out / "confirm_per_seed.csv", out / "confirm.md"]
    paths[0].write_text(json.dumps({"confirm": block}, indent=2, sort_keys=True, ensure_ascii=False) + "\n")  # fmt: skip
    result["per_seed"].to_csv(paths[1], index=False, float_format="%.4f")
    paths[2].write_text(markdown(result["confirm"], plan))
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--runs", type=Path, action="append", help=f"run dirs (default {RUNS})")
    p.add_argument("--plan", type=Path, default=PLAN, help="the registered plan file")
    p.add_argument("--out", type=Path, help="output dir (default paper_figures/)")
    p.add_argument("--primary", help="refused unless it is the registered primary statistic")
    p.add_argument("--split-sizes", action="store_true", help="print the split sizes and exit")
    args = p.parse_args(argv)
    if args.split_sizes:
        print(split_sizes())
        return 0
    from analysis.identity import MixedRuns
    from analysis.runs import discover, incomplete_runs

    try:
        plan = load_plan(args.plan)
        roots = args.runs or [RUNS]
        df = discover(roots)
        if df.empty:
            print(f"confirm: no runs under {', '.join(map(str, roots))} (runs pending)")
            return 1
        partial = set(incomplete_runs(df))
        result = analyse(df[~df["run_id"].isin(partial)], plan, args.primary)
    except (Refused, MixedRuns) as e:
        print(f"confirm: REFUSED — {e}")
        return 2
    for path in write(result, plan, args.out or REPO / "paper_figures"):
        print(f"confirm: wrote {path}")
    print(markdown(result["confirm"], plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
