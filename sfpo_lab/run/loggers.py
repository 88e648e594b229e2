"""A CSV logger that never deletes what a run already wrote.

Lightning's CSVLogger deletes ``metrics.csv`` when its directory is not empty, which on a
resume into the same run dir would erase the history. This one keeps the file, continues
its header, and on resume drops only rows logged after the checkpoint's iteration (the work
that the resume redoes), so the file stays one row set per iteration. Every rewrite goes
through a temporary file and a rename: a kill at any moment leaves the old file or the new
one, never a truncated history (Lightning rewrites the file in place when a new key appears).

:func:`build_loggers` makes the run's logger list; a W&B logger continues the run dir's W&B run,
in the mode :func:`wandb_mode` resolves (online under a W&B sweep agent unless the user set one),
quiet unless ``SFPO_VERBOSE=1`` (:func:`wandb_settings`).
"""

from __future__ import annotations

import csv
import os
import secrets
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only

from sfpo_lab.config import ConfigError


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


WANDB_ID_FILE = "wandb_id.txt"
_ID_CHARS = string.ascii_lowercase + string.digits


def build_loggers(logger_cfg: dict[str, Any], output_dir: str) -> list[Logger]:
    """The run's Lightning loggers from ``run.logger`` (Hydra ``_target_`` dicts; empty ones
    skipped). A W&B logger gets the run id stored in ``<output_dir>/wandb_id.txt`` (written at
    the first start, rank 0) and ``resume="allow"``, so a resumed run (``ckpt_path=last``)
    continues the same W&B run instead of starting a second one. Under a W&B sweep agent
    (``WANDB_SWEEP_ID`` / ``WANDB_RUN_ID`` set) the agent's id is left to W&B.

    Raises:
        ConfigError: a W&B logger config that sets ``id`` or ``resume`` itself (the run dir
            owns the id; two sources could disagree).
    """
    from hydra.utils import instantiate

    loggers = []
    for name, cfg in logger_cfg.items():
        if not cfg:
            continue
        if str(cfg.get("_target_", "")).endswith("WandbLogger"):
            cfg = _with_wandb_id(name, dict(cfg), Path(output_dir))
            mode, why = wandb_mode(str(cfg.get("mode") or "offline"), _overrides(), os.environ)
            if mode != cfg.get("mode") and why == UNDER_AGENT:
                print(f"W&B mode: {mode} ({why})")  # WANDB_MODE: the user's own choice
            cfg["mode"] = mode
            cfg["settings"] = wandb_settings(cfg.get("settings"))
            cfg.setdefault("_convert_", "partial")  # W&B takes a dict, not a DictConfig
        loggers.append(instantiate(cfg))
    return loggers


def wandb_settings(configured: Mapping[str, Any] | None) -> dict[str, Any]:
    """``wandb.init(settings=...)``: ``quiet`` (no version header, no 40-line history/summary
    footer; the offline run's location still shows) unless ``SFPO_VERBOSE=1``; settings given
    in the logger config (``logger.wandb.settings.quiet=false``) win."""
    from sfpo_lab.run.quiet import verbose

    return {**({} if verbose() else {"quiet": True}), **dict(configured or {})}


AGENT_ENV = ("WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH")
"""Set by ``wandb agent`` in the environment of every run it starts (wandb/wandb_agent.py);
``WANDB_RUN_ID`` alone may be the user's."""
MODE_KEYS = ("wandb.mode", "logger.wandb.mode")
UNDER_AGENT = "started by a W&B sweep agent; wandb.mode=offline keeps it local"


def wandb_mode(
    configured: str, overrides: Sequence[str], environ: Mapping[str, str]
) -> tuple[str, str]:
    """The W&B mode a run logs in, and why. In order: a mode set on the command line (or as a
    sweep parameter, which the agent passes as one: ``wandb.mode=...``), else ``WANDB_MODE``,
    else ``online`` under a W&B sweep agent (its server must receive ``val/avg``), else
    ``configured`` (``wandb.mode``'s default: offline). Passing the mode explicitly to W&B
    would otherwise beat ``WANDB_MODE``."""
    for item in reversed(overrides):
        key, sep, value = item.lstrip("+~").partition("=")
        if sep and key in MODE_KEYS:
            return value, f"{key}={value} given"
    if environ.get("WANDB_MODE"):
        return environ["WANDB_MODE"], f"WANDB_MODE={environ['WANDB_MODE']}"
    if any(environ.get(k) for k in AGENT_ENV):
        return "online", UNDER_AGENT
    return configured, "wandb.mode"


def _overrides() -> list[str]:
    """The command line's Hydra overrides (none outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _with_wandb_id(name: str, cfg: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    for key in ("id", "resume", "version"):
        if cfg.get(key) is not None:
            raise ConfigError(
                f"logger.{name}.{key}={cfg[key]!r}: the W&B run id comes from "
                f"{output_dir / WANDB_ID_FILE} (one run per run dir); remove logger.{name}.{key}"
            )
    if os.environ.get("WANDB_RUN_ID") or os.environ.get("WANDB_SWEEP_ID"):
        return cfg  # a W&B sweep agent (or the user) chose this run's id: W&B reads it itself
    return {**cfg, "id": wandb_run_id(output_dir), "resume": "allow"}


def wandb_run_id(output_dir: Path) -> str | None:
    """The run dir's W&B id: read from ``wandb_id.txt``, or made and written there (rank 0).

    Other ranks never start a W&B run (Lightning's ``rank_zero_experiment``); they get the
    stored id when it exists and ``None`` otherwise, and never write.
    """
    path = Path(output_dir) / WANDB_ID_FILE
    if path.is_file():
        stored = path.read_text().strip()
        if stored:
            return stored
    if rank_zero_only.rank != 0:
        return None
    run_id = "".join(secrets.choice(_ID_CHARS) for _ in range(8))  # W&B's own id format
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp.{os.getpid()}")
    tmp.write_text(run_id + "\n")
    os.replace(tmp, path)
    return run_id
