"""Loaders: the real verl parquet and benchmark files, field mapping, and error messages."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sfpo_lab.data.records import Problem
from sfpo_lab.data.sources import load_problems, read_rows
from sfpo_lab.data.templates import AUTHORS, template_parts

HEAD, TAIL = template_parts("authors")

# Row counts from ../shared/data/README.md. MATH train has 7,500 rows, two of which (5342 and
# 5344) ship an empty ground truth: they cannot be graded, so the loader skips them.
VERL_FILES = {
    "dapo_math_train.parquet": 17_917,
    "lighteval-math_train.parquet": 7_500 - 2,
    "lighteval-math_test.parquet": 5_000,
    "aime2024_test.parquet": 30,
    "amc_test.parquet": 83,
}


@pytest.fixture(scope="module")
def train_dir(shared_data: Path) -> Path:
    return shared_data / "train"


@pytest.fixture(scope="module")
def bench_dir(shared_data: Path) -> Path:
    return shared_data / "benchmarks"


@pytest.mark.parametrize(("name", "rows"), sorted(VERL_FILES.items()))
def test_verl_parquet_loads_with_the_template_stripped(train_dir: Path, name: str, rows: int):
    problems = load_problems(str(train_dir / name))
    assert len(problems) == rows
    assert len({p.id for p in problems}) == rows
    assert all(p.problem and p.answer and p.source == Path(name).stem for p in problems)
    assert not any(HEAD.strip() in p.problem or TAIL.strip() in p.problem for p in problems)


def test_verl_problem_equals_the_files_own_problem_column(train_dir: Path):
    path = train_dir / "lighteval-math_test.parquet"
    raw = read_rows(path)
    problems = load_problems(str(path))
    assert [p.problem for p in problems] == [r["problem"].strip() for r in raw]
    assert [p.answer for p in problems] == [r["reward_model"]["ground_truth"].strip() for r in raw]


def test_verl_fields_can_be_named_explicitly(train_dir: Path):
    path = str(train_dir / "aime2024_test.parquet")
    auto = load_problems(path)
    named = load_problems(path, problem_field="prompt", answer_field="reward_model.ground_truth")
    forced = load_problems(path, layout="verl", id_field="id")
    assert [p.problem for p in named] == [p.problem for p in auto] == [p.problem for p in forced]
    assert forced[0].id == "60" and auto[0].answer == "204"


def test_float_golds_become_integers(train_dir: Path, bench_dir: Path):
    assert load_problems(str(train_dir / "amc_test.parquet"))[0].answer == "142"
    assert load_problems(str(bench_dir / "amc23.jsonl"))[0].answer == "27"


def test_skipped_empty_golds_are_said_on_the_console_and_logged(
    train_dir: Path, caplog: pytest.LogCaptureFixture
):
    """A UserWarning (the console: under Hydra the logging root writes to train.log only)
    and a log record (train.log) name the skipped rows (issue 30, item 6)."""
    msg = "skipped 2 of 7500 rows with an empty gold answer (rows 5342, 5344)"
    with caplog.at_level(logging.INFO), pytest.warns(UserWarning) as seen:
        load_problems(str(train_dir / "lighteval-math_train.parquet"))
    assert [str(w.message) for w in seen if "skipped" in str(w.message)] == [
        f"{train_dir / 'lighteval-math_train.parquet'}: {msg}"
    ]
    assert msg in caplog.text


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_a_byte_that_is_not_utf8_is_named_by_file_line_and_offset(tmp_path: Path, suffix: str):
    """Issue 30, item 6: a decode error names the file, the line and the byte offset (it was
    Python's "can't decode byte 0xff in position N" of a read buffer, no file, no line)."""
    head = {
        ".jsonl": '{"problem": "1+1", "answer": "2"}\n{"problem": "2+2", "answer": "4"}\n',
        ".json": '[{"problem": "1+1", "answer": "2"},\n {"problem": "2+2", "answer": "4"},\n',
        ".csv": "problem,answer\n1+1,2\n",
    }[suffix]
    bad = {".jsonl": b'{"problem": "x\xff", "answer": "1"}\n', ".json": b'{"problem": "\xff"}]',
           ".csv": b"x\xff,1\n"}[suffix]  # fmt: skip
    path = tmp_path / f"rows{suffix}"
    path.write_bytes(head.encode() + bad)
    offset = len(head.encode()) + bad.index(b"\xff")
    line = head.count("\n") + 1
    with pytest.raises(ValueError) as info:
        load_problems(str(path))
    assert str(info.value) == (
        f"{path}: line {line}: byte offset {offset}: not UTF-8 (byte 0xff: invalid start "
        "byte); re-encode the file as UTF-8 or fix the row"
    )


def test_jsonl_benchmarks_by_field_mapping(bench_dir: Path):
    math500 = load_problems(str(bench_dir / "math500.jsonl"), id_field="unique_id", limit=3)
    assert len(math500) == 3
    assert math500[0] == Problem(
        id="test/precalculus/807.json",
        problem=math500[0].problem,
        answer=r"\left( 3, \frac{\pi}{2} \right)",
        source="math500",
    )
    olympiad = load_problems(
        str(bench_dir / "olympiadbench.jsonl"),
        problem_field="question",
        answer_field="final_answer",
    )
    assert len(olympiad) == 675
    answers = {p.answer for p in olympiad}
    assert "(1,8,19), (2,7,13), (4,5,7)" in answers  # '$...$' delimiters removed
    assert "69,84" in answers  # a multi-answer row: '$69$,$84$'
    minerva = load_problems(
        str(bench_dir / "minerva_math.jsonl"),
        answer_field="solution",
        answer_extraction="last_boxed",
    )
    assert len(minerva) == 272 and minerva[0].answer == "1.6"


def test_missing_field_names_field_file_and_available_fields(bench_dir: Path):
    path = str(bench_dir / "aime25.jsonl")
    with pytest.raises(ValueError) as err:
        load_problems(path, problem_field="question")
    message = str(err.value)
    assert "'question'" in message and "aime25.jsonl" in message
    assert "['answer', 'problem']" in message


def test_dotted_missing_field(train_dir: Path):
    with pytest.raises(ValueError, match=r"missing field 'reward_model.answer'.*available"):
        load_problems(
            str(train_dir / "amc_test.parquet"),
            layout="fields",
            problem_field="problem",
            answer_field="reward_model.answer",
        )


# --------------------------------------------------------------------------- synthetic files


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_malformed_json_line_is_named(tmp_path: Path):
    path = _write(
        tmp_path / "bad.jsonl",
        '{"problem": "1+1", "answer": "2"}\n\n{"problem": "2+2", "answer": 4}\n{"problem": oops}\n',
    )
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 4: malformed JSON"):
        read_rows(path)
    with pytest.raises(ValueError, match=r"line 1: expected a JSON object"):
        read_rows(_write(tmp_path / "list.jsonl", "[1, 2]\n"))


def test_json_array_and_json_lines_and_csv(tmp_path: Path):
    rows = [{"q": "1+1", "a": 2}, {"q": "2+3", "a": 5}]
    array = _write(tmp_path / "a.json", json.dumps(rows, indent=2))
    lines = _write(tmp_path / "b.json", "\n".join(json.dumps(r) for r in rows))
    wrapped = _write(tmp_path / "c.json", json.dumps({"data": rows}))
    table = _write(tmp_path / "d.csv", "q,a\n1+1,2\n2+3,5\n")
    for path in (array, lines, wrapped, table):
        problems = load_problems(str(path), problem_field="q", answer_field="a")
        assert [(p.problem, p.answer) for p in problems] == [("1+1", "2"), ("2+3", "5")]
        assert problems[1].id == f"{path.stem}-1"
    with pytest.raises(ValueError, match=r"b2\.json: line 3: malformed JSON"):
        read_rows(_write(tmp_path / "b2.json", '[\n{"q": 1},\n{"q": }\n]'))


def test_csv_with_a_ragged_row(tmp_path: Path):
    path = _write(tmp_path / "r.csv", "q,a\n1+1,2\n2+3\n")
    with pytest.raises(ValueError, match=r"r\.csv: line 3: expected 2 fields"):
        read_rows(path)


def test_parquet_with_nested_columns(tmp_path: Path):
    path = tmp_path / "v.parquet"
    table = pa.Table.from_pylist(
        [
            {
                "prompt": [
                    {"role": "user", "content": AUTHORS.replace("{problem}", "What is 3*9?")}
                ],
                "reward_model": {"ground_truth": "27", "style": "rule"},
            }
        ]
    )
    pq.write_table(table, path)
    (problem,) = load_problems(str(path), source="mine")
    assert problem == Problem(id="mine-0", problem="What is 3*9?", answer="27", source="mine")


def test_missing_empty_and_unsupported_files(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_rows(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="data file not found: .*gone.parquet"):
        load_problems(str(tmp_path / "gone.parquet"))
    with pytest.raises(FileNotFoundError, match="data/missing"):
        load_problems("./data/missing")
    with pytest.raises(ValueError, match="empty file"):
        read_rows(_write(tmp_path / "e.jsonl", "\n\n"))
    with pytest.raises(ValueError, match="empty file"):
        read_rows(_write(tmp_path / "e.csv", "q,a\n"))
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        read_rows(_write(tmp_path / "x.txt", "hi"))
    with pytest.raises(ValueError, match="not a readable parquet"):
        read_rows(_write(tmp_path / "x.parquet", "not parquet"))


def test_bad_values_and_options(tmp_path: Path):
    path = str(_write(tmp_path / "t.jsonl", '{"problem": {"x": 1}, "answer": "1"}\n'))
    with pytest.raises(ValueError, match="row 1: the problem must be text"):
        load_problems(path)
    path = str(_write(tmp_path / "u.jsonl", '{"problem": "p", "solution": "no box"}\n'))
    with pytest.raises(ValueError, match=r"row 1: answer_extraction='last_boxed' found no"):
        load_problems(path, answer_field="solution", answer_extraction="last_boxed")
    with pytest.raises(ValueError, match="layout='parquet'"):
        load_problems(path, layout="parquet")
    with pytest.raises(ValueError, match="answer_extraction='first_boxed'"):
        load_problems(path, answer_extraction="first_boxed")
    path = str(_write(tmp_path / "v.jsonl", '{"problem": "p", "answer": ""}\n'))
    with pytest.raises(ValueError, match="no row has a non-empty gold"):
        load_problems(path)


def test_local_dataset_folders_go_through_datasets(tmp_path: Path):
    datasets = pytest.importorskip("datasets")
    rows = {"question": ["1+1", "2+3", "4*4"], "answer": [2, 5, 16]}
    saved = tmp_path / "saved"
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(str(saved))
    problems = load_problems(str(saved), problem_field="question", split="test", limit=2)
    assert [(p.problem, p.answer, p.source) for p in problems] == [
        ("1+1", "2", "saved"),
        ("2+3", "5", "saved"),
    ]
    folder = tmp_path / "files"
    folder.mkdir()
    _write(folder / "train.jsonl", '{"question": "7-2", "answer": "5"}\n')
    (problem,) = load_problems(str(folder), problem_field="question")
    assert (problem.problem, problem.answer) == ("7-2", "5")
