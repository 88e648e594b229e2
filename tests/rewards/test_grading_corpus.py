"""The grading corpus (``grading_corpus.jsonl``, one hand-labelled row a line: benchmark, gold,
category, completion, label = is the final answer right, note): realistic answers for each
paper benchmark's answer forms, graded through the exact training / evaluation path
(``MathVerifier.grade_many`` in worker processes). Labels are a careful reader's verdict, never
a grader's output.

Figures and the disagreements by category are in docs/grading.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from math_verify import parse, verify
from math_verify.metric import math_metric
from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig

from sfpo_lab.rewards.pool import MathVerifier
from sfpo_lab.rewards.reward import compute_rewards

CORPUS = [
    json.loads(line)
    for line in (Path(__file__).parent / "grading_corpus.jsonl").read_text().splitlines()
]

DISAGREEMENTS: dict[int, str] = {
    66: "complex: i written before \\sqrt{3} (-8 - 8i\\sqrt{3}) is not read as the imaginary unit",
    114: "units: 16 mm for 1.6 cm is the same length; no grader converts units",
    256: "box syntax: \\fbox{27} is no answer in the authors' reward (their remove_boxed)",
}
"""Rows where the default (authors') grading differs from the hand label, with the reason."""

VERL_STYLE_DISAGREEMENTS = {
    10,
    66,
    84,
    93,
    102,
    111,
    114,
    146,
    147,
    148,
    152,
    153,
    155,
    160,
    203,
    213,
    242,
    244,
    248,
    251,
    254,
    256,
}
"""Rows where math-verify called as verl's ``math_verify.compute_score`` differs from the label."""


@pytest.fixture(scope="module")
def graded() -> Iterator[list]:
    with MathVerifier(num_workers=2, timeout_s=20.0) as pool:
        yield pool.grade_many([r["completion"] for r in CORPUS], [r["gold"] for r in CORPUS])


def test_corpus_is_labelled_and_covers_every_benchmark_and_category():
    assert len(CORPUS) >= 250
    assert [r["id"] for r in CORPUS] == list(range(len(CORPUS)))
    assert {r["benchmark"] for r in CORPUS} == {
        "math500",
        "aime24",
        "aime25",
        "amc23",
        "minerva_math",
        "olympiadbench",
    }
    categories = {r["category"] for r in CORPUS}
    for needed in (
        "units",
        "percent",
        "degrees",
        "choice",
        "interval",
        "multiple-boxes",
        "truncation",
        "near-miss",
        "equivalent",
        "text",
        "multi-part",
    ):
        assert needed in categories
    assert 0.2 < sum(not r["label"] for r in CORPUS) / len(CORPUS) < 0.8  # right and wrong


@pytest.mark.slow
def test_grading_agrees_with_the_labels_except_the_listed_rows(graded):
    disagree = {r["id"] for r, g in zip(CORPUS, graded, strict=True) if g.correct != r["label"]}
    assert disagree == set(DISAGREEMENTS)
    assert not any(g.timed_out for g in graded)


@pytest.mark.slow
def test_no_text_answer_matches_a_different_text_gold(graded):
    for row, grade in zip(CORPUS, graded, strict=True):
        if row["category"] in ("text", "choice") and not row["label"]:
            assert not grade.correct, row


def _authors_reference(completion: str, gold: str) -> float:
    """The authors' ``latex_math.compute_score`` (SFPO release, verl fork), re-written from
    its behaviour: brace-less ``"\\boxed "`` rule, then the last ``\\boxed`` walked brace by
    brace from the backslash, the content required to start with ``\\boxed{``; both strings
    wrapped in ``$``; ``verify(answer, gold)``; 1.0 / 0.1 / 0.0."""
    if "\\boxed " in completion:
        answer = completion.split("\\boxed ")[-1].split("$")[0]
    else:
        start, depth, close = completion.rfind("\\boxed"), 0, None
        if start < 0:
            return 0.0
        for i in range(start, len(completion)):
            depth += {"{": 1, "}": -1}.get(completion[i], 0)
            if completion[i] == "}" and depth == 0:
                close = i
                break
        if close is None or not completion[start:].startswith("\\boxed{"):
            return 0.0
        answer = completion[start + len("\\boxed{") : close]

    def dollars(s: str) -> str:
        s = s if s.startswith("$") else "$" + s
        return s if s.endswith("$") else s + "$"

    return 1.0 if verify(parse(dollars(answer)), parse(dollars(gold))) else 0.1


@pytest.mark.slow
def test_rewards_equal_the_authors_reward_on_every_row(graded):
    rewards, metrics = compute_rewards(graded, "authors")
    reference = [_authors_reference(r["completion"], r["gold"]) for r in CORPUS]
    assert rewards.tolist() == pytest.approx(reference)
    assert metrics["grade_timeouts"] == 0.0


def _verl_style(completion: str, gold: str) -> bool:
    """math-verify as verl's ``utils/reward_score/math_verify.py`` calls it: ``math_metric``
    with LaTeX gold extraction, expression + LaTeX answer extraction over the whole completion,
    the gold wrapped in ``\\boxed{}``; exceptions are 0."""
    metric = math_metric(
        gold_extraction_target=(LatexExtractionConfig(),),
        pred_extraction_target=(ExprExtractionConfig(), LatexExtractionConfig()),
    )
    try:
        return metric(["\\boxed{" + gold + "}"], [completion])[0] == 1.0
    except Exception:  # verl prints and scores 0
        return False


@pytest.mark.slow
def test_verl_style_agreement_is_as_documented():
    disagree = {r["id"] for r in CORPUS if _verl_style(r["completion"], r["gold"]) != r["label"]}
    assert disagree == VERL_STYLE_DISAGREEMENTS
