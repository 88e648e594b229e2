"""sfpo_lab.run.loggers.build_loggers: a run dir keeps one W&B run across restarts (ckpt_path=last)."""

from __future__ import annotations

import re

import pytest

from sfpo_lab.config import ConfigError
from sfpo_lab.run.loggers import WANDB_ID_FILE, KeepingCSVLogger, build_loggers


def _cfg(tmp_path, **wandb_extra):
    return {
        "csv": {
            "_target_": "sfpo_lab.run.loggers.KeepingCSVLogger",
            "save_dir": str(tmp_path),
            "name": "",
            "version": "",
        },
        "wandb": {
            "_target_": "lightning.pytorch.loggers.WandbLogger",
            "save_dir": str(tmp_path),
            "project": "sfpo_lab_test",
            "mode": "offline",
            "name": "train",
            **wandb_extra,
        },
        "off": None,  # a logger switched off on the command line (logger.wandb=null)
    }


@pytest.mark.slow
def test_two_starts_in_one_run_dir_log_to_one_wandb_run(tmp_path, monkeypatch):
    """Two real offline W&B runs started from the same run dir (a run and its resume) share one
    id, the one stored in ``wandb_id.txt``; another run dir gets another id."""
    pytest.importorskip("wandb")
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    ids = []
    for run_dir in (tmp_path / "a", tmp_path / "a", tmp_path / "b"):
        loggers = build_loggers(_cfg(run_dir), str(run_dir))
        assert [type(lg).__name__ for lg in loggers] == ["KeepingCSVLogger", "WandbLogger"]
        try:
            ids.append(loggers[1].experiment.id)
        finally:
            wandb.finish()
    assert ids[0] == ids[1] != ids[2]
    assert (tmp_path / "a" / WANDB_ID_FILE).read_text().strip() == ids[0]
    offline_runs = sorted(p.name for p in (tmp_path / "a" / "wandb").glob("offline-run-*"))
    # offline-run-<time>-<id>, plus "-1" when both started within the same second
    one_id = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{re.escape(ids[0])}(-\d+)?")
    assert len(offline_runs) == 2 and all(one_id.fullmatch(n) for n in offline_runs), offline_runs


def test_the_stored_id_is_passed_with_resume_allow(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    (tmp_path / WANDB_ID_FILE).write_text("abc123xy\n")
    csv_logger, wb = build_loggers(_cfg(tmp_path), str(tmp_path))
    assert isinstance(csv_logger, KeepingCSVLogger)
    assert wb._wandb_init["id"] == "abc123xy"
    assert wb._wandb_init["resume"] == "allow"


def test_first_start_writes_a_new_id(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    run_dir = tmp_path / "run"
    _, wb = build_loggers(_cfg(run_dir), str(run_dir))
    stored = (run_dir / WANDB_ID_FILE).read_text().strip()
    assert len(stored) == 8 and wb._wandb_init["id"] == stored


@pytest.mark.parametrize("key", ["id", "resume", "version"])
def test_a_configured_id_or_resume_is_refused(tmp_path, key):
    with pytest.raises(ConfigError, match=rf"logger\.wandb\.{key}=.*wandb_id\.txt"):
        build_loggers(_cfg(tmp_path, **{key: "x"}), str(tmp_path))
    assert not (tmp_path / WANDB_ID_FILE).exists()


def test_csv_only_config_writes_no_id(tmp_path):
    cfg = _cfg(tmp_path)
    del cfg["wandb"]
    assert [type(lg) for lg in build_loggers(cfg, str(tmp_path))] == [KeepingCSVLogger]
    assert not (tmp_path / WANDB_ID_FILE).exists()


@pytest.mark.parametrize("env", ["WANDB_RUN_ID", "WANDB_SWEEP_ID"])
def test_a_sweep_agents_run_id_is_left_to_wandb(tmp_path, monkeypatch, env):
    monkeypatch.setenv(env, "agent123")
    _, wb = build_loggers(_cfg(tmp_path), str(tmp_path))
    assert wb._wandb_init["id"] is None  # wandb.init reads the agent's id from the env
    assert not (tmp_path / WANDB_ID_FILE).exists()
