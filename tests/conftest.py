"""Shared test set-up: one OMP thread per process, W&B disabled, hub offline."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["WANDB_MODE"] = "disabled"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not present at {SHARED_DATA}")
    return SHARED_DATA


# Set in os.environ by libraries a test runs in this process (Lightning's launcher, vLLM,
# accelerate, a gloo group): a later test's `python train.py trainer.devices=2` that inherits
# LOCAL_RANK would think it was launched by torchrun, start no rank 1 and wait for it forever.
_LAUNCHER_VARS = (
    "RANK",
    "LOCAL_RANK",
    "NODE_RANK",
    "GROUP_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


_LAUNCHER_BASELINE = {k: os.environ.get(k) for k in _LAUNCHER_VARS}  # as pytest started


@pytest.fixture(autouse=True)
def _no_leaked_launcher_env():
    """Each test ends with the launcher variables the session started with (a fixture or a
    test that set them for its own in-process group cannot hand them to the next test)."""
    yield
    for key, value in _LAUNCHER_BASELINE.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
