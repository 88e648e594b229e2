"""SFPO on TRL, issue 26 items 2-6: the supported-versions check, settings refused before the
model is loaded, the LR-schedule rule, the fast steps' optimizer callbacks, the optional
kl_theta0 pass, and the notice when resuming from a plain GRPOTrainer checkpoint (tiny Qwen2,
CPU, no downloads)."""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch
from datasets import Dataset

pytest.importorskip("trl")

import trl  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import GRPOTrainer  # noqa: E402

import sfpo_lab.integrations.trl as sfpo_trl  # noqa: E402
from sfpo_lab.integrations.trl import SFPOGRPOTrainer  # noqa: E402
from sfpo_lab.integrations.trl_checks import SUPPORTED, refuse_multimodal_batch  # noqa: E402

from . import _tiny_trl as T  # noqa: E402


def _trainer(cls, tmp_path, name, sfpo=None, callbacks=None, **overrides):
    tok = T.tokenizer(tmp_path)
    kw = {"sfpo": sfpo} if cls is not GRPOTrainer else {}
    return cls(
        model=T.model(tok),
        reward_funcs=T.reward,
        args=T.args(tmp_path / name, **overrides),
        train_dataset=T.dataset(),
        processing_class=tok,
        callbacks=callbacks,
        **kw,
    )


# ------------------------------------------------------------------ item 2: versions
def test_import_rejects_an_unsupported_trl_in_one_line(monkeypatch):
    """The module's own import-time check, run again with TRL reporting 1.15.0."""
    monkeypatch.setattr(trl, "__version__", "1.15.0")
    spec = importlib.util.spec_from_file_location("_sfpo_trl_again", sfpo_trl.__file__)
    with pytest.raises(ImportError) as err:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    msg = str(err.value)
    assert "\n" not in msg and "trl==1.15.0" in msg and SUPPORTED in msg


def test_import_rejects_a_transformers_without_the_hooks_it_overrides(monkeypatch):
    from transformers import Trainer

    monkeypatch.delattr(Trainer, "_clip_grad_norm")  # as in transformers 4.57
    spec = importlib.util.spec_from_file_location("_sfpo_trl_again", sfpo_trl.__file__)
    with pytest.raises(ImportError, match=r"needs Trainer\._clip_grad_norm, absent") as err:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert "\n" not in str(err.value)


class _NoEntropyMetric(SFPOGRPOTrainer):
    """TRL moving its per-step metrics elsewhere (an open upstream change): no 'entropy'."""

    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)
        self._metrics["train"].pop("entropy", None)
        return loss


@pytest.mark.slow
def test_a_missing_entropy_metric_raises_instead_of_silencing_the_trigger(tmp_path):
    tr = _trainer(_NoEntropyMetric, tmp_path, "noent", sfpo={"K": 1}, max_steps=1)
    with pytest.raises(RuntimeError, match=r"logged no per-step _metrics\['train'\]\['entropy'\]"):
        tr.train()


# ------------------------------------------------------------------ items 3, 5, 6: refusals
@pytest.mark.parametrize(
    ("over", "sfpo", "match"),
    [
        ({"steps_per_generation": 4, "max_steps": 3}, None, "max_steps=3 must be a multiple"),
        (
            {"steps_per_generation": 4, "save_strategy": "steps", "save_steps": 2, "max_steps": 4},
            None,
            "save_steps=2 must be a multiple",
        ),  # fmt: skip
        (
            {"steps_per_generation": 2, "save_strategy": "steps", "save_steps": 1, "max_steps": 2},
            None,
            "save_steps=1 must be a multiple",
        ),  # fmt: skip
        ({}, {"K": 2.5}, r"sfpo\.K=2\.5"),
    ],
    ids=["max_steps", "save_steps=2", "save_steps=1", "K=2.5"],
)
def test_refused_before_the_model_is_loaded(tmp_path, over, sfpo, match):
    args = T.args(tmp_path / "out", **over)
    with pytest.raises(ValueError, match=f"^SFPOGRPOTrainer: {match}") as err:
        SFPOGRPOTrainer(model="no/such-model", reward_funcs=T.reward, args=args, sfpo=sfpo)
    assert "\n" not in str(err.value)


def test_iteration_multiples_are_accepted(tmp_path):
    over = {"steps_per_generation": 4, "save_strategy": "steps", "save_steps": 4, "max_steps": 8}
    assert _trainer(SFPOGRPOTrainer, tmp_path, "ok", **over).args.max_steps == 8


def test_vision_language_inputs_are_refused(tmp_path):
    data = Dataset.from_list([{"prompt": "1+1=", "image": None}])
    with pytest.raises(ValueError, match="column 'image'.*pixel_values"):
        SFPOGRPOTrainer(
            model="no/such-model", reward_funcs=T.reward, args=T.args(tmp_path), train_dataset=data
        )
    with pytest.raises(ValueError, match="generation batch has pixel_values"):
        refuse_multimodal_batch({"prompt_ids": torch.ones(1, 2), "pixel_values": torch.ones(1)})


# ------------------------------------------------------------------ items 4, 6: a run
class _Steps(TrainerCallback):
    """The LR every optimizer step (fast or slow) runs with, from its callbacks."""

    def __init__(self) -> None:
        self.pre, self.lrs = 0, []

    def on_pre_optimizer_step(self, args, state, control, **kw):
        self.pre += 1

    def on_optimizer_step(self, args, state, control, optimizer=None, **kw):
        self.lrs.append(optimizer.param_groups[0]["lr"])


@pytest.mark.slow
def test_lr_rule_callbacks_and_no_kl_pass_by_default(tmp_path):
    # 2 optimizer steps per rollout batch (steps_per_generation=2, ga=1), K=1, 2 iterations
    steps = _Steps()
    over = {"steps_per_generation": 2, "max_steps": 4, "lr_scheduler_type": "linear"}
    cfg = {"K": 1, "alpha": 0.5, "entropy_control": {"enabled": False}}
    tr = _trainer(SFPOGRPOTrainer, tmp_path, "lr", sfpo=cfg, callbacks=[steps], **over)
    tr.train()
    # every optimizer step fires both callbacks: per iteration 2 fast + 2 slow
    assert steps.pre == len(steps.lrs) == 8
    lr = [0.05 * (1 - i / 4) for i in range(4)]  # the linear schedule after i scheduler steps
    # the scheduler steps once per optimizer step of TRL's (slow) pass; the fast passes run at
    # the LR the rollout batch starts with
    expected = [lr[0], lr[0], lr[0], lr[1], lr[2], lr[2], lr[2], lr[3]]
    assert steps.lrs == pytest.approx(expected, rel=1e-6)
    logs = [h for h in tr.state.log_history if "sfpo/alpha" in h]
    assert len(logs) == 2 and not any("sfpo/kl_theta0" in h for h in logs)


@pytest.mark.slow
def test_resume_from_a_plain_grpo_checkpoint_says_so(tmp_path, caplog):
    over = {"max_steps": 1, "save_strategy": "steps", "save_steps": 1}
    _trainer(GRPOTrainer, tmp_path, "plain", **over).train()
    sfpo = _trainer(SFPOGRPOTrainer, tmp_path, "sfpo", sfpo={"K": 1}, **{**over, "max_steps": 2})
    with caplog.at_level(logging.WARNING, logger="sfpo_lab.integrations.trl"):
        sfpo.train(resume_from_checkpoint=str(tmp_path / "plain" / "checkpoint-1"))
    assert "has no sfpo_state.json (a plain GRPOTrainer checkpoint?)" in caplog.text
    assert sfpo.sfpo.s == 1  # SFPO counts from there: one iteration run after the resume
