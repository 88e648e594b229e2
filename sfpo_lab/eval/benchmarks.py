"""Evaluation benchmarks: a registry of specs and loaders that return normalised ``Problem`` s.

Every benchmark loads from its local file in the original upstream layout (the files in
``../shared/data/benchmarks`` and the verl parquet eval sets in ``../shared/data/train``) or,
when no local copy exists, from its Hugging Face hub source. Gold answers are normalised here,
once, so that grading sees the same string whichever source was used:

- Minerva: the gold is the last ``\\boxed{}`` of ``solution``.
- OlympiadBench: ``final_answer`` is a list and multi-answer strings such as ``"$69$,$84$"``
  hold several parts; all parts are required, so they are joined as ``"69, 84"``, which
  math-verify parses as a set.
- AMC: float answers such as ``27.0`` become ``"27"``.
- Everywhere: surrounding ``$`` are stripped, and e-notation, bare ``%``, numpy-style
  fractions and functions and trailing punctuation become LaTeX (``golds.standardize_gold``).

The normalisers live in :mod:`sfpo_lab.eval.golds`.

Any other file loads by field mapping through ``load_benchmark_from_fields``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sfpo_lab.data.records import Problem
from sfpo_lab.data.sources import load_problems, read_rows
from sfpo_lab.eval.golds import (
    Row,
    first_present,
    gold_from_answer,
    gold_from_final_answer,
    gold_from_solution_box,
    join_answer_parts,
    normalize_gold,
    repair_eaten_escapes,
    standardize_gold,
)

__all__ = [
    "BENCHMARKS",
    "PAPER_BENCHMARKS",
    "BenchmarkSpec",
    "get_spec",
    "join_answer_parts",
    "load_benchmark",
    "load_benchmark_from_fields",
    "load_benchmarks",
    "normalize_gold",
    "repair_eaten_escapes",
    "standardize_gold",
]

PAPER_BENCHMARKS: tuple[str, ...] = (
    "math500",
    "aime24",
    "aime25",
    "amc23",
    "minerva_math",
    "olympiadbench",
)
"""The six benchmarks of the paper's Table 1, in its column order; ``val/avg`` averages these."""

_REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives and how its rows become ``Problem`` s.

    Attributes:
        name: registry key, also ``Problem.source`` and the ``val/<name>/`` metric prefix.
        filename: local file name, looked up in the data dir (or its sibling ``folder``).
        hub_id: Hugging Face dataset id used when there is no local copy.
        hub_split: split of the hub dataset.
        hub_config: config (subset) name of the hub dataset, if it has several.
        problem_fields: candidate question fields, first present wins (the local file and
            the hub copy may name it differently, e.g. ``problem`` vs ``question``).
        id_field: field holding a stable id; the row index is used where it is missing.
        gold: row -> normalised gold answer.
        folder: folder under the shared data root holding ``filename``.
        fix_problem: optional repair of the question text.
    """

    name: str
    filename: str
    hub_id: str
    hub_split: str = "test"
    hub_config: str | None = None
    problem_fields: tuple[str, ...] = ("problem",)
    id_field: str | None = "id"
    gold: Callable[[Row], str] = gold_from_answer
    folder: str = "benchmarks"
    fix_problem: Callable[[str], str] | None = None


_SPECS: tuple[BenchmarkSpec, ...] = (
    BenchmarkSpec("math500", "math500.jsonl", "HuggingFaceH4/MATH-500", id_field="unique_id"),
    BenchmarkSpec(
        "aime24",
        "aime24.jsonl",
        "HuggingFaceH4/aime_2024",
        hub_split="train",
        problem_fields=("problem", "question"),
    ),
    BenchmarkSpec("aime25", "aime25.jsonl", "math-ai/aime25", fix_problem=repair_eaten_escapes),
    BenchmarkSpec("amc23", "amc23.jsonl", "math-ai/amc23", problem_fields=("problem", "question")),
    BenchmarkSpec(
        "minerva_math",
        "minerva_math.jsonl",
        "math-ai/minervamath",
        problem_fields=("problem", "question"),
        id_field="idx",
        gold=gold_from_solution_box,
    ),
    BenchmarkSpec(
        "olympiadbench",
        "olympiadbench.jsonl",
        "Hothan/OlympiadBench",
        hub_split="train",
        hub_config="OE_TO_maths_en_COMP",
        problem_fields=("question", "problem"),
        gold=gold_from_final_answer,
    ),
    # verl-format eval sets from the SFPO authors' release (reward_model.ground_truth).
    BenchmarkSpec(
        "lighteval-math_test",
        "lighteval-math_test.parquet",
        "DigitalLearningGmbH/MATH-lighteval",
        id_field=None,
        folder="train",
    ),
    BenchmarkSpec(
        "aime2024_test",
        "aime2024_test.parquet",
        "HuggingFaceH4/aime_2024",
        hub_split="train",
        folder="train",
    ),
    BenchmarkSpec(
        "amc_test",
        "amc_test.parquet",
        "AI-MO/aimo-validation-amc",
        hub_split="train",
        id_field=None,  # "id" restarts per contest year: 49 distinct values for 83 rows
        folder="train",
    ),
)


BENCHMARKS: dict[str, BenchmarkSpec] = {spec.name: spec for spec in _SPECS}
"""Registered benchmarks by name; see ``PAPER_BENCHMARKS`` for the paper's six."""


