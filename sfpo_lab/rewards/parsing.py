"""How an answer is taken from a completion and compared with the gold: named settings.

The default, :data:`AUTHORS`, is what the SFPO release's reward does (its verl fork,
``verl/utils/reward_score/latex_math.py``, which every data source of their runs reaches):

- the answer is the content of the last ``\\boxed{...}``; if the completion holds ``\\boxed``
  followed by a space anywhere, the answer is instead the text after the last ``"\\boxed "``
  up to the next ``$`` (their brace-less rule); ``\\fbox{...}`` is no answer (their
  ``remove_boxed`` asserts a ``\\boxed{`` prefix, the assertion is caught: no answer);
- answer and gold are each wrapped in ``$...$`` and read by ``math_verify.parse`` with its
  default extraction (LaTeX + plain expressions), so ``8\\%``, ``90°`` and ``204.`` read as
  numbers and a unit in ``\\text{ cm}`` drops away;
- ``verify(parsed_answer, parsed_gold)``: the answer goes in math-verify's *gold* slot (their
  ``math_is_equivalent(gold_answer, pred_answer)`` is called as ``(answer, ground_truth)``).
  math-verify is asymmetric: this order accepts ``x \\le 0`` for the gold ``(-\\infty, 0]``
  and rejects ``(-\\infty, 0]`` for the gold ``x \\le 0``.

:data:`STRICT_BOX` keeps the project's earlier extraction choices (a brace-less ``\\boxed 5`` is
no box and earlier boxes still count, ``\\fbox`` counts like ``\\boxed``), math-verify's
documented argument order and an any-order part-by-part match for comma-joined golds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sfpo_lab.rewards.extract import MAX_BOX_CHARS, last_boxed, matching_brace

VerifyOrder = Literal["answer_first", "gold_first"]


@dataclass(frozen=True)
class AnswerParsing:
    """Answer extraction and comparison choices (defaults: the authors').

    Attributes:
        braceless_box: True (authors): a ``"\\boxed "`` (with a space) anywhere makes the text
            after the last one, up to the next ``$``, the answer, even after a later braced
            box. False: a box without braces is no box and the search goes on to the left.
        fbox: False (authors): ``\\fbox{}`` is no answer. True: it counts like ``\\boxed{}``.
        verify_order: ``"answer_first"`` (authors: ``verify(answer, gold)``) or
            ``"gold_first"`` (math-verify's documented ``verify(gold, answer)``).
        parts_any_order: False (authors). True: a comma-joined gold (``"69, 84"``) is also
            matched part by part, each gold part by a distinct answer part, in any order.
    """

    braceless_box: bool = True
    fbox: bool = False
    verify_order: VerifyOrder = "answer_first"
    parts_any_order: bool = False

    def __post_init__(self) -> None:
        if self.verify_order not in ("answer_first", "gold_first"):
            raise ValueError(
                f"AnswerParsing.verify_order={self.verify_order!r}; "
                "allowed: 'answer_first' (authors) or 'gold_first'"
            )
        if self.braceless_box and self.fbox:
            raise ValueError(
                "AnswerParsing(braceless_box=True, fbox=True) is not available: the authors' "
                "brace-less rule ignores \\fbox; use fbox=False with braceless_box=True"
            )


AUTHORS = AnswerParsing()
STRICT_BOX = AnswerParsing(
    braceless_box=False, fbox=True, verify_order="gold_first", parts_any_order=True
)

ANSWER_PARSINGS: dict[str, AnswerParsing] = {"authors": AUTHORS, "strict_box": STRICT_BOX}
"""Named presets; ``rollout.answer_parsing`` picks one."""


def get_answer_parsing(parsing: str | AnswerParsing) -> AnswerParsing:
    """A preset by name (the error lists the valid names), or ``parsing`` itself."""
    if isinstance(parsing, AnswerParsing):
        return parsing
    try:
        return ANSWER_PARSINGS[parsing]
    except KeyError:
        raise ValueError(
            f"unknown answer parsing {parsing!r}; valid: {sorted(ANSWER_PARSINGS)}"
        ) from None


def authors_last_boxed(text: str, max_chars: int = MAX_BOX_CHARS) -> str | None:
    """The answer the authors' ``extract_solution`` takes from ``text`` (linear time).

    Returns the text after the last ``"\\boxed "`` up to the next ``$`` when ``"\\boxed "``
    occurs anywhere; else the braced content of the last ``\\boxed`` when a ``{`` follows it
    directly and is closed (None otherwise: ``\\boxedx{2}``, ``\\boxed{2``). Contents longer
    than ``max_chars`` count as no answer (the authors have no cap; see docs/grading.md).

    >>> authors_last_boxed(r"\\boxed{3} then \\boxed 5$ done")
    '5'
    """
    spaced = text.rfind("\\boxed ")
    if spaced >= 0:
        tail_start = spaced + len("\\boxed ")
        end = text.find("$", tail_start)
        answer = text[tail_start:] if end < 0 else text[tail_start:end]
        return answer if len(answer) <= max_chars else None
    start = text.rfind("\\boxed")
    brace = start + len("\\boxed")
    if start < 0 or text[brace : brace + 1] != "{":
        return None
    close = matching_brace(text, brace, max_chars)
    return None if close is None else text[brace + 1 : close]


def extract_answer(text: str, parsing: str | AnswerParsing = AUTHORS) -> str | None:
    """The answer string of a completion under ``parsing`` (None: no box, format reward 0)."""
    parsing = get_answer_parsing(parsing)
    if parsing.braceless_box:
        return authors_last_boxed(text)
    return last_boxed(text, commands=("\\boxed", "\\fbox") if parsing.fbox else ("\\boxed",))
