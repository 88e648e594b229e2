"""Problems from files (jsonl / json / parquet / csv, including verl-format parquet) or the hub.

Errors name the file, the line or row, and the field. Nothing is downloaded unless the name is
neither an existing path nor shaped like one (then it is a hub dataset id, loaded with
``datasets.load_dataset``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sfpo_lab.data.answers import EXTRACTIONS, AnswerExtraction, extract_answer, parse_extraction
from sfpo_lab.data.records import Problem
from sfpo_lab.data.templates import strip_template

Row = dict[str, Any]

LAYOUTS = ("auto", "verl", "fields")
ANSWER_EXTRACTIONS = EXTRACTIONS  # spellings; see sfpo_lab/data/answers.py
VERL_PROBLEM_FIELD, VERL_ANSWER_FIELD = "prompt", "reward_model.ground_truth"

_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
log = logging.getLogger(__name__)


class EmptyAnswerError(ValueError):
    """A row whose gold answer is empty: it cannot be verified, so the row is skipped."""


# --------------------------------------------------------------------------- reading files


def _read_jsonl_lines(path: Path, lines: Iterator[str]) -> list[Row]:
    rows: list[Row] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {n}: malformed JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {n}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _not_utf8(
    path: Path, data: bytes, err: UnicodeDecodeError, start: int = 0, line: int = 1
) -> ValueError:
    """The error for bytes of ``path`` that are not UTF-8: file, line and byte offset
    (``data`` holds the file's bytes from byte ``start``, which begins line ``line``)."""
    at = start + err.start
    line += data[: err.start].count(b"\n")
    return ValueError(
        f"{path}: line {line}: byte offset {at}: not UTF-8 (byte 0x{data[err.start]:02x}: "
        f"{err.reason}); re-encode the file as UTF-8 or fix the row"
    )


def read_text(path: Path) -> str:
    """The file as UTF-8 text; a bad byte is a ``ValueError`` naming its line and offset."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, data, e) from None


def _utf8_lines(path: Path) -> Iterator[str]:
    """The lines of ``path`` decoded one by one (a huge file is not held twice)."""
    offset = 0
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, raw, e, offset, n) from None
            offset += len(raw)


def _read_jsonl(path: Path) -> list[Row]:
    return _read_jsonl_lines(path, _utf8_lines(path))


def _row_lines(name: str) -> list[int] | None:
    """1-based line of each row of a .jsonl file that has blank lines (rows skip them), so
    errors can name the line; ``None`` for other sources or when rows and lines coincide."""
    path = Path(name).expanduser()
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return None
    lines = [n for n, line in enumerate(_utf8_lines(path), 1) if line.strip()]
    return None if lines == list(range(1, len(lines) + 1)) else lines


def _read_json(path: Path) -> list[Row]:
    """A JSON array of objects, ``{"data": [...]}``, or (as many hub ``.json`` files) JSON lines."""
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # one object per line
            return _read_jsonl_lines(path, iter(text.splitlines()))
        raise ValueError(f"{path}: line {e.lineno}: malformed JSON ({e.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{path}: expected a JSON array of objects")
    return data


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()  # nested columns come back as dicts / lists
    except Exception as e:  # pyarrow raises several types for bad files
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None


def _read_csv(path: Path) -> list[Row]:
    rows: list[Row] = []
    with io.StringIO(read_text(path), newline="") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            if None in row or None in row.values():
                raise ValueError(
                    f"{path}: line {reader.line_num}: expected {len(reader.fieldnames or [])} "
                    f"fields {reader.fieldnames}"
                )
            rows.append(row)
    return rows


_READERS: dict[str, Callable[[Path], list[Row]]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".parquet": _read_parquet,
    ".csv": _read_csv,
}


def read_rows(path: str | Path) -> list[Row]:
    """Rows of a .jsonl / .json / .parquet / .csv file as dicts (nested columns as dicts).

    Raises:
        FileNotFoundError: naming the path when it does not exist.
        ValueError: naming the file (and line) for an unsupported type, malformed content or
            an empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use {sorted(_READERS)}")
    rows = reader(path)
    if not rows:
        raise ValueError(f"{path}: empty file (no rows)")
    return rows


# --------------------------------------------------------------------------- rows -> problems


def _warn_skipped(name: str, skipped: list[int], total: int) -> None:
    """Skipped rows, said on the console (a ``UserWarning``: under Hydra the ``logging`` root
    writes to ``train.log`` only) and in the log."""
    more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    msg = (
        f"{name}: skipped {len(skipped)} of {total} rows with an empty gold answer "
        f"(rows {', '.join(map(str, skipped[:10]))}{more})"
    )
    log.info(msg)
    warnings.warn(msg, UserWarning, stacklevel=3)


def _load_rows(name: str, split: str) -> tuple[list[Row], str]:
    """Rows and a default source name for a file, a local dataset dir or a hub dataset."""
    path = Path(name).expanduser()
    if path.is_file():
        return read_rows(path), path.stem
    if not path.exists() and (
        path.suffix.lower() in _READERS or name.startswith(("/", "./", "../", "~"))
    ):
        raise FileNotFoundError(f"data file not found: {name}")
    import datasets

    if path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "state.json")):
        data = datasets.load_from_disk(str(path))  # made by Dataset(Dict).save_to_disk
        data = data[split] if isinstance(data, datasets.DatasetDict) else data
    else:  # a local folder of data files, or a hub dataset id
        data = datasets.load_dataset(name, split=split)
    rows = list(data)
    if not rows:
        raise ValueError(f"{name} (split {split!r}): no rows")
    return rows, path.name if path.is_dir() else name


