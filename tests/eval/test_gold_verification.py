"""Gold-vs-gold: every shipped benchmark's normalised gold, boxed, must verify against itself
through the reward's math-verify process pool. A failure here means a normaliser (or the
verifier) loses answers, and every accuracy on that benchmark is biased low by it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sfpo_lab.eval.benchmarks import BENCHMARKS, load_benchmark
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
