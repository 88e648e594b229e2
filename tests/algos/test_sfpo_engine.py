"""The SFPO engine against naive references and its exact equivalences (Alg. 1, Eq. 12)."""

import copy
import math

import pytest
import torch

from sfpo_lab.algos import SFPO, EntropyTrigger

from ._problem import (
    LR,
    closure_for,
    grads,
    init_theta,
    make_batches,
    make_optimizer,
    make_params,
    reference_sfpo,
)


def run_engine(kind, K, alpha, slow, batches, **engine_kwargs):
    params = make_params()
    opt = make_optimizer(kind, params)
    sfpo = SFPO(opt, K=K, alpha=alpha, slow_correction=slow, **engine_kwargs)
    stats = [sfpo.step(closure_for(params, opt, batch)) for batch in batches]
    return params, stats


def plain_steps(kind, n_steps, batches):
    """n_steps ordinary optimizer steps per batch, no engine."""
    params = make_params()
    opt = make_optimizer(kind, params)
    for batch in batches:
        for _ in range(n_steps):
            closure_for(params, opt, batch)()
            opt.step()
    return params


def assert_same(params, theta, exact=False):
    for p, t in zip(params, theta, strict=True):
        if exact:
            assert torch.equal(p.detach(), t.detach())
        else:
            torch.testing.assert_close(p.detach(), t.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
@pytest.mark.parametrize("K", [0, 1, 3, 7])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("slow", [True, False])
def test_engine_matches_naive_reference(kind, K, alpha, slow):
    batches = make_batches()
    params, stats = run_engine(kind, K, alpha, slow, batches)
    assert_same(params, reference_sfpo(kind, K, alpha, slow, batches))
    passes = 1 if alpha == 0 else K + slow
    assert all(s["updates"] == passes for s in stats)


@pytest.mark.parametrize("K", [0, 2, 5])
def test_momentum_state_carries_through_all_stages(K):
    batches = make_batches(seed=3)
    params, _ = run_engine("sgd_momentum", K, 0.6, True, batches)
    assert_same(params, reference_sfpo("sgd_momentum", K, 0.6, True, batches))


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_alpha_zero_is_one_optimizer_step(kind):
    batches = make_batches()
    params, stats = run_engine(kind, 3, 0.0, True, batches)
    assert_same(params, plain_steps(kind, 1, batches), exact=True)
    assert stats[0]["snapshot_bytes"] == 0 and stats[0]["fast_steps"] == 0


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
@pytest.mark.parametrize("K", [1, 3, 7])
def test_alpha_one_without_slow_is_k_plain_steps(kind, K):
    batches = make_batches()
    params, _ = run_engine(kind, K, 1.0, False, batches)
    assert_same(params, plain_steps(kind, K, batches), exact=True)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
@pytest.mark.parametrize("K", [0, 1, 3, 7])
def test_alpha_one_with_slow_is_k_plus_one_plain_steps(kind, K):
    batches = make_batches()
    params, _ = run_engine(kind, K, 1.0, True, batches)
    assert_same(params, plain_steps(kind, K + 1, batches), exact=True)


@pytest.mark.parametrize("K", [1, 3, 7])
@pytest.mark.parametrize("alpha", [0.3, 0.8])
def test_unified_sgd_update_eq12(K, alpha):
    """theta_{s+1} = theta0 - eta [alpha sum_k grad L(theta_k) + grad L(theta~)], with the
    gradients the engine's own closure saw."""
    (batch,) = make_batches(iters=1)
    params = make_params()
    opt = make_optimizer("sgd", params)
    theta0 = [p.detach().clone() for p in params]
    seen = []
    SFPO(opt, K=K, alpha=alpha).step(closure_for(params, opt, batch, log=seen))
    assert len(seen) == K + 1
    eta = LR["sgd"]
    for i, p in enumerate(params):
        fast = sum(g[i] for g in seen[:K])
        expected = theta0[i] - eta * (alpha * fast + seen[K][i])
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14)
    # and the slow gradient was taken at the repositioned point theta~
    theta = init_theta()
    for _ in range(K):
        theta = [t - eta * g for t, g in zip(theta, grads(theta, batch), strict=True)]
    tilde = [t0 + alpha * (tk - t0) for t0, tk in zip(init_theta(), theta, strict=True)]
    for got, want in zip(seen[K], grads(tilde, batch), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_update_fn_runs_whole_passes_and_averages_metrics():
    """One fast step = one pass of two mini-batch SGD steps (the authors' setup)."""
    batches = make_batches()
    params = make_params()
    opt = make_optimizer("sgd", params)
    sfpo = SFPO(opt, K=2, alpha=0.5)
    calls = []

    def one_pass(batch):
        x, y = batch
        for half in (slice(0, 8), slice(8, 16)):
            closure_for(params, opt, (x[half], y[half]))()
            opt.step()
        calls.append(1)
        return {"loss": float(len(calls)), "grad_norm": 2.0 * len(calls)}

    stats = sfpo.step(update=lambda: one_pass(batches[0]))
    assert len(calls) == 3 and stats["updates"] == 3
    assert stats["loss"] == pytest.approx(2.0) and stats["grad_norm"] == pytest.approx(4.0)
    assert stats["fast_steps"] == 2 and stats["slow_steps"] == 1

    theta = init_theta()
    x, y = batches[0]

    def ref_pass(theta):
        for half in (slice(0, 8), slice(8, 16)):
            g = grads(theta, (x[half], y[half]))
            theta = [t - LR["sgd"] * gi for t, gi in zip(theta, g, strict=True)]
        return theta

    theta0 = [t.clone() for t in theta]
    theta = ref_pass(ref_pass(theta))
    theta = ref_pass([t0 + 0.5 * (t - t0) for t0, t in zip(theta0, theta, strict=True)])
    assert_same(params, theta)


def test_step_stats_are_plain_floats_with_expected_keys():
    _, stats = run_engine("adamw", 3, 0.8, True, make_batches(iters=1))
    s = stats[0]
    assert all(isinstance(v, float) for v in s.values())
    expected = {"alpha", "fast_steps", "slow_steps", "updates", "skipped_steps", "loss"}
    expected |= {"reposition_s", "snapshot_bytes", "restored_theta0", "iteration"}
    assert expected <= set(s)
    assert (s["alpha"], s["fast_steps"], s["slow_steps"], s["updates"]) == (0.8, 3, 1, 4)
    assert s["snapshot_bytes"] == (5 + 1) * 8 and s["skipped_steps"] == 0
    assert math.isfinite(s["loss"]) and s["reposition_s"] >= 0


def test_before_step_hook_runs_every_pass_and_can_skip():
    params = make_params()
    opt = make_optimizer("sgd", params)
    calls = []

    def hook():
        calls.append(1)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        return len(calls) != 2  # skip the second optimizer step

    sfpo = SFPO(opt, K=3, alpha=1.0, slow_correction=False, before_step=hook)
    stats = sfpo.step(closure_for(params, opt, make_batches(iters=1)[0]))
    assert len(calls) == 3 and stats["skipped_steps"] == 1 and stats["updates"] == 3
    reference = make_params()
    ref_opt = make_optimizer("sgd", reference)
    for _ in range(2):  # two clipped steps == what the engine applied
        closure_for(reference, ref_opt, make_batches(iters=1)[0])()
        torch.nn.utils.clip_grad_norm_(reference, 1.0)
        ref_opt.step()
    assert_same(params, reference)


def test_non_finite_loss_skips_the_step():
    params = make_params()
    opt = make_optimizer("adamw", params)
    batch = make_batches(iters=1)[0]
    good = closure_for(params, opt, batch)
    count = []

    def closure():
        count.append(1)
        loss = good()
        if len(count) == 2:
            for p in params:
                p.grad.fill_(float("nan"))
            return loss * float("nan")
        return loss

    stats = SFPO(opt, K=3, alpha=1.0, slow_correction=False).step(closure)
    assert stats["skipped_steps"] == 1
    assert opt.state[params[0]]["step"].item() == 2
    assert all(torch.isfinite(p).all() for p in params)


def test_non_finite_params_after_iteration_restore_theta0():
    params = make_params()
    opt = make_optimizer("sgd", params)
    theta0 = [p.detach().clone() for p in params]
    batch = make_batches(iters=1)[0]

    def closure():  # finite loss, poisoned gradient
        loss = closure_for(params, opt, batch)()
        params[0].grad[0] = float("inf")
        return loss

    stats = SFPO(opt, K=2, alpha=0.5).step(closure)
    assert stats["restored_theta0"] == 1.0
    assert_same(params, theta0, exact=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, 4097, -1])