def _field(row: Row, dotted: str, where: str) -> Any:
    """``row[a][b]`` for ``dotted="a.b"``; the error names the field and what is available."""
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ValueError(f"{where}: missing field {dotted!r}; available fields: {sorted(row)}")
        value = value[part]
    return value


def _has_field(row: Row, dotted: str) -> bool:
    try:
        _field(row, dotted, "")
    except ValueError:
        return False
    return True


def is_verl_row(row: Row) -> bool:
    """verl layout: ``prompt`` is a chat list and ``reward_model.ground_truth`` exists."""
    prompt = row.get("prompt")
    return (
        isinstance(prompt, list)
        and all(isinstance(m, dict) and "content" in m for m in prompt)
        and _has_field(row, VERL_ANSWER_FIELD)
    )


def problem_text(value: Any, where: str) -> str:
    """Question text from a string or a chat prompt, without the authors' instruction text."""
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        users = [m for m in value if m.get("role") == "user"] or value
        value = users[-1].get("content")
    if not isinstance(value, str):
        raise ValueError(
            f"{where}: the problem must be text or a chat message list, got {type(value).__name__}"
        )
    text = strip_template(value, "authors").strip()
    if not text:
        raise ValueError(f"{where}: empty problem")
    return text


def normalize_answer(value: Any, where: str) -> str:
    """Gold answer as a string: integral floats as integers (``27.0`` -> ``"27"``), lists
    comma-joined, ``$`` math delimiters removed."""
    if isinstance(value, list):
        return ", ".join(normalize_answer(v, where) for v in value)
    if isinstance(value, bool) or value is None or isinstance(value, dict):
        raise ValueError(f"{where}: the answer must be text or a number, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = _UNESCAPED_DOLLAR.sub("", str(value)).strip()
    if not text:
        raise EmptyAnswerError(f"{where}: empty answer")
    return text


def _answer(value: Any, how: AnswerExtraction, field: str, where: str) -> str:
    """The row's gold: ``value`` (the answer field) through the extraction ``how``."""
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if how.kind != "none" and not numeric:  # a number field is its own answer
        found = extract_answer(value, how) if isinstance(value, str) else None
        if found is None:
            shown = value if not isinstance(value, str) or len(value) <= 80 else value[-80:]
            raise ValueError(
                f"{where}: answer_extraction={how.spec!r} found no answer in field {field!r} "
                f"({'ends' if shown is not value else 'is'} {shown!r}); choose another "
                f"answer_extraction ({' | '.join(EXTRACTIONS)}) or fix the row"
            )
        value = found
    return normalize_answer(value, where)


def _resolve_fields(
    row: Row, layout: str, problem_field: str, answer_field: str
) -> tuple[str, str]:
    """The (problem, answer) fields to read for ``layout`` (``auto`` inspects the first row)."""
    if layout == "auto":
        named = _has_field(row, problem_field) and _has_field(row, answer_field)
        layout = "verl" if is_verl_row(row) and not named else "fields"
    if layout == "verl":
        return VERL_PROBLEM_FIELD, VERL_ANSWER_FIELD
    return problem_field, answer_field


def _check_options(layout: str, answer_extraction: str | None, limit: int | None) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: use one of {LAYOUTS}")
    parse_extraction(answer_extraction)
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit}: use a positive number or None")


