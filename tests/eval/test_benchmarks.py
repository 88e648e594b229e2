"""Benchmark loaders: every real file, gold normalisation, hub fallback, field mapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sfpo_lab.data.records import Problem
from sfpo_lab.eval import benchmarks
from sfpo_lab.eval.benchmarks import (
    BENCHMARKS,
    PAPER_BENCHMARKS,
    join_answer_parts,
    load_benchmark,
    load_benchmark_from_fields,
    load_benchmarks,
    normalize_gold,
    repair_eaten_escapes,
    standardize_gold,
)

# Row counts from ../shared/data/README.md.
ROW_COUNTS = {
    "math500": 500,
    "aime24": 30,
    "aime25": 30,
    "amc23": 40,
    "minerva_math": 272,
    "olympiadbench": 675,
    "lighteval-math_test": 5000,
    "aime2024_test": 30,
    "amc_test": 83,
}


def test_registry_covers_paper_and_verl_sets():
    assert set(ROW_COUNTS) == set(BENCHMARKS)
    assert set(PAPER_BENCHMARKS) <= set(BENCHMARKS)


@pytest.mark.parametrize("name", sorted(ROW_COUNTS))
def test_real_file_loads_with_row_count_and_golds(name: str, benchmarks_dir: Path):
    problems = load_benchmark(name, benchmarks_dir)
    assert len(problems) == ROW_COUNTS[name]
    assert all(isinstance(p, Problem) and p.source == name for p in problems)
    assert all(p.problem.strip() and p.answer.strip() for p in problems)
    assert len({p.id for p in problems}) == len(problems), "ids must be unique"
    assert not any(p.answer.startswith("$") or p.answer.endswith("$") for p in problems)


def test_default_data_dir_finds_shared_files(benchmarks_dir: Path, monkeypatch):
    monkeypatch.delenv("SFPO_DATA_DIR", raising=False)
    assert benchmarks.default_data_dir() == benchmarks_dir
    assert len(load_benchmark("aime24", limit=3)) == 3


def test_limit_keeps_first_rows(benchmarks_dir: Path):
    full = load_benchmark("math500", benchmarks_dir)
    assert load_benchmark("math500", benchmarks_dir, limit=5) == full[:5]
    with pytest.raises(ValueError, match="limit"):
        load_benchmark("math500", benchmarks_dir, limit=0)


def test_minerva_gold_is_last_box_of_solution(benchmarks_dir: Path):
    problems = load_benchmark("minerva_math", benchmarks_dir, limit=2)
    assert problems[0].answer == "1.6"  # "...=\boxed{1.6} \mathrm{~cm}"
    assert problems[1].answer == r"4.5 \times 10^{33}"  # upstream "4.5e33"
    assert problems[0].id == "0"


def test_olympiad_multi_answer_needs_all_parts(benchmarks_dir: Path):
    by_id = {p.id: p for p in load_benchmark("olympiadbench", benchmarks_dir)}
    assert by_id["1606"].answer == "2"
    multi = [p.answer for p in by_id.values() if p.answer == "69, 84"]
    assert multi, "the '$69$,$84$' row must keep both parts"


def test_amc_float_answers_become_integers(benchmarks_dir: Path):
    problems = load_benchmark("amc23", benchmarks_dir)
    assert problems[0].answer == "27"
    assert all("." not in p.answer for p in problems)
    assert load_benchmark("amc_test", benchmarks_dir, limit=1)[0].answer == "142"


def test_aime24_and_verl_aime_agree(benchmarks_dir: Path):
    jsonl = load_benchmark("aime24", benchmarks_dir)
    verl = load_benchmark("aime2024_test", benchmarks_dir)
    assert [(p.id, p.answer) for p in jsonl] == [(p.id, p.answer) for p in verl]


def test_aime25_mangled_escapes_are_repaired(benchmarks_dir: Path):
    problems = load_benchmark("aime25", benchmarks_dir)
    assert not any(ch in p.problem for p in problems for ch in "\x0c\t\x08")
    assert any("\\frac{\\log_k" in p.problem for p in problems)
    assert any("\\triangle DEF" in p.problem for p in problems)


@pytest.mark.parametrize(
    ("raw", "gold"),
    [(27.0, "27"), (-1.0, "-1"), ("27.0", "27"), (2.5, "2.5"), (" $\\frac12$ ", "\\frac12")],
)
def test_normalize_gold(raw, gold):
    assert normalize_gold(raw) == gold


@pytest.mark.parametrize(
    ("raw", "gold"),
    [
        ("4.5e33", r"4.5 \times 10^{33}"),
        ("3e6", r"3 \times 10^{6}"),
        ("1.2E-05", r"1.2 \times 10^{-5}"),
        ("6.6e+2", r"6.6 \times 10^{2}"),
        ("-1./3", "-1/3"),
        ("-3./2", "-3/2"),
        ("np.arcsin(10/13)", r"\arcsin(10/13)"),
        ("np.sqrt(2*(3+1))/np.pi", r"\sqrt{2*(3+1)}/\pi"),
        ("np.log(2)", r"\ln(2)"),
        ("62.5%", r"62.5\%"),
        (r"62.5\%", r"62.5\%"),
        (r"(-\infty, 0) \cup\{1\}.", r"(-\infty, 0) \cup\{1\}"),
        ("204.", "204"),
        (r"x\,", r"x\,"),  # a LaTeX space is not punctuation
        ("1.5", "1.5"),
        (r"\mathrm{e}^{2}", r"\mathrm{e}^{2}"),
        ("2e", "2e"),
        (r"x_1e2", r"x_1e2"),
    ],
)
def test_standardize_gold(raw, gold):
    assert standardize_gold(raw) == gold


@pytest.mark.parametrize(
    ("final_answer", "gold"),
    [
        (["$69$,$84$"], "69, 84"),
        (["$(1,8,19), (2,7,13)$"], "(1,8,19), (2,7,13)"),
        (["$\\frac{32}{9}$,$\\frac{1}{2}$"], "\\frac{32}{9}, \\frac{1}{2}"),
        (["$221,$8$"], "221,8"),
        (["$3$", "$5$"], "3, 5"),
        (["1,3,5"], "1,3,5"),
    ],
)
def test_join_answer_parts(final_answer, gold):
    assert join_answer_parts(final_answer) == gold


def test_repair_eaten_escapes_leaves_newlines():
    assert repair_eaten_escapes("\x0crac{1}{2} and \triangle\nnext") == (
        "\\frac{1}{2} and \\triangle\nnext"
    )


def test_unknown_benchmark_lists_valid_names():
    with pytest.raises(ValueError, match="unknown benchmark 'gsm8k'.*math500.*olympiadbench"):
        load_benchmark("gsm8k")
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmarks(["math500", "nope"])


def test_explicit_data_dir_without_file_fails(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="math500.jsonl"):
        load_benchmark("math500", tmp_path)


def test_hub_fallback_uses_upstream_source(tmp_path: Path, monkeypatch):
    """Without a local copy the hub dataset is loaded and normalised like the local file."""
    import datasets

    hub_rows = {
        "Hothan/OlympiadBench": [
            {"id": 7, "question": "Q?", "final_answer": ["$8$,$4$"], "solution": ["..."]}
        ],
        "math-ai/minervamath": [{"question": "How far?", "answer": "$1.6$"}],
        "math-ai/amc23": [{"id": 0, "question": "How many?", "answer": 27.0}],
    }
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return hub_rows[path]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setenv("SFPO_DATA_DIR", str(tmp_path))  # empty: forces the hub
    olympiad = load_benchmark("olympiadbench")
    assert olympiad == [Problem("7", "Q?", "8, 4", "olympiadbench")]
    assert load_benchmark("minerva_math")[0].answer == "1.6"
    assert load_benchmark("amc23")[0] == Problem("0", "How many?", "27", "amc23")
    assert calls[0] == ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train")


def test_row_without_gold_is_an_error(tmp_path: Path):
    (tmp_path / "aime25.jsonl").write_text(json.dumps({"problem": "x?", "answer": ""}) + "\n")
    with pytest.raises(ValueError, match="'aime25' row 0: no gold answer"):
        load_benchmark("aime25", tmp_path)


def test_user_csv_loads_by_field_mapping(tmp_path: Path):
    path = tmp_path / "heldout.csv"
    path.write_text("qid,Question,Final\nq1,What is 3*9?,27.0\nq2,Half of one?,$\\frac{1}{2}$\n")
    problems = load_benchmark_from_fields(path, "Question", "Final", id_field="qid")
    assert problems == [
        Problem("q1", "What is 3*9?", "27", "heldout"),
        Problem("q2", "Half of one?", "\\frac{1}{2}", "heldout"),
    ]


def test_user_json_loads_with_boxed_extraction(tmp_path: Path):
    path = tmp_path / "mine.json"
    rows = [
        {"text": "2+2?", "worked": "We add: \\boxed{3} no, \\boxed{4}."},
        {"text": "Root of 9?", "worked": "So \\boxed{3}."},
    ]
    path.write_text(json.dumps(rows))
    problems = load_benchmark_from_fields(
        path, "text", "worked", answer_extraction="last_boxed", name="mine_v1", limit=1
    )
    assert [(p.problem, p.answer, p.source) for p in problems] == [("2+2?", "4", "mine_v1")]
