"""Fast tests written for the mutation check (tests/mutation/): each pins a quantity that a
listed bug changes and no older fast test compared against an independent reference.

``UpdatePass`` (micro-batched, global denominators, the registered policy loss) must produce
exactly the gradient of the GRPO objective written out by hand on the whole batch: clipped
surrogate of Eq. 1 with ratios against theta0's log-probs, token-mean over the response mask,
one process. This catches a sign-flipped trainer loss, a dp_size or token denominator off by a
factor, old log-probs recomputed at the current weights, and a shifted loss mask.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sfpo_lab.config import RunConfig, UpdateConfig
from sfpo_lab.training.experience import response_logits, response_logprobs
from sfpo_lab.training.stages import UpdatePass
from tests.test_packing import make_experience
from tests.test_update_pass import Host, make_model

PROMPTS = [2, 5, 1, 3, 4, 2]
RESPONSES = [6, 1, 3, 2, 5, 4]  # unequal: micro-batches of 2 rows hold 7, 5 and 9 tokens
CLIP = 0.2


def grpo_run() -> RunConfig:
    run = RunConfig()
    return replace(
        run,
        update=UpdateConfig(micro_batch_size=2, ppo_mini_batches=1),
        optim=replace(run.optim, grad_clip=0.0),
        loss=replace(run.loss, entropy_coeff=0.0, kl_coef=0.0, clip_low=CLIP, clip_high=CLIP),
    )


def theta0_experience():
    """Responses of unequal lengths; old log-probs = theta0's own, shifted by U(-0.4, 0.4) per
    token so that the ratio is 0.67..1.49: some tokens clipped above, some below, some not."""
    exp = make_experience(PROMPTS, RESPONSES, p=6, r=7, seed=4)
    lp, _ = response_logprobs(make_model(), exp)
    g = torch.Generator().manual_seed(11)
    exp.old_logprobs = lp + 0.8 * (torch.rand(lp.shape, generator=g) - 0.5)
    return exp


def hand_loss(model, exp) -> tuple[torch.Tensor, float]:
    """Eq. 1 on the whole batch, token-mean: sum_t max(-A r_t, -A clip(r_t)) / #tokens."""
    logits = response_logits(model, exp).double()
    labels = exp.input_ids[:, -exp.response_len :]
    logp = logits.log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1)
    mask = exp.response_mask.bool()
    ratio = torch.exp(logp - exp.old_logprobs.double())
    adv = exp.advantages.double()[:, None]
    per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - CLIP, 1 + CLIP))
    loss = torch.where(mask, per_token, 0.0).sum() / mask.sum()
    clipped = ((ratio < 1 - CLIP) | (ratio > 1 + CLIP))[mask].double().mean()
    return loss, float(clipped)


def test_update_pass_gradient_is_the_hand_assembled_grpo_gradient():
    exp = theta0_experience()
    ref_model = make_model()
    loss, clipped = hand_loss(ref_model, exp)
    assert 0.1 < clipped < 0.9  # the clip is live on some tokens and not on others
    loss.backward()
    want = [p.grad.float() for p in ref_model.parameters()]

    host = Host(make_model(), grpo_run())
    stats = UpdatePass(host)(exp)
    (got,) = host.opt.steps  # one optimizer step: one mini-batch of 3 micro-batches
    assert stats["pg_loss"] == pytest.approx(loss.item(), rel=1e-5)
    norm = torch.cat([w.flatten() for w in want]).norm()
    assert stats["grad_norm"] == pytest.approx(float(norm), rel=1e-5)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7 * float(norm))
