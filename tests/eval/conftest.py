"""Shared fixtures for the evaluation tests: where the real benchmark files live."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    """``../shared/data/benchmarks`` (the verl eval sets are found in its sibling ``train/``)."""
    path = SHARED_DATA / "benchmarks"
    if not path.is_dir():
        pytest.skip(f"real benchmark files not present: {path} does not exist")
    return path
