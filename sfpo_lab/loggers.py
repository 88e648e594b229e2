"""A CSV logger that never deletes what a run already wrote.

Lightning's CSVLogger deletes ``metrics.csv`` when its directory is not empty, which on a
resume into the same run dir would erase the history. This one keeps the file, continues
its header, and on resume drops only rows logged after the checkpoint's iteration (the work
that the resume redoes), so the file stays one row set per iteration. Every rewrite goes
through a temporary file and a rename: a kill at any moment leaves the old file or the new
one, never a truncated history (Lightning rewrites the file in place when a new key appears).
"""

from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _KeepingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as fh:
                header = next(csv.reader(fh), [])
            self.metrics_keys = sorted(set(self.metrics_keys) | set(header))

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        self._replace(fieldnames, rows)

    def truncate_after(self, step: int) -> None:
        """Drop rows with ``step > step``, and a partial last row left by a kill (its fields
        or its step are missing); rewritten atomically."""
        path = self.metrics_file_path
        if not os.path.isfile(path):
            return
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields, rows = reader.fieldnames or [], list(reader)
        keep = [r for r in rows if _complete(r) and int(float(r["step"])) <= step]
        if len(keep) == len(rows):
            return
        self._replace(fields, keep)

    def _replace(self, fieldnames: list[str], rows: list[dict[str, str]]) -> None:
        tmp = f"{self.metrics_file_path}.tmp"
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.metrics_file_path)


def _complete(row: dict[str, str | None]) -> bool:
    """A row that was written whole: every column present (DictReader fills missing ones with
    None) and a numeric step."""
    if None in row.values() or None in row:
        return False
    try:
        float(row["step"])
    except (KeyError, TypeError, ValueError):
        return False
    return True


class KeepingCSVLogger(CSVLogger):
    """``CSVLogger`` that appends to an existing ``metrics.csv`` instead of deleting it."""

    @property
    def experiment(self) -> _KeepingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment
