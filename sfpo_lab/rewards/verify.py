"""Grading one completion against a gold answer with math-verify.

The answer is taken from the completion and compared with the gold as the
:class:`~sfpo_lab.rewards.parsing.AnswerParsing` says (the authors' rules by default: both
wrapped in ``$...$``, ``verify(answer, gold)``). Any exception counts as wrong.

math-verify bounds its own work with ``signal.alarm`` (5 s per parse, 5 s per comparison),
which only works in a process's main thread, and turns a timeout into "not equal" with a
logged warning. Here such a timeout raises :class:`GradeTimeout` instead, so that the pool can
count it (:attr:`Grade.timed_out`); :class:`~sfpo_lab.rewards.pool.MathVerifier` adds a hard
per-answer timeout on top by grading in worker processes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from math_verify import parse, verify

from sfpo_lab.rewards.parsing import AUTHORS, AnswerParsing, extract_answer, get_answer_parsing

# latex2sympy2_extended logs a deprecation warning on *every* parse with math-verify's default
# normalisation config; at thousands of answers per iteration that floods the logs.
logging.getLogger("latex2sympy2_extended.math_normalization").setLevel(logging.ERROR)

MAX_ANSWER_CHARS = 1000
"""Answers longer than this are graded wrong without parsing (bounds sympy's work)."""

MAX_PARTS = 16
"""Multi-part answers with more comma-separated parts than this are graded wrong."""

_OPEN, _CLOSE = "([{", ")]}"


class GradeTimeout(Exception):
    """math-verify gave up on a parse or comparison (its own alarm); the verdict is unknown."""


class _TimeoutCounter(logging.Filter):
    """Counts (and swallows) math-verify's "Timeout during ..." warnings in this process."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Timeout during"):
            self.count += 1
            return False
        return True


_TIMEOUTS = _TimeoutCounter()
for _name in ("math_verify.grader", "math_verify.parser"):
    logging.getLogger(_name).addFilter(_TIMEOUTS)
    logging.getLogger(_name).setLevel(logging.WARNING)  # the filter only sees emitted records


@dataclass(frozen=True)
class Grade:
    """Outcome of grading one completion.

    Attributes:
        correct: the answer is mathematically equal to the gold.
        boxed: the completion holds an answer box (the authors' 0.1 format reward).
        pred: the extracted answer, or None when there is no box.
        timed_out: the comparison never finished (math-verify's alarm, the pool's per-answer
            or batch timeout, or a dead worker); ``correct`` is then False, as in the
            authors' code (math-verify returns False on its timeouts: 0.1 if boxed).
    """

    correct: bool
    boxed: bool
    pred: str | None
    timed_out: bool = False


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split ``text`` at ``sep`` outside any bracket pair; parts are stripped.

    >>> split_top_level("(1,2), 3")
    ['(1,2)', '3']
    """
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(depth - 1, 0)
        elif ch == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def _in_dollars(text: str) -> str:
    """``$text$`` as the authors' ``wrap_math_in_latex`` writes it (a present ``$`` is kept)."""
    text = text if text.startswith("$") else "$" + text
    return text if text.endswith("$") else text + "$"


def _parse(text: str) -> list:
    """math-verify's default parse of ``$text$``."""
    return parse(_in_dollars(text))


def _verified(answer: list, gold: list, parsing: AnswerParsing) -> bool:
    """math-verify equivalence in the order ``parsing`` names (``verify`` is asymmetric)."""
    if not answer or not gold:
        return False
    if parsing.verify_order == "answer_first":
        return bool(verify(answer, gold))
    return bool(verify(gold, answer))


def _all_parts_match(pred: str, gold: str, parsing: AnswerParsing) -> bool:
    """Every comma-separated gold part is matched by a distinct predicted part (any order)."""
    gold_parts, pred_parts = split_top_level(gold), split_top_level(pred)
    if len(gold_parts) < 2 or len(gold_parts) != len(pred_parts) or len(gold_parts) > MAX_PARTS:
        return False
    unused = [_parse(p) for p in pred_parts]
    for part in gold_parts:
        gold_parsed = _parse(part)
        hit = next((i for i, p in enumerate(unused) if _verified(p, gold_parsed, parsing)), None)
        if hit is None:
            return False
        unused.pop(hit)
    return True


def answers_match(pred: str, gold: str, parsing: str | AnswerParsing = AUTHORS) -> bool:
    """Whether an extracted answer equals the gold answer under ``parsing``.

    Raises:
        GradeTimeout: math-verify timed out on a parse or comparison and nothing matched.
        Exception: any other checker failure propagates; callers turn it into "wrong".
    """
    parsing = get_answer_parsing(parsing)
    pred = pred.strip()
    if not pred or len(pred) > MAX_ANSWER_CHARS or not gold.strip():
        return False
    timeouts_before = _TIMEOUTS.count
    match = _verified(_parse(pred), _parse(gold), parsing) or (
        parsing.parts_any_order and _all_parts_match(pred, gold, parsing)
    )
    if not match and _TIMEOUTS.count > timeouts_before:
        raise GradeTimeout(f"math-verify timed out grading {pred[:80]!r} against {gold[:80]!r}")
    return match


def grade(completion: str, gold: str, parsing: str | AnswerParsing = AUTHORS) -> Grade:
    """Grade ``completion`` against ``gold``; never raises (any error is a wrong answer).

    Call it from a main thread or a worker process (math-verify uses signal alarms).

    >>> grade(r"... so the answer is \\boxed{\\frac{1}{2}}", "0.5").correct
    True
    """
    pred = extract_answer(completion, parsing)
    if pred is None:
        return Grade(correct=False, boxed=False, pred=None)
    try:
        correct = answers_match(pred, gold, parsing)
    except GradeTimeout:
        return Grade(correct=False, boxed=True, pred=pred, timed_out=True)
    except Exception:  # any failure of the checker means "not verified"
        correct = False
    return Grade(correct=correct, boxed=True, pred=pred)
