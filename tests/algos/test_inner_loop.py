"""The inner-loop settings (``sfpo.optimizer_state_after_fast``, ``sfpo.slow_old_logprobs``,
``sfpo.lr_schedule``) and the per-phase metrics, each against a hand-written reference."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from sfpo_lab.algos import SFPO
from sfpo_lab.config import ConfigError, OptimConfig, RunConfig, SFPOConfig, UpdateConfig
from sfpo_lab.model.build import build_causal_lm, tiny_qwen2_config
from sfpo_lab.training.module import (
    lr_factor,
    phase_metrics,
    scheduler_steps_per_batch,
    sfpo_iteration,
)
from sfpo_lab.training.stages import UpdatePass, recompute_old_logprobs
from tests.test_packing import VOCAB, make_experience

from ._problem import (
    NaiveOptimizer,
    closure_for,
    grads,
    init_theta,
    make_batches,
    make_optimizer,
    make_params,
)

K, ALPHA = 3, 0.6


# ----------------------------------------------------------- optimizer state after Stage I
def reference(state, batches, K=K, alpha=ALPHA):
    """Alg. 1 with AdamW written out; the optimizer state after the fast steps is kept,
    replaced by a fresh one, or by the copy taken at theta0."""
    theta, opt = init_theta(), NaiveOptimizer("adamw", 2)
    for batch in batches:
        theta0, at_theta0 = [t.clone() for t in theta], copy.deepcopy(opt)
        for _ in range(K):
            theta = opt.update(theta, grads(theta, batch))
        theta = [t0 + alpha * (tk - t0) for t0, tk in zip(theta0, theta, strict=True)]
        if state == "reset":
            opt = NaiveOptimizer("adamw", 2)
        elif state == "restore_theta0":
            opt = at_theta0
        theta = opt.update(theta, grads(theta, batch))
    return theta


def engine_run(state, batches):
    params = make_params()
    opt = make_optimizer("adamw", params)
    sfpo = SFPO(opt, K=K, alpha=ALPHA, optimizer_state=state)
    for batch in batches:
        sfpo.step(closure_for(params, opt, batch))
    return params


@pytest.mark.parametrize("state", ["keep", "reset", "restore_theta0"])
def test_optimizer_state_after_fast_matches_reference(state):
    batches = make_batches()
    got = engine_run(state, batches)
    for p, t in zip(got, reference(state, batches), strict=True):
        torch.testing.assert_close(p.detach(), t, rtol=1e-10, atol=1e-12)
    others = [s for s in ("keep", "reset", "restore_theta0") if s != state]
    for other in others:  # the settings are distinguishable on this problem
        ref = reference(other, batches)
        assert (
            max(float((p.detach() - t).abs().max()) for p, t in zip(got, ref, strict=True)) > 1e-4
        )


def test_restore_theta0_keeps_the_current_learning_rate():
    params = make_params()
    opt = make_optimizer("adamw", params)
    sfpo = SFPO(opt, K=1, alpha=0.5, optimizer_state="restore_theta0")
    batch = make_batches()[0]
    sfpo.begin()
    sfpo.fast(closure=closure_for(params, opt, batch))
    opt.param_groups[0]["lr"] = 0.123  # a per-step schedule moved it during Stage I
    sfpo.reposition()
    assert opt.param_groups[0]["lr"] == 0.123
    assert all(opt.state[p] == {} or int(opt.state[p]["step"]) == 0 for p in params)
    sfpo.end()


def test_alpha_zero_leaves_the_optimizer_state_alone():
    params = make_params()
    opt = make_optimizer("adamw", params)
    sfpo = SFPO(opt, K=2, alpha=0.0, optimizer_state="reset")
    for batch in make_batches():
        sfpo.step(closure_for(params, opt, batch))
    assert int(opt.state[params[0]]["step"]) == 3  # one plain step per batch, never reset


def test_bad_optimizer_state_names_the_argument():
    with pytest.raises(ValueError, match="optimizer_state must be one of"):
        SFPO(make_optimizer("sgd", make_params()), optimizer_state="zero")


# ----------------------------------------------------------- old log-probs of the slow step
class Host:
    """What UpdatePass / recompute_old_logprobs read from SFPOModule, doing the real thing
    (one process: the strategy's reduce is the identity)."""

    def __init__(self, policy, run):
        self.policy, self.run_cfg, self.device = policy, run, torch.device("cpu")
        self.consecutive_skips = 0
        self.opt = torch.optim.SGD(policy.parameters(), lr=0.5)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda n: 1.0 / (1 + n))
        self.trainer = SimpleNamespace(
            world_size=1, strategy=SimpleNamespace(reduce=lambda t, **_: t)
        )

    def manual_backward(self, loss):
        loss.backward()

    def optimizers(self):
        return self.opt

    def lr_schedulers(self):
        return self.sched


