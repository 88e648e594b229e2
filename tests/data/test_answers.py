"""Answer extraction formats (``sfpo_lab.data.answers``) on answers written the way public sets
write them, number normalisation, the spelling parser, and the loader's error for a row where
nothing can be extracted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sfpo_lab.config import ConfigError, DataConfig
from sfpo_lab.data.answers import (
    AnswerExtraction,
    extract_answer,
    normalize_number,
    parse_extraction,
)
from sfpo_lab.data.sources import load_problems

# GSM8K test row 1 as the dataset writes it (worked solution, calculator notes, "#### n").
GSM8K = (
    "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
    "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer's market.\n#### 18"
)
GSM8K_THOUSANDS = "He pays 5 * 200 = $<<5*200=1000>>1000 in total.\n#### 1,000"
MATH_SOLUTION = (
    "Completing the square, $x^2+6x = (x+3)^2 - 9$, so the minimum is $\\boxed{-9}$ "
    "and the vertex is at $\\boxed{\\left( -3, -9 \\right)}$."
)
SENTENCE = "First, 7 + 11 = 18 apples in the basket. The answer is 18."
TRAILING = "There were 1,200 people, then 250 left, so 950"


def _ext(spec: str, text: str) -> str | None:
    return extract_answer(text, parse_extraction(spec))


@pytest.mark.parametrize(
    ("spec", "text", "gold"),
    [
        ("after:####", GSM8K, "18"),
        ("after:####", GSM8K_THOUSANDS, "1000"),
        ("after:####", "#### 5\nwrong\n#### 7\ntrailing line", "7"),  # the last marker's line
        ("last_boxed", MATH_SOLUTION, "\\left( -3, -9 \\right)"),
        ("last_boxed", "so $\\boxed{1,000}$.", "1000"),
        ("regex:answer is (.+)", SENTENCE, "18"),
        ("regex:answer is (\\S+)", "answer is 3; no, the answer is $1,250.", "1250"),
        ("last_number", SENTENCE, "18"),
        ("last_number", TRAILING, "950"),
        ("last_number", "She spent $1,250.50 on it.", "1250.50"),
        ("last_number", "The temperature fell to -4.", "-4"),
        ("none", " 1,000 ", " 1,000 "),  # as is: training golds of existing configs never change
    ],
)
def test_formats_extract_the_marked_gold(spec: str, text: str, gold: str):
    assert _ext(spec, text) == gold


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ("after:####", "a worked solution without the final line"),
        ("after:####", "ends with the marker and nothing after it ####"),
        ("last_boxed", "no box, just 18"),
        ("last_boxed", "an empty $\\boxed{}$"),
        ("regex:answer is (\\d+)", "The answer is eighteen."),
        ("last_number", "no digits here"),
        ("none", "   "),
    ],
)
def test_nothing_to_extract_is_none(spec: str, text: str):
    assert _ext(spec, text) is None


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("1,000", "1000"),
        ("1,234,567.5", "1234567.5"),
        ("18.", "18"),
        ("$18", "18"),
        ("\\$18.50", "18.50"),
        ("-3 dollars", "-3"),
        ("+7", "7"),
        ("12 hours.", "12"),
        ("18 apples", "18 apples"),  # not a known unit: kept
        ("50%", "50%"),  # a percentage is 50 or 0.5: kept
        ("1, 2", "1, 2"),  # a list, not a thousands separator
        ("2,50", "2,50"),
        ("\\frac{1}{2}", "\\frac{1}{2}"),
        ("x = 3", "x = 3"),
    ],
)
def test_normalize_number(raw: str, normalized: str):
    assert normalize_number(raw) == normalized


def test_parse_spellings():
    assert parse_extraction(None) == parse_extraction("none") == AnswerExtraction("none")
    assert parse_extraction("after:####") == AnswerExtraction("after", "####", "after:####")
    assert parse_extraction("after:a:b").arg == "a:b"  # only the first colon separates
    assert parse_extraction("regex:is (.+)").arg == "is (.+)"
    assert parse_extraction("last_number").kind == "last_number"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("boxed", "answer_extraction='boxed': unknown; use one of none | last_boxed | after:"),
        ("after", "answer_extraction='after': unknown"),
        ("after:", "answer_extraction='after:': empty marker"),
        ("regex:answer is \\d+", "answer_extraction='regex:answer is \\\\d+': the pattern needs"),
        ("regex:(", "answer_extraction='regex:(': bad regular expression"),
    ],
)
def test_bad_spellings_fail_naming_the_option(spec: str, message: str):
    with pytest.raises(ValueError) as info:
        parse_extraction(spec)
    assert str(info.value).startswith(message)


def test_data_config_checks_the_spelling():
    assert DataConfig(answer_extraction="after:####").answer_extraction == "after:####"
    with pytest.raises(ConfigError, match=r"^invalid config: data.answer_extraction='box'"):
        DataConfig(answer_extraction="box")


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_loader_extracts_each_row_and_names_a_bad_row(tmp_path: Path):
    rows = [
        {"question": "Janet's ducks?", "answer": GSM8K},
        {"question": "Total?", "answer": GSM8K_THOUSANDS},
        {"question": "Count?", "answer": 72},  # a number field is its own answer
    ]
    path = _jsonl(tmp_path / "gsm8k.jsonl", rows)
    problems = load_problems(path, problem_field="question", answer_extraction="after:####")
    assert [p.answer for p in problems] == ["18", "1000", "72"]
    bad = _jsonl(tmp_path / "bad.jsonl", [*rows, {"question": "q", "answer": "no final line"}])
    with pytest.raises(ValueError) as info:
        load_problems(bad, problem_field="question", answer_extraction="after:####")
    assert str(info.value).startswith(
        f"{bad}: row 4: answer_extraction='after:####' found no answer in field 'answer' "
        "(is 'no final line')"
    )
    gappy = tmp_path / "gappy.jsonl"  # blank lines: the error names the file's line too
    gappy.write_text(Path(bad).read_text().replace("\n", "\n\n", 1))
    with pytest.raises(ValueError, match=r"gappy.jsonl: row 4 \(line 5\): answer_extraction="):
        load_problems(str(gappy), problem_field="question", answer_extraction="after:####")


@pytest.mark.parametrize(
    ("text", "gold"),
    [
        ("The answer is 50%.", "50%"),  # percentages kept as written (docs/eval.md)
        ("so 8\\% of them", "8\\%"),
        ("There are 10^{3} ways.", "10^{3}"),  # the number, not its exponent 3
        ("10^{3} ways", "10^{3}"),
        ("2^10 subsets", "2^10"),
        ("about 4.5 \\times 10^{33} atoms", "4.5 \\times 10^{33}"),
        ("about 4.5e33 atoms", "4.5e33"),
        ("In all, 1,250", "1250"),  # a plain number still normalised
    ],
)
def test_last_number_keeps_what_makes_it_the_number(text: str, gold: str):
    """Item 11: a percent sign or an exponent stays on the last number."""
    assert _ext("last_number", text) == gold
