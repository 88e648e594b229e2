"""Gold-vs-gold: every shipped benchmark's normalised gold, boxed, must verify against itself
through the reward's math-verify process pool. A failure here means a normaliser (or the
verifier) loses answers, and every accuracy on that benchmark is biased low by it."""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from standard_latex import (
    standard_latex,
    standard_latex_parts,
)  # tests/eval is on sys.path (rootdir-less test dir)

from sfpo_lab.data.sources import read_rows
from sfpo_lab.eval.benchmarks import (
    BENCHMARKS,
    PAPER_BENCHMARKS,
    get_spec,
    load_benchmark,
    local_path,
)
from sfpo_lab.rewards.extract import last_boxed
from sfpo_lab.rewards.pool import MathVerifier
from sfpo_lab.rewards.verify import split_top_level

MIN_RATE = 0.99


@pytest.fixture(scope="module")
def verifier() -> Iterator[MathVerifier]:
    pool = MathVerifier(num_workers=max(2, min(8, os.cpu_count() or 2)), timeout_s=20.0)
    yield pool
    close = getattr(pool, "close", None)
    if close is not None:
        close()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_gold_verifies_against_itself(name: str, benchmarks_dir: Path, verifier: MathVerifier):
    problems = load_benchmark(name, benchmarks_dir)
    golds = [p.answer for p in problems]
    grades = verifier.grade_many([f"The answer is \\boxed{{{g}}}." for g in golds], golds)
    failed = [(p.id, p.answer) for p, g in zip(problems, grades, strict=True) if not g.correct]
    rate = 1 - len(failed) / len(problems)
    assert rate >= MIN_RATE, f"{name}: gold-vs-gold {rate:.2%} < {MIN_RATE:.0%}; {failed[:20]}"


def test_olympiad_multi_answer_rejects_a_partial_answer(
    benchmarks_dir: Path, verifier: MathVerifier
):
    """A multi-answer row graded on its first part alone must be wrong: all parts count."""
    rows = [
        (p, parts)
        for p in load_benchmark("olympiadbench", benchmarks_dir)
        if len(parts := split_top_level(p.answer)) > 1 and len(set(parts)) == len(parts)
    ]
    assert len(rows) > 80
    grades = verifier.grade_many(
        [f"\\boxed{{{parts[0]}}}" for _, parts in rows], [p.answer for p, _ in rows]
    )
    accepted = [p.answer for (p, _), g in zip(rows, grades, strict=True) if g.correct]
    assert not accepted
    reordered = [", ".join(reversed(parts)) for _, parts in rows]
    grades = verifier.grade_many(
        [f"\\boxed{{{r}}}" for r in reordered], [p.answer for p, _ in rows]
    )
    assert all(g.correct for g in grades), "parts may come in any order"


# Golds for which the rule of ``standard_latex`` writes no answer that grades correct, with the
# reason. None is a number-format problem (e-notation, %, numpy forms are all matched); these
# are symbolic answers where sympy's printout of math-verify's reading is another expression.
UNMATCHED: dict[tuple[str, str], str] = {
    ("minerva_math", "27"): "equation with \\odot subscripts: math-verify reads the gold as text",
    ("minerva_math", "62"): "ODE with y^{\\prime}: the printout writes y^{prime}, another symbol",
    ("minerva_math", "72"): "\\dot{x}_{0}: the printout writes dot{x}_0, another symbol",
    ("minerva_math", "73"): "\\ln 2 + i\\pi/3: printed as \\log(2) + \\pi i/3, read differently",
    ("minerva_math", "89"): "ODE with x^{\\prime}: the printout writes x^{prime}",
    ("minerva_math", "109"): "\\Delta is read as the symbol delta (case lost) and \\ln as \\log",
    ("minerva_math", "125"): "I d\\omega/dt: I and T read as i and t; derivative printout differs",
    (
        "minerva_math",
        "138",
    ): "\\gamma^{2} is read as the Gamma function (printout \\tilde{\\infty})",
    ("minerva_math", "139"): "\\lambda_{\\text {red}}: printout writes lambda_..., another symbol",
    ("minerva_math", "245"): "MR=SRMC: letters read as a product of lower-case symbols",
    ("minerva_math", "268"): "E_{1}, E_{2} sum: math-verify reads the gold as text",
    ("minerva_math", "269"): "E_{1},E_{2}: math-verify reads the gold as text",
    ("olympiadbench", "1965"): "prose gold (f(x)=ax+b, where b is ... with \\mho(a)=0): no value",
    ("olympiadbench", "1760"): "angle names \\angle BEA_1: printout is a symbol product",
    ("olympiadbench", "1775"): "\\lfloor\\log_2 n\\rfloor: printout drops the base 2",
    ("olympiadbench", "1782"): "m_{\\max}=...: math-verify reads the gold as text",
    ("olympiadbench", "2045"): "t(0,4]: math-verify reads the gold as text",
    ("olympiadbench", "2501"): "x = four solution families: the printed set is read differently",
}


def _raw_parts(name: str, row: dict) -> list[str]:
    """The upstream gold of a row as it is stored (before any normaliser), split in parts."""
    if name == "olympiadbench":
        items = [p for item in row["final_answer"] for p in re.split(r"\$\s*,\s*\$", item)]
        return [p for p in items if p.replace("$", "").strip()]
    if name == "minerva_math":
        return [last_boxed(row["solution"])]
    value = row["answer"]
    return [str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)]


def _standard_answer(task: tuple[str, dict]) -> str:
    """The rule's answer for one row (in a pool worker)."""
    name, row = task
    parts = _raw_parts(name, row)
    return standard_latex_parts(parts) if name == "olympiadbench" else standard_latex(parts[0])


@pytest.mark.slow
def test_a_standard_latex_answer_matches_every_gold(benchmarks_dir: Path, verifier: MathVerifier):
    """For every gold of the six paper benchmarks, its value written in standard LaTeX by a
    rule (``standard_latex``, from the upstream text, not the normalised gold) is graded
    correct through ``MathVerifier.grade_many``; the exceptions are listed with reasons."""
    unmatched, matched_exceptions = {}, []
    for name in PAPER_BENCHMARKS:
        problems = load_benchmark(name, benchmarks_dir)
        rows = read_rows(local_path(get_spec(name), benchmarks_dir))
        with multiprocessing.get_context("fork").Pool(2) as pool:  # ~20 ms per math-verify parse
            answers = pool.map(_standard_answer, [(name, r) for r in rows], chunksize=16)
        grades = verifier.grade_many(
            [f"\\boxed{{{a}}}" for a in answers], [p.answer for p in problems]
        )
        for problem, answer, grade in zip(problems, answers, grades, strict=True):
            key = (name, problem.id)
            if not grade.correct and key not in UNMATCHED:
                unmatched[key] = (problem.answer, answer)
            if grade.correct and key in UNMATCHED:
                matched_exceptions.append(key)
    assert not unmatched, f"golds no standard answer matches: {unmatched}"
    assert not matched_exceptions, f"listed as unmatched but matched now: {matched_exceptions}"