def tiny_run(**sfpo) -> RunConfig:
    run = RunConfig()
    return replace(
        run,
        update=UpdateConfig(micro_batch_size=16, logits_chunk_tokens=5),
        optim=replace(run.optim, grad_clip=0.0),
        loss=replace(run.loss, entropy_coeff=0.0),
        sfpo=replace(run.sfpo, **sfpo),
    )


def hand_logprobs(model, exp):
    """[N, R] log-probs of the response tokens, written out (no micro-batching, no chunks)."""
    r = exp.response_mask.shape[1]
    logits = model(
        input_ids=exp.input_ids, attention_mask=exp.attention_mask, position_ids=exp.position_ids
    ).logits.float()
    lp = logits[:, -r - 1 : -1].log_softmax(-1)
    return lp.gather(-1, exp.input_ids[:, -r:, None]).squeeze(-1)


def make_host(**sfpo):
    torch.manual_seed(0)
    cfg = tiny_qwen2_config(VOCAB, hidden_size=32, num_layers=1, intermediate_size=64)
    model = build_causal_lm(cfg)
    exp = make_experience([2, 5, 1, 3], [6, 1, 3, 2], p=6, r=7, seed=4)
    with torch.no_grad():
        exp.old_logprobs = hand_logprobs(model, exp)  # the rollout-time log-probs at theta0
    return Host(model, tiny_run(**sfpo)), exp


@pytest.mark.parametrize("setting", ["theta0", "recompute"])
def test_slow_old_logprobs(setting):
    host, exp = make_host(K=2, alpha=ALPHA, slow_old_logprobs=setting)
    old0 = exp.old_logprobs.clone()
    seen = {}

    def before_slow():
        seen["theta"] = copy.deepcopy(host.policy.state_dict())  # theta~ after reposition
        return recompute_old_logprobs(host, exp)

    hook = before_slow if setting == "recompute" else None
    sfpo = SFPO(host.opt, K=2, alpha=ALPHA)
    fast, slow, end, passes = sfpo_iteration(sfpo, lambda: UpdatePass(host)(exp), hook)
    assert len(passes) == 3
    mask = exp.response_mask.float()
    if setting == "theta0":
        assert torch.equal(exp.old_logprobs, old0)
        return
    ref_model = copy.deepcopy(host.policy)
    ref_model.load_state_dict(seen["theta"])
    with torch.no_grad():
        at_tilde = hand_logprobs(ref_model, exp)
    torch.testing.assert_close(exp.old_logprobs * mask, at_tilde * mask, rtol=0, atol=1e-5)
    kl = float(((old0 - at_tilde) * mask).sum() / mask.sum())
    assert end["kl_theta0"] == pytest.approx(kl, abs=1e-6) and abs(kl) > 1e-4
    # the slow step's ratio starts at 1: its first mini-batch sees no KL to its old policy
    assert slow["ppo_kl_first"] == pytest.approx(0.0, abs=1e-6)
    m = phase_metrics(fast, slow, end)
    assert m["sfpo/kl_theta0"] == end["kl_theta0"]


def test_theta0_setting_reports_kl_of_the_repositioned_point():
    host, exp = make_host()
    old0 = exp.old_logprobs.clone()
    seen = {}

    def spy():  # read theta~, change nothing
        seen["theta"] = copy.deepcopy(host.policy.state_dict())
        return {}

    sfpo = SFPO(host.opt, K=2, alpha=ALPHA)
    fast, slow, end, _ = sfpo_iteration(sfpo, lambda: UpdatePass(host)(exp), spy)
    ref_model = copy.deepcopy(host.policy)
    ref_model.load_state_dict(seen["theta"])
    with torch.no_grad():
        at_tilde = hand_logprobs(ref_model, exp)
    mask = exp.response_mask.float()
    per_row = ((old0 - at_tilde) * mask).sum(-1) / mask.sum(-1)
    # one mini-batch, one micro-batch: ppo_kl = the token mean over the batch
    kl = float(((old0 - at_tilde) * mask).sum() / mask.sum())
    assert phase_metrics(fast, slow, end)["sfpo/kl_theta0"] == pytest.approx(kl, abs=1e-6)
    assert not torch.allclose(per_row, per_row.mean())  # rows differ: a real token mean


