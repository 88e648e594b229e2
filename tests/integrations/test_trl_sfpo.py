"""SFPO on TRL's GRPOTrainer: alpha = 0 is TRL step for step; alpha > 0 equals this kit's
engine on the same batches; checkpoints keep the SFPO state (tiny Qwen2, CPU, no downloads)."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("trl")

from trl import GRPOTrainer  # noqa: E402

from sfpo_lab.algos import SFPO  # noqa: E402
from sfpo_lab.config.algo import ConfigError  # noqa: E402
from sfpo_lab.integrations.trl import SFPOGRPOTrainer  # noqa: E402

from . import _tiny_trl as T  # noqa: E402

pytestmark = pytest.mark.slow


def _trainer(cls, tmp_path, name, sfpo=None, trainer_kw=None, **overrides):
    tok = T.tokenizer(tmp_path)
    kw = {"sfpo": sfpo, **(trainer_kw or {})} if cls is not GRPOTrainer else {}
    return cls(
        model=T.model(tok),
        reward_funcs=T.reward,
        args=T.args(tmp_path / name, **overrides),
        train_dataset=T.dataset(),
        processing_class=tok,
        **kw,
    )


def _weights(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_alpha_zero_is_plain_grpo_step_for_step(tmp_path):
    # 2 micro-steps of gradient accumulation per optimizer step; one generation per step
    over = {"gradient_accumulation_steps": 2, "per_device_train_batch_size": 2, "max_steps": 3}
    plain = _trainer(GRPOTrainer, tmp_path, "plain", **over)
    plain.train()
    sfpo = _trainer(SFPOGRPOTrainer, tmp_path, "sfpo", sfpo={"alpha": 0.0}, **over)
    sfpo.train()
    assert sfpo.sfpo.s == 3
    before = _trainer(GRPOTrainer, tmp_path, "init")
    moved = [not torch.equal(a, b) for a, b in zip(_weights(plain), _weights(before), strict=True)]
    assert any(moved)  # the comparison below is not between two untouched models
    for a, b in zip(_weights(plain), _weights(sfpo), strict=True):
        assert torch.equal(a, b)


class _Recording(SFPOGRPOTrainer):
    """Keeps every generation batch (slices with the old log-probs at theta0) it trained on."""

    def _start_iteration(self):
        theta0 = [p.detach().clone() for p in self.model.parameters()]
        super()._start_iteration()  # adds the old log-probs at theta0, runs Stages I and II
        self.batches = getattr(self, "batches", [])
        self.batches.append([dict(b) for b in self._buffered_inputs])
        self.theta0s = [*getattr(self, "theta0s", []), theta0]


def _dapo_loss(model, inputs, ga, spg, eps=0.2):
    """TRL's default loss_type="dapo" written out: token sum of the clipped surrogate over the
    slice / (completion tokens of the whole generation batch x ga / spg), one process.

    inputs: prompt_ids/mask [B, P], completion_ids/mask [B, W], advantages [B],
    old_per_token_logps [B, W], num_items_in_batch (scalar)."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    att = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    width = inputs["completion_ids"].size(1)
    logits = model(input_ids=ids, attention_mask=att).logits[:, -width - 1 : -1].float()
    logps = logits.log_softmax(-1).gather(-1, inputs["completion_ids"][..., None]).squeeze(-1)
    ratio = torch.exp(logps - inputs["old_per_token_logps"])
    adv = inputs["advantages"][:, None]
    per_tok = -torch.min(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
    mask = inputs["completion_mask"].float()
    return (per_tok * mask).sum() / (inputs["num_items_in_batch"].clamp(min=1.0) * ga / spg)


def _engine_run(tok, batches, optim, state, lr):
    """This kit's engine, same start, same batches; TRL's inner loop written out by hand."""
    model = T.model(tok)
    params = list(model.parameters())
    if optim == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    else:
        opt = torch.optim.SGD(params, lr=lr)
    engine = SFPO(opt, K=2, alpha=0.6, optimizer_state=state)
    for batch in batches:

        def one_pass(batch=batch):
            for inputs in batch:  # gradient_accumulation_steps = 1: a step per slice
                opt.zero_grad()
                _dapo_loss(model, inputs, ga=1, spg=2).backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)  # TRL's max_grad_norm
                opt.step()

        engine.step(update=one_pass)
    return [p.detach() for p in params]