def test_the_finite_check_finds_one_bad_entry_anywhere_in_a_long_tensor(bad, where):
    """The end-of-iteration check (min/max on CPU) sees a single NaN / inf / -inf at the start,
    inside or at the end of a tensor long enough for the vectorised reduction, and only then."""
    params = [torch.nn.Parameter(torch.randn(10_007)), torch.nn.Parameter(torch.randn(3))]
    sfpo = SFPO(torch.optim.SGD(params, lr=0.0), K=1, alpha=0.5)
    sfpo.begin()
    assert sfpo._params_finite()
    with torch.no_grad():
        params[0][where] = bad
    assert not sfpo._params_finite()


def test_explicit_params_list():
    batches = make_batches()
    params = make_params()
    opt = make_optimizer("adamw", params)
    sfpo = SFPO(opt, K=3, alpha=0.3, params=list(params))
    for batch in batches:
        sfpo.step(closure_for(params, opt, batch))
    assert_same(params, reference_sfpo("adamw", 3, 0.3, True, batches))
    only_w = SFPO(make_optimizer("sgd", params), K=1, alpha=0.5, params=[params[0]])
    only_w.step(closure_for(params, only_w.optimizer, batches[0]))
    assert only_w.snapshot_bytes == 5 * 8


def test_step_needs_exactly_one_of_closure_and_update():
    params = make_params()
    sfpo = SFPO(make_optimizer("sgd", params))
    with pytest.raises(ValueError, match="closure or update"):
        sfpo.step()
    with pytest.raises(ValueError, match="closure or update"):
        sfpo.step(lambda: None, update=lambda: None)