def load_problems(
    path_or_hub_name: str,
    *,
    problem_field: str = "problem",
    answer_field: str = "answer",
    id_field: str | None = None,
    split: str = "train",
    answer_extraction: str | None = None,
    layout: str = "auto",
    source: str | None = None,
    limit: int | None = None,
) -> list[Problem]:
    """Problems from a local file, a local dataset folder or a hub dataset.

    Args:
        path_or_hub_name: a .jsonl/.json/.parquet/.csv file, a folder (``save_to_disk`` output
            or data files), or a hub dataset id when no such path exists.
        problem_field: field with the question (dotted paths reach nested columns); a chat
            list (verl ``prompt``) gives its user turn, minus the authors' instruction text.
        answer_field: field with the gold (dotted, e.g. ``reward_model.ground_truth``).
        id_field: field with a stable id; ``"<source>-<row>"`` if None.
        split: hub / dataset-folder split.
        answer_extraction: how the gold is read from the answer field (None = ``none``, as
            is): ``last_boxed`` (Minerva's ``solution``), ``after:<marker>`` (GSM8K:
            ``after:####``), ``regex:<pattern>`` (its first group, last match) or
            ``last_number``; see :mod:`sfpo_lab.data.answers`. A row where it finds nothing
            is a ``ValueError`` naming the file, the row and the option.
        layout: ``"verl"`` reads ``prompt`` + ``reward_model.ground_truth``; ``"fields"`` the
            named fields; ``"auto"`` is verl when rows look verl-shaped and lack the named fields.
        source: ``Problem.source``; the file stem / dataset name if None.
        limit: keep the first ``limit`` rows.

    Rows whose gold is empty cannot be graded: they are skipped with a warning (the authors'
    MATH train file has two). Every other problem in a row is a ``ValueError`` naming it.
    """
    _check_options(layout, answer_extraction, limit)
    how = parse_extraction(answer_extraction)
    rows, name = _load_rows(path_or_hub_name, split)
    source = source or name
    problem_field, answer_field = _resolve_fields(rows[0], layout, problem_field, answer_field)
    out: list[Problem] = []
    skipped: list[int] = []
    lines = _row_lines(path_or_hub_name)
    for i, row in enumerate(rows[:limit]):
        where = f"{path_or_hub_name}: row {i + 1}{f' (line {lines[i]})' if lines else ''}"
        try:
            answer = _answer(_field(row, answer_field, where), how, answer_field, where)
        except EmptyAnswerError:
            skipped.append(i + 1)
            continue
        pid = str(_field(row, id_field, where)) if id_field else f"{source}-{i}"
        problem = problem_text(_field(row, problem_field, where), where)
        out.append(Problem(id=pid, problem=problem, answer=answer, source=source))
    if skipped:
        _warn_skipped(path_or_hub_name, skipped, len(rows[:limit]))
    if not out:
        raise ValueError(f"{path_or_hub_name}: no row has a non-empty gold answer")
    return out
