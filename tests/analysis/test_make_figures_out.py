"""Where make_figures writes (issue 25, item 9): ``--runs`` without ``--out`` goes to a fresh
directory, never into the committed figures; an output skipped for want of runs leaves no file
from another run set behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_runs import write_run

from analysis import make_figures


def _paper_main(root: Path) -> Path:
    for seed in (0, 1):
        write_run(root / f"grpo_s{seed}", "paper_main", seed=seed, alpha=0.0, gain=1.0)
        write_run(root / f"sfpo_s{seed}", "paper_main", seed=seed, alpha=0.8, gain=2.0)
    return root


def test_runs_without_out_write_a_fresh_dir_not_the_committed_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    committed = tmp_path / "paper_figures"
    committed.mkdir()
    monkeypatch.setattr(make_figures, "DEFAULT_OUT", committed)
    monkeypatch.chdir(tmp_path)
    runs = _paper_main(tmp_path / "runs")
    argv = ["--runs", str(runs), "--only", "table1"]
    assert make_figures.main(argv) == 0
    assert make_figures.main(argv) == 0
    assert list(committed.iterdir()) == []
    made = sorted((tmp_path / "outputs" / "figures").iterdir())
    assert len(made) == 2  # one fresh dir per call
    assert all((d / "table1.md").is_file() for d in made)
    assert f"writing to {made[0].relative_to(tmp_path)}" in capsys.readouterr().out


def test_a_skipped_output_leaves_no_file_from_other_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in ("table2.md", "table2.csv", "fig8.png", "table1.md"):
        (out / name).write_text("from an earlier run set")
    runs = _paper_main(tmp_path / "runs")  # no skywork, no memory_profile runs
    argv = ["--runs", str(runs), "--out", str(out), "--only", "table1,table2,fig8"]
    assert make_figures.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["table1.csv", "table1.md", "table1.tex"]
    assert (out / "table1.md").read_text() != "from an earlier run set"