# ----------------------------------------------------------------------- LR schedule
def test_lr_factor_per_batch_and_per_step_against_hand_values():
    o = OptimConfig(scheduler="cosine", warmup_iterations=2, min_lr_ratio=0.1)
    # per batch, 6 iterations: warm-up 1/2, 2/2, then cosine over the 4 remaining
    want = [0.5, 1.0] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / 4)) for i in range(4)]
    assert [lr_factor(i, o, 6) for i in range(6)] == pytest.approx(want)
    # per step with 4 optimizer steps per batch: warm-up over 8 steps, cosine over 16
    got = [lr_factor(n, o, 6, per=4) for n in range(24)]
    want = [(n + 1) / 8 for n in range(8)]
    want += [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / 16)) for i in range(16)]
    assert got == pytest.approx(want)


def test_scheduler_steps_per_batch():
    base = RunConfig()
    upd = replace(base.update, ppo_mini_batches=2)
    sfpo = replace(base.sfpo, K=3, alpha=0.8, lr_schedule="per_step")
    assert scheduler_steps_per_batch(replace(base, update=upd, sfpo=sfpo)) == 8  # (3+1) x 2
    no_slow = replace(sfpo, slow_correction=False)
    assert scheduler_steps_per_batch(replace(base, update=upd, sfpo=no_slow)) == 6
    grpo = replace(sfpo, alpha=0.0)
    grpo_run = replace(base, algorithm="grpo", update=upd, sfpo=grpo)
    assert scheduler_steps_per_batch(grpo_run) == 2
    assert scheduler_steps_per_batch(base) == 1  # per_batch (authors)


@pytest.mark.parametrize(("schedule", "steps"), [("per_batch", 0), ("per_step", 2)])
def test_update_pass_steps_the_scheduler_per_optimizer_step(schedule, steps):
    host, exp = make_host(lr_schedule=schedule)
    host.run_cfg = replace(host.run_cfg, update=replace(host.run_cfg.update, ppo_mini_batches=2))
    UpdatePass(host)(exp)
    assert host.sched.last_epoch == steps
    assert host.opt.param_groups[0]["lr"] == pytest.approx(0.5 / (1 + steps))


# ----------------------------------------------------------------------- per-phase metrics
def test_phase_metrics_split_fast_and_slow():
    fast = {"pg_loss": 0.5, "pg_clipfrac": 0.1, "grad_norm": 2.0, "ppo_kl_first": 9.0}
    slow = {"pg_loss": -0.25, "pg_clipfrac": 0.3, "grad_norm": 1.0, "ppo_kl_first": 0.02}
    end = {"fast_steps": 3.0, "snapshot_bytes": 64.0}
    assert phase_metrics(fast, slow, end) == {
        "sfpo/fast_pg_loss": 0.5,
        "sfpo/fast_pg_clipfrac": 0.1,
        "sfpo/fast_grad_norm": 2.0,
        "sfpo/slow_pg_loss": -0.25,
        "sfpo/slow_pg_clipfrac": 0.3,
        "sfpo/slow_grad_norm": 1.0,
        "sfpo/kl_theta0": 0.02,
    }
    # alpha = 0 (GRPO / after the trigger): no fast phase, no reposition, no KL to theta0
    grpo = phase_metrics({}, slow, {"fast_steps": 0.0, "snapshot_bytes": 0.0})
    assert set(grpo) == {"sfpo/slow_pg_loss", "sfpo/slow_pg_clipfrac", "sfpo/slow_grad_norm"}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("optimizer_state_after_fast", "restore"),
        ("slow_old_logprobs", "theta1"),
        ("lr_schedule", "per_epoch"),
    ],
)
def test_invalid_inner_loop_setting_names_the_key(key, value):
    with pytest.raises(ConfigError, match=f"sfpo.{key}={value!r}"):
        SFPOConfig(**{key: value})
