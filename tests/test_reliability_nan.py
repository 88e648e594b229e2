"""NaN/Inf guard (issue 9, item 3), on real training runs in this process.

A callback injects the fault after ``backward``: NaN gradients (the step must be skipped and
counted), or an inf weight behind finite gradients (the SFPO iteration must be rolled back to
theta0; under GRPO, which holds no theta0, the checkpoint must refuse the weights).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from sfpo_lab.config import RunConfig, register_schema, to_run_config
from sfpo_lab.run.runner import train

CONF = Path(__file__).resolve().parents[1] / "conf"
register_schema()

SMALL = [
    "logger=csv",
    "callbacks=none",
    "iterations=2",
    "data.batch_size=4",
    "rollout.n=4",
    "rollout.max_new_tokens=8",
    "rollout.reward_workers=0",
    "update.micro_batch_size=16",
    "val.every=0",
    "val.limit=2",
    "val.n=1",
    "checkpoint.every=1",
    "checkpoint.save_best=false",
    "model.warmup.steps=100",  # the same base as test_reliability_resume (shared cache)
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    # one toy base for the reliability modules of a session (built once, under a file lock)
    return tmp_path_factory.getbasetemp() / "reliability_toy_base"


def make_run(out: Path, cache: Path, *overrides: str) -> RunConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[*SMALL, f"paths.output_dir={out}", f"paths.cache_dir={cache}", *overrides],
        )
    return to_run_config(cfg)


class Poison(L.Callback):
    """After the backward passes numbered in ``at`` (1-based; None = all), sets every gradient
    to NaN (``what="grad"``) or one weight entry to inf (``what="weight"``: the gradients stay
    finite, so the optimizer steps and the weights are what goes non-finite)."""

    def __init__(self, what: str, at: set[int] | None = None) -> None:
        self.what, self.at, self.calls = what, at, 0

    @torch.no_grad()
    def on_after_backward(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.calls += 1
        if self.at is not None and self.calls not in self.at:
            return
        params = [p for p in pl_module.policy.parameters() if p.grad is not None]
        if self.what == "grad":
            for p in params:
                p.grad.fill_(math.nan)
        else:
            params[0].view(-1)[0] = math.inf


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv", newline="") as fh:
        return [r for r in csv.DictReader(fh) if r.get("train/iteration")]


def weights(path: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in sd.items() if k.startswith("policy.")}


def base_weights(cache: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    (base,) = (cache / "toy_base").glob("*/model.safetensors")
    return {f"policy.{k}": v for k, v in load_file(base).items()}


def all_finite(w: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in w.values())


@pytest.mark.slow
def test_nan_gradients_skip_those_steps_and_are_counted(tmp_path, cache):
    """SFPO K=3: 4 optimizer steps per iteration; NaN grads at steps 2 and 7 are skipped."""
    nan = Poison("grad", at={2, 7})
    summary = train(make_run(tmp_path, cache), {}, callbacks=[nan])
    assert nan.calls == 8, "one backward per optimizer step (micro-batch = whole batch)"
    # the run is marked (issue 30 item 1): summary.json's summary and the console line
    assert (summary["skipped_steps"], summary["restored_iterations"]) == (2, 0)
    assert [float(r["train/skipped_steps"]) for r in rows(tmp_path)] == [1.0, 2.0]
    assert all_finite(weights(tmp_path / "last.ckpt"))


@pytest.mark.slow
def test_consecutive_nan_steps_stop_the_run_with_a_clear_error(tmp_path, cache):
    run = make_run(tmp_path, cache, "update.max_skipped_steps=3")
    with pytest.raises(RuntimeError, match=r"3 consecutive optimizer steps had a non-finite"):
        train(run, {}, callbacks=[Poison("grad")])
    assert not list(tmp_path.glob("*.ckpt")), "nothing is saved from a failed iteration"


@pytest.mark.slow
def test_sfpo_iteration_with_nonfinite_weights_restores_theta0(tmp_path, cache):
    """An inf weight in Stage I of both iterations; end() puts theta0 back, so every checkpoint is finite
    and, since every iteration was rolled back, equal to the base model bitwise."""
    train(make_run(tmp_path, cache), {}, callbacks=[Poison("weight", at={1, 5})])
    r = rows(tmp_path)
    assert [float(x["sfpo/restored_theta0"]) for x in r] == [1.0, 1.0]
    assert [float(x["train/restored_iterations"]) for x in r] == [1.0, 2.0]
    final = weights(tmp_path / "last.ckpt")
    base = base_weights(cache)
    assert all(torch.equal(final[k], base[k]) for k in base)


@pytest.mark.slow
def test_consecutive_restores_stop_the_run_and_keep_the_finite_checkpoint(tmp_path, cache):
    run = make_run(tmp_path, cache, "sfpo.K=1", "iterations=3", "update.max_skipped_steps=2")
    with pytest.raises(
        RuntimeError, match=r"2 consecutive SFPO iterations left non-finite weights"
    ):
        train(run, {}, callbacks=[Poison("weight", at={1, 3, 5})])
    assert [p.name for p in sorted(tmp_path.glob("*.ckpt"))] == ["iter-000001.ckpt", "last.ckpt"]
    assert all_finite(weights(tmp_path / "last.ckpt"))


@pytest.mark.slow
def test_no_checkpoint_ever_holds_nonfinite_weights(tmp_path, cache):
    """GRPO (alpha = 0) keeps no theta0: the overflowed weights reach the save, which refuses."""
    run = make_run(tmp_path, cache, "algorithm=grpo")
    with pytest.raises(
        RuntimeError, match=r"refusing to save a checkpoint at iteration 1: non-fin"
    ):
        train(run, {}, callbacks=[Poison("weight", at={1})])
    assert not list(tmp_path.glob("*.ckpt")) and not list(tmp_path.glob(".*.tmp"))