def test_optimizer_state_is_neither_snapshotted_nor_reset():
    params = make_params()
    opt = make_optimizer("adamw", params)
    sfpo = SFPO(opt, K=3, alpha=0.5)
    batches = make_batches()
    sfpo.step(closure_for(params, opt, batches[0]))
    state = copy.deepcopy(opt.state[params[0]])
    assert state["step"].item() == 4  # K + 1 AdamW steps, moments kept
    sfpo.step(closure_for(params, opt, batches[1]))
    assert opt.state[params[0]]["step"].item() == 8


def test_empty_parameters_are_fine():
    params = make_params() + [torch.nn.Parameter(torch.zeros(0, dtype=torch.float64))]
    opt = make_optimizer("adamw", params)
    batches = make_batches()
    sfpo = SFPO(opt, K=3, alpha=0.3)
    for batch in batches:
        stats = sfpo.step(closure_for(params[:2], opt, batch))
    assert stats["restored_theta0"] == 0.0
    assert_same(params[:2], reference_sfpo("adamw", 3, 0.3, True, batches))


def run_staged(kind, K, alpha, slow, batches, trigger_at=None):
    """The same iterations through begin/fast/reposition/slow/end (how module.py reads)."""
    params = make_params()
    opt = make_optimizer(kind, params)
    sfpo = SFPO(opt, K=K, alpha=alpha, slow_correction=slow)
    ends = []
    for s, batch in enumerate(batches):
        closure = closure_for(params, opt, batch)

        def one_pass(closure=closure):
            loss = closure()
            opt.step()
            return {"loss": loss.item(), "skipped_steps": 0.0}

        held = sfpo.begin()
        fast = sfpo.fast(one_pass) if held else {}
        sfpo.reposition()
        slow_stats = sfpo.slow(one_pass)
        ends.append((held, fast, slow_stats, sfpo.end()))
        if s == trigger_at:
            sfpo.stop_step = s + 1  # as observe_entropy would
    return params, ends


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("slow", [True, False])
def test_staged_api_equals_step(alpha, slow):
    batches = make_batches()
    staged, ends = run_staged("adamw", 3, alpha, slow, batches)
    stepped, _ = run_engine("adamw", 3, alpha, slow, batches)
    assert_same(staged, stepped, exact=True)
    held, fast, slow_stats, end = ends[0]
    assert held == (alpha > 0)
    assert fast.get("updates", 0) == (3 if alpha > 0 else 0)
    assert slow_stats.get("updates", 0) == (1 if (slow or alpha == 0) else 0)
    assert end["fast_steps"] == (3 if alpha > 0 else 0) and end["alpha"] == alpha


