"""Validation and rollouts compute in the same dtype (issue 24, item 11).

Lightning runs ``training_step`` (and so every rollout) inside its precision plugin's
``train_step_context`` (``bf16-mixed``: autocast to bf16); validation runs from callback hooks,
outside it. One real ``runner.train`` iteration with ``trainer.precision=bf16-mixed`` on CPU
(the policy's fp32 weights generate both, single device), and a forward hook on one of its
linear layers records the dtype it computes in during each ``generate`` call.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from sfpo_lab.eval.callback import ValidationCallback

REPO = Path(__file__).resolve().parents[1]
RUN = [
    "iterations=1",
    "algorithm=grpo",
    "trainer.precision=bf16-mixed",
    "model.dtype=float32",
    "data.batch_size=2",
    "rollout.n=2",
    "rollout.max_new_tokens=4",
    "update.micro_batch_size=4",
    "val.every=0",  # at the start and at the end
    "val.limit=2",
    "val.n=1",
    "val.max_new_tokens=4",
    "checkpoint.every=0",
    "model.warmup.steps=2",
    "logger=csv",
    "callbacks=none",
]


class GenerationDtypes(L.Callback):
    """The output dtype of the policy's first MLP ``down_proj`` during each ``generate`` call,
    under ``rollout`` (inside ``training_step``) or ``validation`` (inside
    :meth:`ValidationCallback.run`)."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {"rollout": set(), "validation": set()}
        self._phase: str | None = None
        self._validating = False

    def on_fit_start(self, trainer: L.Trainer, module: Any) -> None:
        # after configure_model (the policy and engine exist), before the first validation
        val_cb = next(c for c in trainer.callbacks if isinstance(c, ValidationCallback))
        val_cb.run = self._around(val_cb.run, validating=True)
        module.engine.generate = self._around(module.engine.generate, validating=False)
        linear = module.policy.model.layers[0].mlp.down_proj
        linear.register_forward_hook(self._record)

    def _around(self, fn: Callable, validating: bool) -> Callable:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if validating:
                self._validating = True
            else:
                self._phase = "validation" if self._validating else "rollout"
            try:
                return fn(*args, **kwargs)
            finally:
                if validating:
                    self._validating = False
                else:
                    self._phase = None

        return wrapped

    def _record(self, mod: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if self._phase is not None:
            self.seen[self._phase].add(str(output.dtype))


@pytest.mark.slow
def test_validation_generates_in_the_rollouts_compute_dtype(tmp_path):
    from hydra import compose, initialize_config_dir

    from sfpo_lab.config import register_schema, to_run_config
    from sfpo_lab.run.runner import train

    register_schema()
    paths = [f"paths.output_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        run = to_run_config(compose("train", overrides=[*RUN, *paths]))
    probe = GenerationDtypes()
    train(run, {}, callbacks=[probe])
    assert probe.seen == {"rollout": {"torch.bfloat16"}, "validation": {"torch.bfloat16"}}


class _Plugin:
    def __init__(self) -> None:
        self.entered = 0

    def train_step_context(self):
        plugin = self

        class _Ctx:
            def __enter__(self) -> None:
                plugin.entered += 1

            def __exit__(self, *exc: object) -> None:
                return None

        return _Ctx()


def test_compute_context_is_the_plugins_training_step_context():
    """Any precision plugin's ``train_step_context`` (Lightning's ``MixedPrecision``: autocast);
    nothing for a stand-in trainer without one."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    from sfpo_lab.eval.callback import compute_context

    plugin = _Plugin()
    with compute_context(type("T", (), {"precision_plugin": plugin})()):
        pass
    assert plugin.entered == 1
    mixed = type("T", (), {"precision_plugin": MixedPrecision("bf16-mixed", "cpu")})()
    with compute_context(mixed):
        assert torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.bfloat16
    with compute_context(object()):
        assert torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.float32
