"""``last_boxed``: hand-checked extraction cases and linear cost on hostile strings."""

from __future__ import annotations

import time

import pytest

from sfpo_lab.rewards.extract import MAX_BOX_CHARS, last_boxed


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


@pytest.mark.parametrize(
    "text",
    [
        "x" * 1_000_000 + "\\boxed{5}",
        "{" * 1_000_000,
        "\\boxed{" + "{" * 500_000 + "}" * 500_000 + "}",
        "\\boxed{" * 100_000,
        "\\boxed 1" * 100_000,
        "\\boxed{1}" * 100_000,
    ],
    ids=[
        "1MB-then-box",
        "1MB-braces",
        "deep-nesting",
        "100k-open-boxes",
        "100k-braceless",
        "100k-boxes",
    ],
)
def test_hostile_strings_are_cheap(text: str):
    start = time.perf_counter()
    last_boxed(text)
    assert time.perf_counter() - start < 0.5