def _max_diff(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("optim", "state", "other"),
    [("sgd", "keep", None), ("adamw", "keep", "reset"), ("adamw", "reset", "keep")],
)
def test_alpha_positive_equals_the_kit_engine(tmp_path, optim, state, other):
    # 2 slices per generation batch, one optimizer step each: a fast step = 2 optimizer steps
    lr = 0.05 if optim == "sgd" else 0.002
    over = {"steps_per_generation": 2, "per_device_train_batch_size": 4, "max_steps": 6}
    over |= {"optim": "sgd" if optim == "sgd" else "adamw_torch", "learning_rate": lr}
    cfg = {"K": 2, "alpha": 0.6, "optimizer_state_after_fast": state}
    cfg["entropy_control"] = {"enabled": False}
    trl = _trainer(_Recording, tmp_path, "trl", sfpo=cfg, **over)
    trl.train()
    assert len(trl.batches) == 3 and trl.sfpo.s == 3
    tok = T.tokenizer(tmp_path)
    ours = _engine_run(tok, trl.batches, optim, state, lr)
    # SGD is linear in the gradient: float noise stays at round-off. Adam's m/sqrt(v) turns
    # round-off in near-zero gradient entries into O(lr) steps, so allow lr / 20 and show
    # that the other optimizer-state setting is far outside that
    tol = 1e-6 if optim == "sgd" else lr / 20
    assert _max_diff(_weights(trl), ours) < tol
    if other is not None:
        assert _max_diff(_weights(trl), _engine_run(tok, trl.batches, optim, other, lr)) > 5 * tol


def test_checkpoint_resume_keeps_sfpo_state(tmp_path):
    cfg = {"K": 1, "alpha": 0.5, "entropy_control": {"window": 2, "tau": 0.01}}
    over = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2}
    full = _trainer(SFPOGRPOTrainer, tmp_path, "full", sfpo=cfg, **over)
    full.train()
    ckpt = tmp_path / "full" / "checkpoint-2"
    saved = json.loads((ckpt / "sfpo_state.json").read_text())["engine"]
    assert saved["s"] == 2 and len(saved["trigger"]["history"]) == 2

    resumed = _trainer(SFPOGRPOTrainer, tmp_path, "resumed", sfpo=cfg, **over)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.sfpo.state_dict() == full.sfpo.state_dict()
    for a, b in zip(_weights(full), _weights(resumed), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)

    other = _trainer(SFPOGRPOTrainer, tmp_path, "other", sfpo={**cfg, "K": 2}, **over)
    with pytest.raises(ValueError, match="trained with sfpo="):
        other.train(resume_from_checkpoint=str(ckpt))


def test_trigger_fires_and_alpha_drops_to_zero(tmp_path):
    # window 2, tiny tau: the second iteration's entropy z-score crosses it unless H is flat
    cfg = {"K": 1, "alpha": 0.5, "entropy_control": {"window": 2, "tau": 1e-6}}
    kw = {"log_kl_theta0": True}
    tr = _trainer(SFPOGRPOTrainer, tmp_path, "trig", sfpo=cfg, trainer_kw=kw, max_steps=4)
    tr.train()
    logs = [h for h in tr.state.log_history if "sfpo/alpha" in h]
    alphas = [h["sfpo/alpha"] for h in logs]
    stop = tr.sfpo.stop_step
    assert stop is not None and alphas == [0.5 if s < stop else 0.0 for s in range(4)]
    # one optimizer step per iteration here: trainer step = iteration + 1; the first row
    # with alpha = 0 is logged at that trainer step
    assert logs[-1]["sfpo/stop_step"] == stop
    assert logs[-1]["sfpo/stop_trainer_step"] == stop + 1 == logs[stop]["step"]
    assert all(
        h["sfpo/fast_steps"] == (1.0 if a else 0.0) for h, a in zip(logs, alphas, strict=True)
    )
    assert math.isfinite(logs[0]["sfpo/kl_theta0"])


@pytest.mark.parametrize(
    ("over", "sfpo", "match"),
    [
        ({"num_iterations": 2}, None, "num_iterations=2"),
        ({}, {"slow_correction": False}, "slow_correction"),
        ({}, {"lr_schedule": "per_step"}, "lr_schedule"),
    ],
)
def test_refuses_settings_it_cannot_map(tmp_path, over, sfpo, match):
    with pytest.raises(ValueError, match=match):
        _trainer(SFPOGRPOTrainer, tmp_path, "bad", sfpo=sfpo, **over)


def test_bad_sfpo_value_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="sfpo.slow_old_logprobs"):
        _trainer(SFPOGRPOTrainer, tmp_path, "bad", sfpo={"slow_old_logprobs": "theta1"})
