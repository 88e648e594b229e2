"""Gold answers out of answer fields, in the formats public sets write them.

One option, ``answer_extraction`` (held-out files: ``python -m sfpo_lab.eval file=...``;
training files: ``data.answer_extraction``), with these spellings:

=================  =========================================================================
``none``           the field as is (also ``null``)
``last_boxed``     the content of the last ``\\boxed{...}`` (MATH / Minerva solutions)
``after:<marker>`` the text after the LAST ``<marker>``, up to the end of that line
                   (GSM8K: ``after:####`` on ``"... so 18 in all.\\n#### 18"`` -> ``18``)
``regex:<pat>``    the first group of the LAST match of ``<pat>`` (Python ``re``; the pattern
                   must have a group), e.g. ``regex:answer is (.+)``
``last_number``    the last number in the text (``"... The answer is 18."`` -> ``18``), with
                   what makes it another number kept on it: a percent sign (``50%``), an
                   exponent (``10^{3}``, ``2^10``, ``4.5 \\times 10^{33}``, ``4.5e33``)
=================  =========================================================================

What a format extracts is then written the way the benchmarks' graders compare numbers
(:func:`normalize_number`; ``none`` keeps the field exactly, so training golds of existing
configs never change): a plain number loses its thousands
separators (``1,000`` -> ``1000``), a trailing period, a currency sign (``$18``, ``\\$18``)
and one trailing unit word of :data:`UNIT_WORDS` (``18 dollars`` -> ``18``). Anything that is
not a plain number (``\\frac{1}{2}``, ``1, 2``, ``x = 3``, ``50%``) is left as is.

Everything here is a pure function; a row with nothing to extract gives ``None`` and the
caller names the file, row and option (:mod:`sfpo_lab.data.sources`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sfpo_lab.rewards.extract import last_boxed

EXTRACTIONS = ("none", "last_boxed", "after:<marker>", "regex:<pattern>", "last_number")
"""The spellings of ``answer_extraction`` (``<...>`` is the user's text)."""

_UNITS = (
    "dollars dollar cents cent euros euro pounds yuan meters meter metres metre cm mm km "
    "miles mile feet foot ft inches inch yards yard kg grams gram kilograms lbs lb "
    "liters liter litres litre ml gallons gallon hours hour hrs minutes minute mins "
    "seconds second days day weeks week months month years year degrees units"
)
UNIT_WORDS = frozenset(_UNITS.split())
"""Unit words dropped after a plain number (``18 dollars`` -> ``18``): whole words only, none
that could be a variable (no single letters) and no ``percent`` / ``%`` (50 or 0.5: ambiguous,
kept as written)."""

# 1,000 | 1,000.5 | 18 | 18.5 | .5, with an optional sign
_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
# what a number keeps in last_number: e-notation, "x 10^k" or "^k", then a percent sign; so
# "10^{3} ways" is 10^{3} (not the exponent 3) and "50%." is 50% (docs/eval.md: kept as written)
_POWER = r"\s*\^\s*(?:\{\s*[-+]?\d+\s*\}|[-+]?\d+)"
_SUFFIX = rf"(?:[eE][-+]?\d+)?(?:\s*(?:\\times|\\cdot|×)\s*10{_POWER}|{_POWER})?(?:\s*\\?%)?"
_LAST_NUMBER = re.compile(rf"(?<![\w.]){_NUMBER}(?![\d]){_SUFFIX}")
_PLAIN = re.compile(
    rf"^(?P<sign>[-+]?)\s*(?:\\?\$)?\s*(?P<num>{_NUMBER.removeprefix('[-+]?')})\.?"
    r"(?:\s*(?P<unit>[A-Za-z]+)\.?)?$"
)


@dataclass(frozen=True)
class AnswerExtraction:
    """A parsed ``answer_extraction`` setting.

    Attributes:
        kind: ``none`` | ``last_boxed`` | ``after`` | ``regex`` | ``last_number``.
        arg: the marker (``after``) or the pattern (``regex``); ``None`` otherwise.
        spec: the spelling it was parsed from (for messages).
    """

    kind: str
    arg: str | None = None
    spec: str = "none"


def parse_extraction(spec: str | None) -> AnswerExtraction:
    """Parse an ``answer_extraction`` spelling (``None`` means ``none``).

    Raises:
        ValueError: an unknown spelling, an empty marker or pattern, a pattern that does not
            compile or has no group; the message names the setting and the allowed spellings.
    """
    if spec is None or spec == "none":
        return AnswerExtraction("none")
    if not isinstance(spec, str):
        raise ValueError(f"answer_extraction={spec!r}: expected text, one of {EXTRACTIONS}")
    if spec in ("last_boxed", "last_number"):
        return AnswerExtraction(spec, spec=spec)
    kind, sep, arg = spec.partition(":")
    if sep and kind == "after":
        if not arg:
            raise ValueError(f"answer_extraction={spec!r}: empty marker; e.g. 'after:####'")
        return AnswerExtraction("after", arg, spec)
    if sep and kind == "regex":
        try:
            groups = re.compile(arg).groups
        except re.error as e:
            raise ValueError(f"answer_extraction={spec!r}: bad regular expression ({e})") from None
        if not arg or groups < 1:
            raise ValueError(
                f"answer_extraction={spec!r}: the pattern needs a group around the answer, "
                "e.g. 'regex:answer is (.+)'"
            )
        return AnswerExtraction("regex", arg, spec)
    raise ValueError(f"answer_extraction={spec!r}: unknown; use one of {' | '.join(EXTRACTIONS)}")


def extract_answer(text: str, how: AnswerExtraction) -> str | None:
    """The gold that ``how`` marks in ``text``, number-normalised (``none``: ``text`` as is);
    ``None`` when it finds none (no box, no marker, no match, no number, only whitespace)."""
    if how.kind == "none":
        return text if text.strip() else None
    if how.kind == "last_boxed":
        found: str | None = last_boxed(text)
    elif how.kind == "after":
        found = after_marker(text, str(how.arg))
    elif how.kind == "regex":
        found = last_match_group(text, str(how.arg))
    elif how.kind == "last_number":
        found = last_number(text)
    else:
        raise ValueError(f"answer_extraction kind {how.kind!r}: use parse_extraction")
    if found is None or not found.strip():
        return None
    return normalize_number(found)


def after_marker(text: str, marker: str) -> str | None:
    """The text after the last ``marker``, to the end of that line, stripped.

    >>> after_marker("3 + 15 = 18 apples.\\n#### 18", "####")
    '18'
    """
    start = text.rfind(marker)
    if start < 0:
        return None
    return text[start + len(marker) :].split("\n", 1)[0].strip()


def last_match_group(text: str, pattern: str) -> str | None:
    """Group 1 of the last match of ``pattern`` in ``text`` (``None``: no match / empty group)."""
    last = None
    for last in re.finditer(pattern, text):  # noqa: B007 (the last one is wanted)
        pass
    return None if last is None or last.group(1) is None else last.group(1).strip()


def last_number(text: str) -> str | None:
    """The last number in ``text`` (sign, thousands separators and decimals kept as written),
    with its percent sign or exponent (``50%``, ``10^{3}``, ``4.5 \\times 10^{33}``).

    >>> last_number("She pays $1,250 for 3 of them. The answer is 1,250.")
    '1,250'
    >>> last_number("The answer is 50%."), last_number("There are 10^{3} ways.")
    ('50%', '10^{3}')
    """
    found = _LAST_NUMBER.findall(text)
    return found[-1] if found else None


def normalize_number(text: str) -> str:
    """A plain number written as graders compare it; any other text only stripped.

    ``" 1,000 "`` -> ``"1000"``, ``"18."`` -> ``"18"``, ``"$18"`` / ``"\\$18"`` -> ``"18"``,
    ``"-3.5 dollars"`` -> ``"-3.5"``; ``"1, 2"``, ``"\\frac{1}{2}"``, ``"18 apples"`` unchanged
    (an unknown word is not a unit we can drop without guessing).
    """
    text = text.strip()
    match = _PLAIN.match(text)
    if match is None:
        return text
    unit = match.group("unit")
    if unit is not None and unit.lower() not in UNIT_WORDS:
        return text
    number = match.group("num").replace(",", "")
    return f"{'-' if match.group('sign') == '-' else ''}{number}"
