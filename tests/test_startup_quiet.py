"""Quiet by default (issue 25): a real run of the smallest kind prints no transformers
weight-loading bar and no W&B header/footer; ``SFPO_VERBOSE=1`` brings both back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALLEST = [
    "iterations=1",
    "data.batch_size=2",
    "rollout.n=2",
    "rollout.max_new_tokens=4",
    "val.limit=2",
    "val.n=1",
    "model.warmup.steps=2",
    "rollout.reward_workers=0",
    "wandb.mode=offline",  # W&B prints nothing at all when disabled: offline shows the difference
]
BARS = ("Loading weights", "Loading checkpoint shards")
WANDB_BANNERS = ("Tracking run with wandb version", "Run history:", "Run summary:", "wandb sync")


def _run(tmp: Path, cache: Path, verbose: bool) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", SFPO_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1")
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "WANDB_MODE"):
        env.pop(key, None)
    env.pop("SFPO_VERBOSE", None)
    if verbose:
        env["SFPO_VERBOSE"] = "1"
    cmd = [sys.executable, "train.py", f"hydra.run.dir={tmp}", *SMALLEST]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


@pytest.mark.slow
def test_no_loading_bar_or_wandb_footer_unless_verbose(tmp_path):
    cache = tmp_path / "cache"  # the toy base is made by the first run, loaded by both
    quiet = _run(tmp_path / "quiet", cache, verbose=False)
    loud = _run(tmp_path / "loud", cache, verbose=True)
    for text in (*BARS[:1], *WANDB_BANNERS):
        assert text in loud, f"{text!r} missing with SFPO_VERBOSE=1:\n{loud[-3000:]}"
    for text in (*BARS, *WANDB_BANNERS):
        assert text not in quiet, f"{text!r} printed by default:\n{quiet[-3000:]}"
    assert "Run data is saved locally in" in quiet  # where the offline run is: still said


def _wandb_init_kwargs(tmp_path: Path, **extra) -> dict:
    from sfpo_lab.run.loggers import build_loggers

    cfg = {
        "_target_": "lightning.pytorch.loggers.WandbLogger",
        "save_dir": str(tmp_path),
        "mode": "disabled",
        **extra,
    }
    (logger,) = build_loggers({"wandb": cfg}, str(tmp_path))
    return logger._wandb_init  # what WandbLogger passes to wandb.init (nothing started yet)


def test_wandb_is_quiet_unless_verbose_and_configured_settings_win(tmp_path, monkeypatch):
    monkeypatch.delenv("SFPO_VERBOSE", raising=False)
    assert _wandb_init_kwargs(tmp_path)["settings"] == {"quiet": True}
    given = _wandb_init_kwargs(tmp_path, settings={"quiet": False, "console": "off"})
    assert given["settings"] == {"quiet": False, "console": "off"}
    assert isinstance(given["settings"], dict)  # wandb.init ignores a DictConfig
    monkeypatch.setenv("SFPO_VERBOSE", "1")
    assert _wandb_init_kwargs(tmp_path)["settings"] == {}


@pytest.mark.parametrize(("value", "verbose"), [("1", True), ("0", False), ("", False)])
def test_transformers_bars_disabled_unless_verbose(monkeypatch, value, verbose):
    from transformers.utils import logging as hf_logging

    from sfpo_lab.run import quiet

    monkeypatch.setenv("SFPO_VERBOSE", value)
    try:
        quiet.install()
        bar = hf_logging.tqdm(range(3), desc="Loading weights")
        assert bool(getattr(bar, "disable", True)) is not verbose
        bar.close()
    finally:
        hf_logging.set_tqdm_hook(None)
