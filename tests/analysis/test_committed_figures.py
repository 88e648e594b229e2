"""`python analysis/make_figures.py` on the committed runs (make_figures.DEFAULT_RUNS) writes
every committed table, figure, CSV and summary.json of paper_figures/ byte for byte."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from analysis import make_figures

pytestmark = pytest.mark.slow  # every output from the committed runs: ~15 s on a quiet CPU


def _outputs(folder: Path) -> list[str]:
    """The files make_figures writes: tables, figures, their CSVs and summary.json."""
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and (p.name.startswith(("table", "fig")) or p.name == "summary.json")
    )


def test_make_figures_reproduces_the_committed_outputs(tmp_path: Path) -> None:
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        rc = make_figures.main(["--out", str(tmp_path)])
    assert rc == 0, log.getvalue()
    committed = make_figures.DEFAULT_OUT
    made, kept = set(_outputs(tmp_path)), set(_outputs(committed))
    assert made == kept, f"written, not committed: {sorted(made - kept)}; committed, not written: {sorted(kept - made)}"  # fmt: skip
    differ = [
        n for n in _outputs(tmp_path) if (tmp_path / n).read_bytes() != (committed / n).read_bytes()
    ]
    assert not differ, (
        f"{differ} differ from paper_figures/: regenerate them with "
        "`python analysis/make_figures.py` and commit the result"
    )


CONFIRM_OUTPUTS = ("confirm.json", "confirm_per_seed.csv", "confirm.md")


def test_confirm_reproduces_the_committed_confirmation(tmp_path: Path) -> None:
    """`python analysis/confirm.py` (the registered analysis) on the committed confirmation
    runs writes the committed confirm.{json,md} and confirm_per_seed.csv byte for byte, and
    summary.json carries the same `confirm` block."""
    from analysis import confirm

    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        rc = confirm.main(["--out", str(tmp_path)])
    assert rc == 0, log.getvalue()
    committed = make_figures.DEFAULT_OUT
    differ = [n for n in CONFIRM_OUTPUTS if (tmp_path / n).read_bytes() != (committed / n).read_bytes()]  # fmt: skip
    assert not differ, f"{differ} differ from paper_figures/: rerun `python analysis/confirm.py`"
    block = json.loads((committed / "confirm.json").read_text())["confirm"]
    assert json.loads((committed / "summary.json").read_text())["confirm"] == block