def get_spec(name: str) -> BenchmarkSpec:
    """Look up a benchmark by name.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    try:
        return BENCHMARKS[name]
    except KeyError:
        valid = ", ".join(sorted(BENCHMARKS))
        raise ValueError(f"unknown benchmark {name!r}; valid names: {valid}") from None


# --------------------------------------------------------------------------- loading


def default_data_dir() -> Path | None:
    """``$SFPO_DATA_DIR`` if set, else ``<repo>/../shared/data/benchmarks`` if it exists."""
    env = os.environ.get("SFPO_DATA_DIR")
    if env:
        return Path(env)
    shared = _REPO_ROOT.parent / "shared" / "data" / "benchmarks"
    return shared if shared.is_dir() else None


def local_path(spec: BenchmarkSpec, data_dir: str | os.PathLike[str] | None) -> Path | None:
    """The local file of ``spec``: ``data_dir/filename``, else ``data_dir/../folder/filename``
    (so the shared ``benchmarks/`` dir also finds the verl sets in ``train/``); ``None`` if
    neither exists."""
    if data_dir is None:
        return None
    base = Path(data_dir)
    for candidate in (base / spec.filename, base.parent / spec.folder / spec.filename):
        if candidate.is_file():
            return candidate
    return None


def _hub_rows(spec: BenchmarkSpec) -> list[dict[str, Any]]:
    """Rows of the hub copy (imported lazily: ``datasets`` is slow to import)."""
    import datasets

    dataset = datasets.load_dataset(spec.hub_id, spec.hub_config, split=spec.hub_split)
    return [dict(row) for row in dataset]


def _to_problem(spec: BenchmarkSpec, index: int, row: Row) -> Problem:
    """Turn one raw row into a ``Problem``, failing loudly on a missing question or gold."""
    question = first_present(row, spec.problem_fields)
    answer = spec.gold(row)
    if question is None or not answer:
        missing = "question" if question is None else "gold answer"
        raise ValueError(
            f"benchmark {spec.name!r} row {index}: no {missing} "
            f"(question fields {spec.problem_fields}; row fields {sorted(row)})"
        )
    text = str(question)
    if spec.fix_problem is not None:
        text = spec.fix_problem(text)
    raw_id = row.get(spec.id_field) if spec.id_field else None
    return Problem(
        id=str(raw_id) if raw_id is not None else str(index),
        problem=text,
        answer=answer,
        source=spec.name,
    )


def load_benchmark(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> list[Problem]:
    """Load a registered benchmark with normalised gold answers.

    Args:
        name: a key of ``BENCHMARKS`` (the six paper benchmarks or a verl eval set).
        data_dir: folder holding the local files. ``None`` uses ``default_data_dir()`` when the
            file is there and the hub source otherwise; an explicit folder must hold the file.
        limit: keep only the first ``limit`` rows (file order), e.g. ``val_limit``.

    Returns:
        The problems, ``source`` set to ``name``.

    Raises:
        ValueError: unknown ``name``, ``limit`` < 1, or a row without question or gold.
        FileNotFoundError: an explicit ``data_dir`` lacks the file.
    """
    spec = get_spec(name)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    if data_dir is not None:
        path = local_path(spec, data_dir)
        if path is None:
            raise FileNotFoundError(
                f"benchmark {name!r}: {spec.filename} not found in {data_dir} "
                f"(nor in {Path(data_dir).parent / spec.folder}); pass data_dir=None to "
                f"load {spec.hub_id} from the hub"
            )
    else:
        path = local_path(spec, default_data_dir())
    rows = read_rows(path) if path is not None else _hub_rows(spec)
    if limit is not None:
        rows = rows[:limit]
    return [_to_problem(spec, i, row) for i, row in enumerate(rows)]


def load_benchmarks(
    names: Sequence[str],
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> dict[str, list[Problem]]:
    """``load_benchmark`` for several names; all names are checked before anything loads."""
    for name in names:
        get_spec(name)
    return {name: load_benchmark(name, data_dir, limit) for name in names}


def load_benchmark_from_fields(
    path: str | os.PathLike[str],
    problem_field: str,
    answer_field: str,
    *,
    answer_extraction: str | None = None,
    id_field: str | None = None,
    split: str = "train",
    layout: str = "auto",
    name: str | None = None,
    limit: int | None = None,
) -> list[Problem]:
    """Load any held-out set (local file or hub dataset) as a benchmark by field mapping.

    Delegates to ``sfpo_lab.data.sources.load_problems`` and then applies the benchmark gold
    normalisation (``27.0`` -> ``"27"``, surrounding ``$`` stripped).

    Args:
        path: a jsonl/json/parquet/csv file or a hub dataset name.
        problem_field: field holding the question.
        answer_field: field holding the answer (or the solution, with extraction).
        answer_extraction: how the gold is read from ``answer_field``: ``None``/``"none"``
            (as is), ``"last_boxed"``, ``"after:<marker>"`` (GSM8K ``"after:####"``),
            ``"regex:<pattern>"`` (first group of the last match) or ``"last_number"``
            (:mod:`sfpo_lab.data.answers`); a row where it finds nothing is an error naming
            the file, row and option.
        id_field: field holding a stable id; the row index if ``None``.
        split: hub split.
        layout: ``"auto"``, ``"verl"`` or ``"fields"``.
        name: ``Problem.source`` and metric name; the file stem by default.
        limit: keep only the first ``limit`` rows.
    """
    problems = load_problems(
        str(path),
        problem_field=problem_field,
        answer_field=answer_field,
        id_field=id_field,
        split=split,
        answer_extraction=answer_extraction,
        layout=layout,
        source=name or Path(str(path)).stem,
        limit=limit,
    )
    return [replace(p, answer=normalize_gold(p.answer)) for p in problems]
