"""sfpo_lab.run.progress.IterationProgressBar: iterations (not epochs), elapsed/remaining, the
module's progress-bar metrics and the last val/avg — rendered by a real Trainer and Rich."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import lightning as L
import pytest
import rich
import torch
from torch.utils.data import DataLoader

from sfpo_lab.run.progress import IterationProgressBar


class _Iterations(L.LightningModule):
    """An SFPO-shaped module: ``iteration`` counts rollout batches up to ``run_cfg.iterations``,
    sets reward / acc / alpha for the bar (``bar_metrics``) and keeps the last validation in ``last_val``."""

    def __init__(self, start: int, iterations: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.iteration = start
        self.run_cfg = SimpleNamespace(iterations=iterations)
        self.last_val: dict[str, float] = {}

    def training_step(self, batch, batch_idx):
        self.iteration += 1
        self.last_val = {"val/avg": 10.0 * self.iteration + 0.25}
        self.bar_metrics = {"reward": 0.5, "acc": 0.25, "alpha": 0.8}
        return self.layer(batch).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


@pytest.fixture
def console():
    out = io.StringIO()
    yield out
    rich.reconfigure()  # the bar reconfigures Rich's global console: give the default back


def _fit(module: L.LightningModule, batches: int, console: io.StringIO, tmp_path) -> str:
    bar = IterationProgressBar(console_kwargs={"file": console, "width": 200})
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[bar],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(torch.ones(batches, 1), batch_size=1))
    return console.getvalue()


def test_bar_counts_iterations_with_times_and_metrics(console, tmp_path):
    text = _fit(_Iterations(start=0, iterations=4), 4, console, tmp_path)
    assert "Epoch" not in text and "v_num" not in text
    line = next(ln for ln in text.splitlines() if "iteration" in ln)
    assert line.startswith("iteration 4/4 ")
    assert re.search(r" \d:\d\d:\d\d • \d:\d\d:\d\d ", line)  # elapsed • remaining
    metrics = line.split(" • ", 1)[1].split(" ", 1)[1].strip()
    assert metrics == "reward: 0.500 acc: 0.250 alpha: 0.800 val/avg: 40.2%"


def test_resumed_run_counts_from_its_checkpoint_iteration(console, tmp_path):
    """Resumed at iteration 5 of 8: three batches remain, the bar ends at 8/8 (not 3/3)."""
    text = _fit(_Iterations(start=5, iterations=8), 3, console, tmp_path)
    assert "iteration 8/8 " in text and "3/3" not in text


def test_metrics_without_validation_have_no_val_avg(tmp_path):
    module = _Iterations(start=0, iterations=2)
    bar = IterationProgressBar()
    trainer = L.Trainer(logger=False, callbacks=[bar], default_root_dir=tmp_path)
    trainer.strategy.connect(module)
    module.trainer = trainer
    module.last_val = {}
    assert "val/avg" not in bar.get_metrics(trainer, module)
    assert bar.description(module) == "iteration 0/2"
