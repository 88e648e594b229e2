"""Gold answers every grader can read: normalisers applied once, when a benchmark loads.

Upstream golds come in several dialects. math-verify reads plain LaTeX; the rest it misreads
without a word (``4.5e33`` is 4.5 * e * 33, ``-1./3`` is -1, ``np.arcsin(10/13)`` is a string
that only the identical string matches), so a right answer in standard LaTeX would be graded
wrong. :func:`standardize_gold` rewrites those forms to LaTeX:

- e-notation: ``4.5e33`` -> ``4.5 \\times 10^{33}`` (Minerva: 58 of 272 golds);
- a bare ``%`` -> ``\\%`` (OlympiadBench ``62.5%``);
- numpy-style floats with a bare point: ``-1./3`` -> ``-1/3`` (Minerva);
- ``np.`` / ``math.`` functions and constants: ``np.arcsin(10/13)`` -> ``\\arcsin(10/13)``,
  ``np.sqrt(2)`` -> ``\\sqrt{2}``, ``np.pi`` -> ``\\pi``; ``np.log`` is the natural log;
- trailing sentence punctuation: ``(-\\infty, 0) \\cup\\{1\\}.`` -> without the period.

Benchmark-specific field handling (Minerva's last box, OlympiadBench's answer list, AMC's
floats) is here too; :mod:`sfpo_lab.eval.benchmarks` maps each benchmark to one of these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from sfpo_lab.rewards.extract import last_boxed

Row = Mapping[str, Any]

_INTEGRAL_FLOAT = re.compile(r"^([+-]?\d+)\.0*$")
_DOLLAR_SEPARATOR = re.compile(r"\$\s*,\s*\$")
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
# JSON escapes that ate a LaTeX backslash upstream: "\frac" -> form feed + "rac" (aime25).
_EATEN_ESCAPES = {"\x07": "\\a", "\x08": "\\b", "\x0b": "\\v", "\x0c": "\\f"}
_EATEN_TAB_OR_CR = re.compile(r"[\t\r](?=[a-zA-Z])")

_E_NOTATION = re.compile(r"(?<![\w.\\])(\d+\.\d*|\.\d+|\d+)[eE]([+-]?\d+)(?![\w.])")
_BARE_PERCENT = re.compile(r"(?<!\\)%")
_BARE_POINT = re.compile(r"(?<![\w.])(\d+)\.(?![\w.])")
_TRAILING_PUNCT = re.compile(r"(?<!\\)[.,;]+\s*$")
_NUMPY_NAME = re.compile(r"\b(?:np|numpy|math)\.([a-z0-9]+)\b")
_NUMPY_LATEX = {
    "arcsin": "\\arcsin",
    "arccos": "\\arccos",
    "arctan": "\\arctan",
    "sin": "\\sin",
    "cos": "\\cos",
    "tan": "\\tan",
    "exp": "\\exp",
    "log": "\\ln",
    "log10": "\\log_{10}",
    "pi": "\\pi",
    "e": "e",
}


def _e_notation(match: re.Match) -> str:
    mantissa = match.group(1).rstrip(".") or "0"
    return f"{mantissa} \\times 10^{{{int(match.group(2))}}}"


def _numpy_sqrt(text: str) -> str:
    """``np.sqrt(x)`` -> ``\\sqrt{x}`` (parentheses matched; an unbalanced call is kept)."""
    while (start := text.find("np.sqrt(")) >= 0:
        depth, open_at = 0, start + len("np.sqrt")
        for i in range(open_at, len(text)):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                text = f"{text[:start]}\\sqrt{{{text[open_at + 1 : i]}}}{text[i + 1 :]}"
                break
        else:
            return text
    return text


def _numpy_name(match: re.Match) -> str:
    return _NUMPY_LATEX.get(match.group(1), match.group(0))


def standardize_gold(text: str) -> str:
    """Rewrite non-LaTeX number and function forms of a gold to LaTeX (see module doc).

    >>> standardize_gold("4.5e33"), standardize_gold("-1./3"), standardize_gold("62.5%")
    ('4.5 \\\\times 10^{33}', '-1/3', '62.5\\\\%')
    """
    text = _TRAILING_PUNCT.sub("", text.strip())
    text = _E_NOTATION.sub(_e_notation, text)
    text = _BARE_POINT.sub(r"\1", text)
    text = _BARE_PERCENT.sub(r"\\%", text)
    return _NUMPY_NAME.sub(_numpy_name, _numpy_sqrt(text))


def normalize_gold(value: Any) -> str:
    """Normalise a scalar gold answer to the string form grading expects.

    Integral floats become integers (``27.0`` -> ``"27"``, also for the string ``"27.0"``),
    surrounding whitespace and ``$`` are stripped, then :func:`standardize_gold` applies.

    Args:
        value: the raw answer (str, int or float).

    Returns:
        The normalised answer; ``""`` for ``None``.
    """
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip().strip("$").strip()
    match = _INTEGRAL_FLOAT.match(text)
    return match.group(1) if match else standardize_gold(text)


def join_answer_parts(final_answer: Any) -> str:
    """Join an OlympiadBench ``final_answer`` into one gold that needs every part.

    The field is a list of strings, and a single string may itself hold several
    ``$``-delimited parts (``"$69$,$84$"``). All parts are kept (each standardised) and joined
    by ``", "``; every ``$`` is dropped (some rows carry stray ones, e.g. ``"$221,$8$"``).

    Args:
        final_answer: a list of answer strings, or one string.

    Returns:
        The joined gold, e.g. ``"69, 84"``.
    """
    items = [final_answer] if isinstance(final_answer, str) else list(final_answer or [])
    parts = []
    for item in items:
        for part in _DOLLAR_SEPARATOR.split(str(item)):
            part = standardize_gold(part.replace("$", ""))
            if part:
                parts.append(part)
    return ", ".join(parts)


def repair_eaten_escapes(text: str) -> str:
    r"""Restore LaTeX backslashes that a JSON round trip turned into control characters.

    aime25 upstream holds ``\x0crac`` for ``\frac`` and ``\triangle`` as a tab + ``riangle``.
    Newlines are left alone: they are mostly real.
    """
    for char, escape in _EATEN_ESCAPES.items():
        text = text.replace(char, escape)
    return _EATEN_TAB_OR_CR.sub(lambda m: "\\t" if m.group(0) == "\t" else "\\r", text)


def first_present(row: Row, fields: Sequence[str]) -> Any:
    """The value of the first field in ``fields`` that is present and non-empty in ``row``."""
    for field in fields:
        value = row.get(field)
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return value
    return None


def _ground_truth(row: Row) -> Any:
    """``reward_model.ground_truth`` of a verl-layout row, or ``None``."""
    reward_model = row.get("reward_model")
    if isinstance(reward_model, Mapping):
        return reward_model.get("ground_truth")
    return None


def gold_from_answer(row: Row) -> str:
    """Default gold: verl ``reward_model.ground_truth``, else ``answer``, else the last box of
    ``solution`` (hub copies of MATH carry only the solution)."""
    value = _ground_truth(row)
    if value is None:
        value = first_present(row, ("answer", "Answer"))
    if value is None and isinstance(row.get("solution"), str):
        value = last_boxed(row["solution"])
    return normalize_gold(value)


def gold_from_solution_box(row: Row) -> str:
    """Minerva gold: the last ``\\boxed{}`` of ``solution``; hub copies that ship only an
    extracted ``answer`` fall back to it."""
    solution = row.get("solution")
    boxed = last_boxed(solution) if isinstance(solution, str) else None
    if boxed is not None:
        # Math-mode toggles inside a box are noise: "x_{0} \cos (\omega t)+$ $\dot{x}_{0} ...".
        boxed = _UNESCAPED_DOLLAR.sub("", boxed)
    return normalize_gold(boxed if boxed is not None else first_present(row, ("answer",)))


def gold_from_final_answer(row: Row) -> str:
    """OlympiadBench gold: every part of ``final_answer`` (see ``join_answer_parts``)."""
    if row.get("final_answer") is None:
        return gold_from_answer(row)
    return join_answer_parts(row["final_answer"])
