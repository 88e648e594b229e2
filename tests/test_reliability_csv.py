"""metrics.csv across kills and resumes (issue 9): rows of redone iterations and a row cut by
a kill are dropped, everything else is kept byte-for-byte, rewrites are atomic."""

from __future__ import annotations

import csv
from pathlib import Path

from sfpo_lab.run.loggers import KeepingCSVLogger


def logger(d: Path) -> KeepingCSVLogger:
    return KeepingCSVLogger(save_dir=str(d), name="", version="", flush_logs_every_n_steps=1)


def read(d: Path) -> list[dict[str, str]]:
    with open(d / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_new_key_rewrites_the_file_without_losing_rows(tmp_path):
    log = logger(tmp_path)
    log.log_metrics({"val/avg": 1.0}, step=0)
    log.log_metrics({"train/acc": 0.5, "train/iteration": 1.0}, step=1)  # new keys: rewrite
    assert [r["step"] for r in read(tmp_path)] == ["0", "1"]
    assert read(tmp_path)[0]["val/avg"] == "1.0" and read(tmp_path)[1]["train/acc"] == "0.5"
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_keeps_the_history_and_drops_redone_and_cut_rows(tmp_path):
    log = logger(tmp_path)
    for step in range(4):
        log.log_metrics({"train/acc": step / 10, "train/iteration": float(step)}, step=step)
    with open(tmp_path / "metrics.csv", "a") as fh:
        fh.write("0.5,")  # a kill in the middle of writing the next row
    kept = read(tmp_path)[:3]
    resumed = logger(tmp_path)  # a new process resuming from the checkpoint of step 2
    resumed.experiment.truncate_after(2)
    assert read(tmp_path) == kept
    resumed.log_metrics({"train/acc": 0.9, "train/iteration": 3.0}, step=3)
    rows = read(tmp_path)
    assert rows[:3] == kept and [r["step"] for r in rows] == ["0", "1", "2", "3"]
    assert rows[3]["train/acc"] == "0.9"
