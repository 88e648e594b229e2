"""An evaluation is its own record (issue 25, item 3): one written under a run dir never takes the
place of the run's final validation in Table 1 or summary.json; make_figures lists it as an
evaluation, labelled with its checkpoint, problems, n, sampling and parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synthetic_runs import write_run

from analysis import make_figures, summary, tables
from analysis.evals import evals_table, find_evals
from analysis.runs import MissingRuns, discover

EVALUATED = {  # what sfpo_lab.eval.record.evaluated writes
    "kind": "sfpo_lab.eval",
    "ckpt": "/somewhere/grpo_s0/last.ckpt",
    "model": "toy",
    "iteration": 10,
    "benchmarks": {"toy": 5, "held": 20},
    "limit": 5,
    "file_limit": None,
    "n": 2,
    "sampling": {"temperature": 1.0, "top_p": 0.7, "top_k": 0, "max_new_tokens": 12, "seed": 0},
    "parser": {"answer_parsing": "authors", "answer_extraction": None},
    "template": "toy",
    "chat": False,
    "from_run": {"limit": 5},
}


def _runs(root: Path) -> Path:
    for seed in (0, 1):
        write_run(root / f"grpo_s{seed}", "paper_main", seed=seed, alpha=0.0, gain=1.0)
        write_run(root / f"sfpo_s{seed}", "paper_main", seed=seed, alpha=0.8, gain=2.0)
    return root


def _add_eval(run_dir: Path) -> None:
    """An eval of the run's checkpoint on 5 toy problems x 2 samples and a held-out file."""
    out = run_dir / "eval"
    out.mkdir()
    bench = {"toy": {"acc": 50.0, "ci_lo": 10.0, "ci_hi": 90.0, "n_problems": 5},
             "held": {"acc": 95.0, "ci_lo": 85.0, "ci_hi": 100.0, "n_problems": 20}}  # fmt: skip
    (out / "summary.json").write_text(
        json.dumps({"benchmarks": bench, "avg": 72.5, "evaluated": EVALUATED})
    )
    (out / "toy.records.jsonl").write_text(json.dumps({"id": 0, "correct": [1, 0]}) + "\n")


def test_an_eval_under_a_run_changes_no_training_number(tmp_path: Path) -> None:
    root = _runs(tmp_path / "runs")
    before = discover([root])
    table, numbers = tables.table1(before, "csv"), summary.summary_json(before)
    _add_eval(root / "grpo_s0")
    after = discover([root])
    assert tables.table1(after, "csv") == table  # no "held" column, no 50.0 for GRPO seed 0
    assert summary.summary_json(after) == numbers
    assert "held" not in table


def test_evals_are_listed_as_evals_with_their_settings(tmp_path: Path) -> None:
    root = _runs(tmp_path / "runs")
    _add_eval(root / "grpo_s0")
    evals = find_evals([root])
    toy = evals.set_index("benchmark").loc["toy"]
    assert (toy["run"], toy["eval_dir"]) == ("runs/grpo_s0", "runs/grpo_s0/eval")
    assert (toy["ckpt"], toy["iteration"], toy["problems"], toy["limit"], toy["n"]) == (
        "/somewhere/grpo_s0/last.ckpt", 10, 5, 5, 2)  # fmt: skip
    assert (toy["top_p"], toy["parser"], toy["acc"]) == (0.7, "authors", 50.0)
    assert evals.set_index("benchmark").loc["held", "problems"] == 20
    md = evals_table(evals)
    assert md.startswith("**Standalone evaluations**")
    assert "| runs/grpo_s0/eval | runs/grpo_s0 | last.ckpt | 10 | toy | 5 | 5 | 2 |" in md
    with pytest.raises(MissingRuns, match="no standalone evaluation"):
        evals_table(find_evals([_runs(tmp_path / "plain")]))


def test_make_figures_writes_the_evals_beside_the_tables(tmp_path: Path) -> None:
    root = _runs(tmp_path / "runs")
    _add_eval(root / "sfpo_s1")
    out = tmp_path / "out"
    assert make_figures.main(["--runs", str(root), "--out", str(out), "--only", "evals"]) == 0
    assert "| runs/sfpo_s1/eval | runs/sfpo_s1 |" in (out / "evals.md").read_text()
    assert (out / "evals.csv").read_text().startswith("eval_dir,run,ckpt,iteration,benchmark")
