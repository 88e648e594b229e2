"""``grade``: math-verify on the last boxed answer, hand-checked equivalences and failures."""

from __future__ import annotations

import pytest

from sfpo_lab.rewards.verify import Grade, answers_match, grade, split_top_level


@pytest.mark.parametrize(
    ("completion", "gold"),
    [
        (r"so \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{0.5}", r"\frac{1}{2}"),
        (r"\boxed{\dfrac12}", "0.5"),
        (r"\boxed{3\sqrt{2}}", r"\sqrt{18}"),
        (r"\boxed{\sqrt{18}}", r"3\sqrt{2}"),
        (r"\boxed{(1, 2]}", "(1,2]"),
        (r"\boxed{[0,\infty)}", r"[0, \infty)"),
        (r"\boxed{27}", "27.0"),
        (r"\boxed{27.0}", "27"),
        (r"\boxed{50}", r"50\%"),
        (r"\boxed{50\%}", r"50\%"),
        (r"\boxed{-4}", "-4"),
        (r"\boxed{x=5}", "5"),
        (r"\boxed{90^\circ}", "90"),
        (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}"),
        (r"\boxed{\pi}", r"\pi"),
        (r"\boxed{1} then \boxed{2}", "2"),
        (r"\boxed{1000}", "$1000$"),
    ],
)
def test_correct(completion: str, gold: str):
    g = grade(completion, gold)
    assert g == Grade(correct=True, boxed=True, pred=g.pred)
    assert g.pred is not None


@pytest.mark.parametrize(
    ("completion", "gold"),
    [
        (r"\boxed{27.5}", "27"),
        (r"\boxed{28}", "27"),
        (r"\boxed{\frac{1}{3}}", r"\frac{1}{2}"),
        (r"\boxed{[1,2]}", "(1,2]"),
        (r"\boxed{1.5708}", r"\frac{\pi}{2}"),
        (r"\boxed{2} then \boxed{1}", "2"),  # only the last box counts
        (r"\boxed{}", "1"),
        (r"\boxed{Evelyn}", r"\text{Bob}"),
    ],
)
def test_wrong_but_boxed(completion: str, gold: str):
    g = grade(completion, gold)
    assert not g.correct and g.boxed


@pytest.mark.parametrize("completion", ["The answer is 27.", "", r"\boxed{27", "27 \\boxed"])
def test_no_box_is_wrong_even_if_the_number_is_right(completion: str):
    assert grade(completion, "27") == Grade(correct=False, boxed=False, pred=None)


def test_percentages_match_either_way_in_dollars():
    """Parsed in ``$...$`` (the authors' wrapping) ``\\%`` drops away on both sides."""
    assert grade(r"\boxed{50}", r"50\%").correct
    assert grade(r"\boxed{50\%}", "50").correct
    assert grade(r"\boxed{8\%}", r"8 \%").correct


@pytest.mark.parametrize(
    ("completion", "gold", "authors", "strict_box"),
    [
        (r"\fbox{12}", "12", Grade(False, False, None), Grade(True, True, "12")),
        (r"\boxed{3} then \boxed 5$.", "5", Grade(True, True, "5"), Grade(False, True, "3")),
        (r"\boxed{x \le 0}", r"(-\infty, 0]", Grade(True, True, r"x \le 0"), None),
        (r"\boxed{(-\infty, 0]}", r"x \le 0", None, Grade(True, True, r"(-\infty, 0]")),
        (r"\boxed{84, 69}", "69, 84", Grade(True, True, "84, 69"), Grade(True, True, "84, 69")),
        (r"\boxedx{2}", "2", Grade(False, False, None), Grade(False, False, None)),
        (r"\boxed{2} \boxedx{3}", "2", Grade(False, False, None), Grade(True, True, "2")),
    ],
)
def test_authors_and_strict_box_parsing(completion, gold, authors, strict_box):
    """Each choice of the two presets, hand-checked (None: that preset grades it wrong)."""
    for parsing, expected in (("authors", authors), ("strict_box", strict_box)):
        got = grade(completion, gold, parsing)
        assert got == expected if expected is not None else not got.correct, parsing


def test_multi_part_gold_needs_every_part_in_any_order():
    gold = "69, 84"  # OlympiadBench multi-answer row, joined by the loader
    assert grade(r"\boxed{84, 69}", gold).correct
    assert grade(r"\boxed{69,84}", gold).correct
    assert not grade(r"\boxed{69}", gold).correct
    assert not grade(r"\boxed{69, 84, 100}", gold).correct
    tuples = "(1,8,19), (2,7,13), (4,5,7)"
    assert grade(r"\boxed{(4,5,7), (1,8,19), (2,7,13)}", tuples).correct
    assert not grade(r"\boxed{(1,8,19), (2,7,13)}", tuples).correct


def test_empty_and_overlong_answers_never_match():
    assert not answers_match("", "1")
    assert not answers_match("1", "  ")
    assert not answers_match("1" + " " * 2000 + "+0", "1")


def test_checker_exceptions_are_wrong_not_raised():
    # A gold of the wrong type makes answers_match raise; grade() turns that into "wrong".
    with pytest.raises(AttributeError):
        answers_match("1", None)  # type: ignore[arg-type]
    assert grade(r"\boxed{1}", None) == Grade(correct=False, boxed=True, pred="1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("completion", "gold"),
    [(r"\boxed{A}", r"\text{(A)}"), (r"\boxed{5}", r"5\text{ cm}"), (r"\boxed{12}", r"12\%")],
)
def test_gold_parsed_in_dollars_too(completion: str, gold: str):
    """Golds are parsed both boxed and in $...$: units, \\% and lettered choices drop away."""
    assert grade(completion, gold).correct


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("1, 2", ["1", "2"]),
        ("(1,2), (3,4)", ["(1,2)", "(3,4)"]),
        ("[0,1), (2,3]", ["[0,1)", "(2,3]"]),
        (r"\{1,2\}", [r"\{1,2\}"]),
        ("5", ["5"]),
    ],
)
def test_split_top_level(text: str, parts: list[str]):
    assert split_top_level(text) == parts
