"""End to end through `train.py` (the real CLI): GRPO and SFPO on the tiny model, metrics,
checkpoints and fail-fast errors (1 process vs DDP / FSDP2: tests/test_equivalence.py)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sfpo_lab.checkpointing import load_full_checkpoint

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "iterations=3",
    "data.batch_size=4",
    "rollout.n=4",
    "rollout.max_new_tokens=8",
    "update.micro_batch_size=8",
    "val.every=2",
    "val.limit=8",
    "val.n=2",
    "checkpoint.every=1",
    "model.warmup.steps=30",
    "optim.lr=1e-3",
    "wandb.mode=disabled",
]

REQUIRED_KEYS = [
    "train/reward",
    "train/acc",
    "train/response_length/mean",
    "train/response_length/max",
    "train/response_length/clip_ratio",
    "train/entropy",
    "train/pg_loss",
    "train/pg_clipfrac",
    "train/ppo_kl",
    "train/grad_norm",
    "sfpo/alpha",
    "sfpo/z",
    "sfpo/stop_step",
    "perf/rollout_s",
    "perf/update_s",
    "perf/step_s",
    "perf/tokens_per_s",
    "perf/peak_mem_gb",
    "train/rollouts",
    "train/wall_clock_s",
    "val/toy/acc",
    "val/avg",
]


def run_train(tmp: Path, *overrides: str, cache: Path, check: bool = True):
    env = dict(os.environ, SFPO_CACHE_DIR=str(cache), OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        env.pop(key, None)  # inherited, Lightning would take train.py for a launched rank
    cmd = [sys.executable, "train.py", f"hydra.run.dir={tmp}", *TINY, *overrides]
    # its own process group: on a timeout every rank goes, not only the launching one
    with subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as child:
        try:
            out, err = child.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            raise
    proc = subprocess.CompletedProcess(cmd, child.returncode, out, err)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def policy_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    sd = load_full_checkpoint(ckpt, weights_only=True)["state_dict"]  # a file or shard dir
    return {k: v for k, v in sd.items() if k.startswith("policy.")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.mark.slow
@pytest.mark.parametrize(("algo", "kl"), [("grpo", 0.0), ("sfpo", 0.0), ("sfpo", 0.01)])
def test_three_iterations_learn_and_log_everything(tmp_path, cache, algo, kl):
    run_train(tmp_path, f"algorithm={algo}", f"loss.kl_coef={kl}", cache=cache)
    rows = read_metrics(tmp_path)
    keys = set().union(*(r.keys() for r in rows))
    required = REQUIRED_KEYS + (["train/kl"] if kl > 0 else [])
    missing = [k for k in required if k not in keys]
    assert not missing, f"metrics.csv lacks {missing}"
    alphas = {float(r["sfpo/alpha"]) for r in rows if r.get("sfpo/alpha")}
    assert alphas == ({0.0} if algo == "grpo" else {0.8})
    iters = [int(float(r["train/iteration"])) for r in rows if r.get("train/iteration")]
    assert iters == [1, 2, 3]
    assert (tmp_path / "last.ckpt").is_file()
    base = next((cache / "toy_base").glob("*/model.safetensors"))
    from safetensors.torch import load_file

    base_sd = load_file(base)
    final = policy_weights(tmp_path / "last.ckpt")
    changed = [k for k, v in base_sd.items() if not torch.equal(final[f"policy.{k}"], v)]
    assert changed, "no parameter changed after 3 iterations"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("sfpo.K=-1", "sfpo.K"),
        ("sfpo.alpha=1.5", "sfpo.alpha"),
        ("rollout.n=0", "rollout.n"),
        ("update.micro_batch_size=5", "update.micro_batch_size"),
        ("data=dapo_math paths.data_dir=/nonexistent", "data.train_files"),
        ("data=dapo_math paths.data_dir=no_such_dir", "data.train_files"),
        ("rollout.engine=sglang", "rollout.engine"),
        ("model=gpt-17", "model"),
        ("model.name_or_path=./no/such/dir", "model.name_or_path"),
    ],
)
def test_bad_input_fails_fast_naming_the_setting(tmp_path, cache, override, names):
    before = sorted(str(p) for p in cache.rglob("*"))
    proc = run_train(tmp_path, *override.split(), cache=cache, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert names in out, out[-2000:]
    # failed before any heavy work: no warm-up, no model materialised in the cache
    assert sorted(str(p) for p in cache.rglob("*")) == before
    assert not list(tmp_path.glob("*.ckpt"))


@pytest.mark.slow
def test_existing_checkpoint_is_never_overwritten(tmp_path, cache):
    (tmp_path / "last.ckpt").write_bytes(b"precious")
    proc = run_train(tmp_path, cache=cache, check=False)
    assert proc.returncode != 0 and "already holds checkpoints" in proc.stdout + proc.stderr
    assert (tmp_path / "last.ckpt").read_bytes() == b"precious"


# 1 process == DDP == FSDP2 (loss, grad norm, update direction, weights): tests/test_equivalence.py


def base_weights(cache: Path) -> dict[str, torch.Tensor]:
    """The toy base the runs started from, under the checkpoint's ``policy.`` names."""
    from safetensors.torch import load_file

    base = next((cache / "toy_base").glob("*/model.safetensors"))
    return {f"policy.{k}": v for k, v in load_file(base).items()}


@pytest.mark.slow
def test_resume_continues_exactly_and_keeps_the_metrics(tmp_path, cache):
    """2 iterations, then resume to 4 (same dir) == 4 uninterrupted iterations, bitwise;
    the first run's metrics.csv rows are kept, not deleted by the logger."""
    common = ["iterations=4", "val.every=2", "checkpoint.every=2", "optim.lr=1e-2"]
    full, part = tmp_path / "full", tmp_path / "part"
    run_train(full, *common, cache=cache)
    run_train(part, *common, "iterations=2", cache=cache)
    first_rows = read_metrics(part)
    run_train(part, *common, f"ckpt_path={part / 'last.ckpt'}", cache=cache)
    rows = read_metrics(part)
    assert rows[: len(first_rows)] == first_rows
    iters = [int(float(r["train/iteration"])) for r in rows if r.get("train/iteration")]
    assert iters == [1, 2, 3, 4]
    w_full, w_part = policy_weights(full / "last.ckpt"), policy_weights(part / "last.ckpt")
    assert all(torch.equal(w_full[k], w_part[k]) for k in w_full)