def test_staged_api_after_trigger_is_plain_grpo():
    batches = make_batches(iters=4)
    params, ends = run_staged("adamw", 3, 0.8, True, batches, trigger_at=1)
    assert [e[0] for e in ends] == [True, True, False, False]
    assert [e[2]["updates"] for e in ends] == [1, 1, 1, 1]
    assert [e[3]["snapshot_bytes"] for e in ends][2:] == [0.0, 0.0]


def test_staged_api_order_is_enforced():
    params = make_params()
    sfpo = SFPO(make_optimizer("sgd", params), K=1, alpha=0.5)
    with pytest.raises(RuntimeError, match="begin"):
        sfpo.fast(lambda: None)
    with pytest.raises(RuntimeError, match="begin"):
        sfpo.end()
    sfpo.begin()
    with pytest.raises(RuntimeError, match="twice"):
        sfpo.begin()
    with pytest.raises(ValueError, match="closure or update"):
        sfpo.slow()


def test_failed_step_can_be_retried():
    params = make_params()
    opt = make_optimizer("sgd", params)
    sfpo = SFPO(opt, K=2, alpha=0.5)

    def boom():
        raise KeyError("data loader died")

    with pytest.raises(KeyError):
        sfpo.step(boom)
    assert sfpo.s == 0
    sfpo.step(closure_for(params, opt, make_batches(iters=1)[0]))
    assert sfpo.s == 1


def test_skipped_steps_reported_by_update_fn_are_summed():
    params = make_params()
    sfpo = SFPO(make_optimizer("sgd", params), K=3, alpha=0.5)
    stats = sfpo.step(update=lambda: {"skipped_steps": 1.0, "grad_norm": 2.0})
    assert stats["skipped_steps"] == 4.0 and stats["grad_norm"] == 2.0
    assert math.isnan(stats["loss"])


def test_observe_entropy_mid_iteration_targets_the_next_one():
    params = make_params()
    opt = make_optimizer("sgd", params)
    sfpo = SFPO(opt, K=1, alpha=0.5, trigger=EntropyTrigger(window=2, tau=0.5))
    sfpo.step(closure_for(params, opt, make_batches(iters=1)[0]))
    assert sfpo.observe_entropy(1.0)["alpha_used"] == 0.5  # iteration 0, after step()
    sfpo.begin()  # iteration 1 in progress
    out = sfpo.observe_entropy(2.0)
    assert sfpo.stop_step == 2 and out["alpha_used"] == 0.5 and out["alpha_next"] == 0.0
    assert out["stop_step"] == 2.0 and out["triggered"] == 1.0
    sfpo.end()
    assert sfpo.alpha == 0.0
