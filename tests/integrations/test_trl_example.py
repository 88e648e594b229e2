"""examples/trl_sfpo.py, the one-line-swap example, still runs (in-process, 1 step)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trl_sfpo.py"


@pytest.mark.slow
def test_example_runs_and_logs_sfpo(tmp_path, monkeypatch, capsys):
    argv = [str(EXAMPLE), "--steps", "1", "--K", "1", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{'step'")]
    assert len(rows) == 1 and all("'sfpo/alpha': 0.8" in r for r in rows)
