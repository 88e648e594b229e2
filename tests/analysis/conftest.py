"""Fixtures of the analysis tests; the synthetic run writer lives in ``synthetic_runs``."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_runs import write_all


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    return write_all(tmp_path / "runs")
