"""The one record type every data source, benchmark and task produces."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """A verifiable problem.

    Attributes:
        id: stable identifier, unique within its source (used for held-out splits, records, resume).
        problem: the question text, without any instruction template.
        answer: the normalised gold answer as a string, without ``\\boxed{}``
            (e.g. ``"27"``, ``"\\frac{1}{2}"``; multi-part answers joined by ``", "``).
        source: name of the dataset or benchmark it came from.
    """

    id: str
    problem: str
    answer: str
    source: str = ""
