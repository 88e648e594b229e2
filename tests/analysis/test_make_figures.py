"""The one command: a synthetic run directory -> every output file; flags; missing runs."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from synthetic_runs import write_all

from analysis import make_figures

EXPECTED = sorted(
    [f"table1.{x}" for x in ("md", "tex", "csv")]
    + [f"fig{i}.{x}" for i in range(1, 9) for x in ("png", "pdf")]
    + ["fig4_efficiency.csv", "fig4_per_seed.csv", "summary.json"]
)


pytestmark = pytest.mark.slow  # draws and saves every figure (~15 s idle, minutes on a busy CPU)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    base = tmp_path_factory.mktemp("mf")
    runs, out = write_all(base / "runs"), base / "out"
    collected = base / "collected"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = make_figures.main(
            ["--runs", str(runs), "--out", str(out), "--collect", str(collected)]
        )
    assert rc == 0
    return out, collected, buf.getvalue()


def test_every_output_is_written(made: tuple[Path, Path, str]) -> None:
    out, _, log = made
    assert sorted(p.name for p in out.iterdir()) == EXPECTED
    # Table 2's runs (experiment skywork) are missing: one line says so, the rest are made
    assert "table2: skipped — no runs with extras.experiment=skywork" in log.splitlines()


def test_collected_data_is_compact_and_regenerates_identical_tables(
    made: tuple[Path, Path, str], tmp_path: Path
) -> None:
    out, collected, _ = made
    names = {p.name for p in collected.rglob("*") if p.is_file()}
    assert names == {"config.yaml", "metrics.csv"}
    assert make_figures.main(["--runs", str(collected / "runs"), "--out", str(tmp_path), "--only", "table1,fig4"]) == 0  # fmt: skip
    assert make_figures.main(["--runs", str(collected / "runs"), "--out", str(tmp_path), "--only", "summary"]) == 0  # fmt: skip
    for name in ("table1.md", "table1.tex", "table1.csv", "fig4_efficiency.csv", "fig4_per_seed.csv", "summary.json"):  # fmt: skip
        assert (tmp_path / name).read_text() == (out / name).read_text()


def test_only_and_missing_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = write_all(tmp_path / "runs", seeds=(0,))
    for d in ("alpha_decay",):
        for f in sorted((runs / d).rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        (runs / d).rmdir()
    assert make_figures.main(["--runs", str(runs), "--out", str(tmp_path / "o"), "--only", "fig7", "--only", "fig1"]) == 0  # fmt: skip
    log = capsys.readouterr().out
    assert "fig7: skipped — no runs with extras.experiment in ['alpha_decay']" in log
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["fig1.pdf", "fig1.png"]
    with pytest.raises(SystemExit):
        make_figures.main(["--only", "fig9"])
