"""IterationCheckpoint: ``best.ckpt`` holds only validated weights, with their own score.

A real Lightning fit of a tiny module whose validation scores are scripted (the
ValidationCallback's schedule decides when it validates; only the scoring is replaced), so the
weights each validation saw are known exactly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from sfpo_lab.checkpointing import IterationCheckpoint
from sfpo_lab.data.records import Problem
from sfpo_lab.eval.callback import ValidationCallback


class _Module(L.LightningModule):
    """One SGD step per batch; ``iteration`` counts batches like SFPOModule."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.policy = torch.nn.Linear(3, 3)
        self.total, self.iteration = total, 0
        self.last_val: dict[str, float] = {}

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(self.policy(torch.ones(1, 3)).square().sum())
        opt.step()
        self.iteration += 1
        if self.iteration >= self.total:
            self.trainer.should_stop = True

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["iteration"] = self.iteration


class _ScriptedValidation(ValidationCallback):
    """Scores iteration i as ``scores[i]`` and keeps a copy of the weights it scored."""

    def __init__(self, scores: dict[int, float], every: int) -> None:
        problem = Problem(id="p0", problem="1+1", answer="2")
        super().__init__({"scripted": [problem]}, every=every, params=None)
        self.scores = scores
        self.scored: dict[int, dict[str, torch.Tensor]] = {}

    def run(self, trainer: L.Trainer, pl_module: Any) -> dict[str, float]:
        it = pl_module.iteration
        metrics = {"val/avg": self.scores[it]}
        self.scored[it] = {k: v.clone() for k, v in pl_module.state_dict().items()}
        pl_module.last_val = metrics
        self._last_iteration = it
        self.history.append({"iteration": float(it), **metrics})
        return metrics


def _fit(tmp_path: Path, scores: dict[int, float], every: int, total: int, **ckpt_kwargs):
    val = _ScriptedValidation(scores, every)
    ckpt = IterationCheckpoint(tmp_path, every=1, keep_last=total, **ckpt_kwargs)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[val, ckpt],  # the order of runner.train: validate, then checkpoint
        default_root_dir=tmp_path,
    )
    trainer.fit(_Module(total), train_dataloaders=DataLoader(range(total), batch_size=1))
    assert sorted(val.scored) == sorted(scores), "the schedule validated other iterations"
    return val


def _assert_best_is(tmp_path: Path, val: _ScriptedValidation, iteration: int) -> None:
    best = torch.load(tmp_path / "best.ckpt", weights_only=False)
    assert best["iteration"] == iteration
    assert best["state_dict"].keys() == val.scored[iteration].keys()
    for k, v in val.scored[iteration].items():
        assert torch.equal(best["state_dict"][k], v), k
    state = best["callbacks"]["IterationCheckpoint"]
    assert state == {"best": val.scores[iteration], "best_iteration": iteration}
    assert best["callbacks"][val.state_key]["history"][-1] == {
        "iteration": float(iteration),
        "val/avg": val.scores[iteration],
    }


def test_a_run_that_never_beats_its_base_keeps_the_base_weights_with_their_score(tmp_path):
    # validation at 0 (on_train_start, before any update), 2, 4 and at the end (5)
    val = _fit(tmp_path, {0: 50.0, 2: 40.0, 4: 30.0, 5: 45.0}, every=2, total=5)
    _assert_best_is(tmp_path, val, 0)
    trained = torch.load(tmp_path / "iter-000001.ckpt", weights_only=False)["state_dict"]
    assert not torch.equal(trained["policy.weight"], val.scored[0]["policy.weight"])


@pytest.mark.parametrize(
    ("scores", "winner"),
    [
        ({0: 10.0, 2: 30.0, 4: 20.0, 5: 25.0}, 2),  # a mid-run validation
        ({0: 10.0, 2: 20.0, 4: 20.0, 5: 40.0}, 5),  # the final one (on_train_end)
        ({0: 10.0, 2: 20.0, 4: 20.0, 5: 15.0}, 2),  # a tie keeps the earlier model
    ],
)
def test_best_is_the_validated_model_with_the_highest_score(tmp_path, scores, winner):
    val = _fit(tmp_path, scores, every=2, total=5)
    _assert_best_is(tmp_path, val, winner)


def test_no_validation_no_best_and_save_best_off(tmp_path):
    """Weights are never a best candidate without a score of their own: a run validated only
    at 0 and at the end compares exactly those two."""
    val = _fit(tmp_path / "a", {0: 30.0, 6: 20.0}, every=0, total=6)
    _assert_best_is(tmp_path / "a", val, 0)
    _fit(tmp_path / "b", {0: 30.0, 6: 20.0}, every=0, total=6, save_best=False)
    assert not (tmp_path / "b" / "best.ckpt").exists()
    assert math.isinf(IterationCheckpoint(tmp_path, every=1).best)
