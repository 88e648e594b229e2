"""Grading one completion against a gold answer with math-verify.

The prediction is the last ``\\boxed{}`` of the completion (see :mod:`.extract`), re-wrapped
in ``\\boxed{}`` for ``math_verify.parse`` (a bare ``\\sqrt{18}`` parses to nothing); the gold
is parsed both as ``\\boxed{gold}`` and as ``$gold$`` and either may match. Any exception
counts as wrong.

math-verify bounds its own work with ``signal.alarm`` (5 s per parse, 10 s per comparison),
which only works in a process's main thread; :class:`~sfpo_lab.rewards.pool.MathVerifier`
adds a hard per-answer timeout on top by grading in worker processes.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from math_verify import parse, verify

from sfpo_lab.rewards.extract import last_boxed

# latex2sympy2_extended logs a deprecation warning on *every* parse with math-verify's default
# normalisation config; at thousands of answers per iteration that floods the logs.
logging.getLogger("latex2sympy2_extended.math_normalization").setLevel(logging.ERROR)

MAX_ANSWER_CHARS = 1000
"""Boxed answers longer than this are graded wrong without parsing (bounds sympy's work)."""

MAX_PARTS = 16
"""Multi-part answers with more comma-separated parts than this are graded wrong."""

_DOLLAR = re.compile(r"(?<!\\)\$")
_OPEN, _CLOSE = "([{", ")]}"


@dataclass(frozen=True)
class Grade:
    """Outcome of grading one completion.

    Attributes:
        correct: the boxed answer is mathematically equal to the gold.
        boxed: the completion holds a terminated ``\\boxed{}`` (the authors' 0.1 format reward).
        pred: the boxed content, or None when there is no box.
    """

    correct: bool
    boxed: bool
    pred: str | None


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


def _parse_pred(pred: str) -> list:
    """math-verify parse of a predicted answer, wrapped in ``\\boxed{}``."""
    return parse("\\boxed{" + pred + "}")


def _parse_gold(gold: str) -> list[list]:
    """The gold parsed two ways: wrapped in ``\\boxed{}`` (keeps text answers such as
    ``\\text{Evelyn}``) and in ``$...$`` (drops units and ``\\%``, reads ``\\text{(A)}`` as A);
    a prediction matching either is correct. Empty parses are left out."""
    gold = _DOLLAR.sub("", gold).strip()
    parses = (parse("\\boxed{" + gold + "}"), parse("$" + gold + "$"))
    return [p for p in parses if p]


def _verified(pred_parsed: list, gold_parses: list[list]) -> bool:
    """math-verify equivalence (gold first: ``verify`` is asymmetric)."""
    return bool(pred_parsed) and any(verify(g, pred_parsed) for g in gold_parses)


def _all_parts_match(pred: str, gold: str) -> bool:
    """Every comma-separated gold part is matched by a distinct predicted part (any order)."""
    gold_parts, pred_parts = split_top_level(gold), split_top_level(pred)
    if len(gold_parts) < 2 or len(gold_parts) != len(pred_parts) or len(gold_parts) > MAX_PARTS:
        return False
    unused = [_parse_pred(p) for p in pred_parts]
    for part in gold_parts:
        gold_parses = _parse_gold(part)
        hit = next((i for i, p in enumerate(unused) if _verified(p, gold_parses)), None)
        if hit is None:
            return False
        unused.pop(hit)
    return True


def answers_match(pred: str, gold: str) -> bool:
    """Whether a predicted answer (boxed content) equals the gold answer.

    Multi-part golds (comma-joined, e.g. OlympiadBench multi-answer rows ``"69, 84"``) need all
    parts: math-verify compares them as sets first, then part by part in any order.
    Exceptions propagate; callers turn them into "wrong".
    """
    pred = pred.strip()
    if not pred or len(pred) > MAX_ANSWER_CHARS or not gold.strip():
        return False
    return _verified(_parse_pred(pred), _parse_gold(gold)) or _all_parts_match(pred, gold)


def grade(completion: str, gold: str) -> Grade:
    """Grade ``completion`` against ``gold``; never raises (any error is a wrong answer).

    Call it from a main thread or a worker process (math-verify uses signal alarms).

    >>> grade(r"... so the answer is \\boxed{\\frac{1}{2}}", "0.5").correct
    True
    """
    pred = last_boxed(completion)
    if pred is None:
        return Grade(correct=False, boxed=False, pred=None)
    try:
        correct = answers_match(pred, gold)
    except Exception:  # any failure of the checker means "not verified"
        correct = False
    return Grade(correct=correct, boxed=True, pred=pred)
