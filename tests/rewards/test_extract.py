"""``last_boxed`` / the authors' extraction: hand-checked cases, linear cost on hostile strings."""

from __future__ import annotations

import sys

import pytest

from sfpo_lab.rewards.extract import MAX_BOX_CHARS, last_boxed
from sfpo_lab.rewards.parsing import authors_last_boxed, extract_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"The answer is \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\sqrt{\frac{a}{b^{2}}}}", r"\sqrt{\frac{a}{b^{2}}}"),
        (r"first \boxed{1} then \boxed{2} finally \boxed{3}", "3"),
        (r"\fbox{7}", "7"),
        (r"\boxed{1} and then \fbox{8}", "8"),
        (r"\fbox{8} and then \boxed{9}", "9"),
        (r"\boxed {5}", "5"),
        (r"\boxed{}", ""),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{\boxed{4}}", "4"),
        (r"\boxed{3} then \boxed 5", "3"),  # a box without braces is skipped
        (r"\boxedx{2} \boxed{6}", "6"),
        ("no box here", None),
        ("", None),
        (r"\boxed{12", None),
        (r"\boxed{1} and an unterminated \boxed{2", None),
        (r"\boxed{a{b}", None),
        (r"\boxed{5}}}}", "5"),
        ("\\boxed{√2 ≈ 1.41}", "√2 ≈ 1.41"),
    ],
)
def test_last_boxed(text: str, expected: str | None):
    assert last_boxed(text) == expected


def test_contents_longer_than_the_cap_count_as_unterminated():
    assert last_boxed("\\boxed{" + "1" * MAX_BOX_CHARS + "}") == "1" * MAX_BOX_CHARS
    assert last_boxed("\\boxed{" + "1" * (MAX_BOX_CHARS + 1) + "}") is None
    assert last_boxed("\\boxed{123}", max_chars=2) is None


HOSTILE_FAMILIES = {
    "text-then-box": lambda n: "x" * n + "\\boxed{5}",
    "braces": lambda n: "{" * n,
    "deep-nesting": lambda n: "\\boxed{" + "{" * n + "}" * n + "}",
    "open-boxes": lambda n: "\\boxed{" * n,
    "braceless": lambda n: "\\boxed 1" * n,
    "boxes": lambda n: "\\boxed{1}" * n,
    "fboxes-then-boxedx": lambda n: "\\fbox{1}" * n + "\\boxedx" * n,
    "spaced-box-then-dollars": lambda n: "\\boxed " + "1" * n + "$" * n,
}


def _steps(fn, text: str) -> int:
    """Python and C function calls made while ``fn(text)`` runs (a deterministic work count:
    every brace the walk visits costs a ``match.group()`` call)."""
    count = 0

    def profile(frame, event, arg) -> None:
        nonlocal count
        count += 1

    sys.setprofile(profile)
    try:
        fn(text)
    finally:
        sys.setprofile(None)
    return count


@pytest.mark.parametrize("fn", [last_boxed, authors_last_boxed, extract_answer])
@pytest.mark.parametrize("family", sorted(HOSTILE_FAMILIES))
def test_hostile_strings_cost_at_most_linear_steps(family: str, fn):
    """4x the input may cost at most ~4x the steps: a quadratic walk (re-scanning from each
    candidate box) would cost 16x. 1 MB inputs run too, for their results."""
    build = HOSTILE_FAMILIES[family]
    small, large = _steps(fn, build(2_000)), _steps(fn, build(8_000))
    assert large <= 4 * small + 100, (small, large)
    fn(build(250_000))  # finishes (no recursion, no blow-up)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"The answer is \boxed{42}.", "42"),
        (r"first \boxed{1} then \boxed{2}", "2"),
        (r"\boxed{3} then \boxed 5$ and more", "5"),
        (r"\boxed 7 is it", "7 is it"),  # up to the next $ or the end, as theirs
        (r"\boxed 5$ but later \boxed{6}", "5"),  # any "\boxed " wins over a later box
        (r"\fbox{7}", None),
        (r"\boxedx{2}", None),
        (r"\boxed{1} \boxedx{2}", None),
        (r"\boxed{12", None),
        (r"\boxed{a{b}c}", "a{b}c"),
        ("no box", None),
    ],
)
def test_authors_last_boxed(text: str, expected: str | None):
    assert authors_last_boxed(text) == expected
    assert extract_answer(text) == expected  # the default parsing is the authors'
