"""What a multirun's jobs left: each job's return value (``summary.json``) and the sweep's table
(``multirun_summary.csv``, printed at the end). Used by :mod:`sfpo_lab.run.launcher`.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from sfpo_lab.run.rundir import summary_is_current

SUMMARY_FILE = "summary.json"
MULTIRUN_SUMMARY_FILE = "multirun_summary.csv"
TABLE_COLUMNS = (
    "job", "status", "val_avg_last", "val_avg_best", "stop_step", "train_s", "job_s", "overrides"
)  # fmt: skip


def read_return_value(job_dir: Path) -> Any:
    """The task's return value a finished job left in ``summary.json`` (None if absent)."""
    path = job_dir / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("return_value")
    except (json.JSONDecodeError, AttributeError):
        return None


def wrote_summary_since(job_dir: Path, start: float) -> bool:
    """Whether the job wrote its ``summary.json`` during this launch (a file left by an
    earlier launch is neither deleted nor taken for this one's result)."""
    path = job_dir / SUMMARY_FILE
    return path.is_file() and path.stat().st_mtime >= start


def job_row(
    idx: int, overrides: Sequence[str], job_dir: Path, status: str, job_s: float
) -> dict[str, Any]:
    """One line of the multirun table: the job's result from its ``summary.json`` (final
    ``val/avg``, trigger step, training seconds) and its best ``val/avg`` from ``metrics.csv``."""
    summary: dict[str, Any] = {}
    if status == "completed":
        with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError):
            summary = json.loads((job_dir / SUMMARY_FILE).read_text()).get("summary") or {}
    return {
        "job": idx,
        "status": status,
        "val_avg_last": summary.get("val_avg_last"),
        "val_avg_best": best_val_avg(job_dir) if summary else None,
        "stop_step": summary.get("stop_step"),
        "train_s": summary.get("wall_clock_s"),
        "job_s": round(job_s, 1),
        "overrides": " ".join(overrides),
    }


def best_val_avg(job_dir: Path) -> float | None:
    """The highest ``val/avg`` in the job's ``metrics.csv`` (None without validations)."""
    from sfpo_lab.run.plot import METRICS_FILE, read_metrics

    path = job_dir / METRICS_FILE
    values = read_metrics(path).get("val/avg", ([], []))[1] if path.is_file() else []
    return max(values) if values else None


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as an aligned text table (numbers to one decimal, ``-`` for none); the
    overrides every job shares are left out (the CSV keeps them)."""
    given = [str(row["overrides"]).split() for row in rows]
    common = set.intersection(*map(set, given)) if len(rows) > 1 else set()
    shown = [
        {**row, "overrides": " ".join(o for o in g if o not in common)}
        for row, g in zip(rows, given, strict=True)
    ]
    cells = [list(TABLE_COLUMNS)] + [[_cell(row[c]) for c in TABLE_COLUMNS] for row in shown]
    widths = [max(len(line[i]) for line in cells) for i in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def report_jobs(sweep_dir: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Print the multirun table and write it to ``<sweep dir>/multirun_summary.csv``."""
    path = sweep_dir / MULTIRUN_SUMMARY_FILE
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    print(f"\n[multirun] {len(rows)} job(s) in {sweep_dir}\n{format_table(rows)}\n-> {path}")
    return path


def finished_job(cfg: DictConfig, job_dir: Path) -> bool:
    """Whether the job (its composed config ``cfg``) is a finished run asked to resume
    (``ckpt_path=last``), by the checks its own process would run before saying "nothing to
    do" (checkpoint digest, preflight, config vs checkpoint; the same one-line message), run
    in the sweeping process: a finished sweep run again starts no process (and no imports)
    per job. Anything else, an error included, is False: the job's process runs and reports it.
    """
    if cfg.get("ckpt_path") != "last" or not (job_dir / "last.ckpt").exists():
        return False
    if not summary_is_current(job_dir, cfg.iterations):
        return False
    from hydra.core.hydra_config import HydraConfig

    from sfpo_lab.checkpointing.safety import trusted
    from sfpo_lab.config import to_run_config
    from sfpo_lab.run.runner import check_resume_checkpoint, preflight  # once per sweep

    job = copy.deepcopy(cfg)
    with open_dict(job):  # what the job's own run (hydra.run.dir=<job_dir>) resolves
        job.hydra.run.dir = job.hydra.runtime.output_dir = str(job_dir)
    hydra_cfg = HydraConfig.instance()
    previous = hydra_cfg.cfg
    try:
        hydra_cfg.set_config(job)  # ${hydra:runtime.output_dir} -> the job's dir
        run = to_run_config(job)
        resume = check_resume_checkpoint(run)
        with trusted(resume if run.trust_checkpoint else None):
            preflight(run)  # a finished run: prints its line, SystemExit(0)
    except SystemExit as e:
        return e.code in (0, None)
    except Exception:  # noqa: BLE001 (the job's process reports it, as it always did)
        return False
    finally:
        hydra_cfg.cfg = previous
    return False
