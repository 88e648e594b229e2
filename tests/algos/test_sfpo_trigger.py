"""Entropy trigger, alpha schedule and state_dict round trip of the SFPO engine."""

import copy
import io
import math

import pytest
import torch

from sfpo_lab.algos import SFPO, EntropyTrigger

from ._problem import closure_for, make_batches, make_optimizer, make_params


def test_zscore_hand_value_and_warm_up():
    trig = EntropyTrigger(window=3, tau=1.0)
    assert math.isnan(trig.update(1.0)[0]) and math.isnan(trig.update(2.0)[0])
    z, fired = trig.update(3.0)  # window [1, 2, 3]: mean 2, population std sqrt(2/3)
    assert z == pytest.approx(1 / (math.sqrt(2 / 3) + 1e-9)) and fired
    z, _ = trig.update(2.0)  # window [2, 3, 2]
    assert z == pytest.approx((2 - 7 / 3) / (math.sqrt(2 / 9) + 1e-9))


def test_constant_window_gives_zero_not_nan():
    trig = EntropyTrigger(window=4)
    for _ in range(6):
        z, fired = trig.update(0.7)
    assert z == 0.0 and not fired


def test_non_finite_entropy_is_ignored():
    trig = EntropyTrigger(window=2)
    trig.update(1.0)
    assert trig.update(float("nan")) == (pytest.approx(float("nan"), nan_ok=True), False)
    assert trig.history == [1.0]


# 40 flat values; a drop at 40 (z = -sqrt(29)); back to flat; a spike at 50. A spike
# during warm-up (index 10) must not count, and leaves the window by index 40.
def crafted_series():
    series = [1.0] * 60
    series[10], series[40], series[50] = 5.0, 0.5, 1.5
    return series


@pytest.mark.parametrize(("mode", "fires_at"), [("upper", 50), ("abs", 40)])
def test_trigger_fires_at_predicted_iteration(mode, fires_at):
    params = make_params()
    opt = make_optimizer("adamw", params)
    sfpo = SFPO(opt, K=2, alpha=0.8, trigger=EntropyTrigger(window=30, tau=1.0, mode=mode))
    (batch,) = make_batches(iters=1)
    steps = []
    original_step = opt.step

    def counting_step(*args, **kwargs):
        steps[-1] += 1
        return original_step(*args, **kwargs)

    opt.step = counting_step
    for s, h in enumerate(crafted_series()):
        steps.append(0)
        stats = sfpo.step(closure_for(params, opt, batch))
        out = sfpo.observe_entropy(torch.tensor(h))
        assert stats["iteration"] == s
        assert stats["alpha"] == (0.8 if s <= fires_at else 0.0)
        if s < 29:
            assert math.isnan(out["z"])
        assert out["triggered"] == float(s >= fires_at)
    assert sfpo.stop_step == fires_at + 1
    assert steps == [3] * (fires_at + 1) + [1] * (60 - fires_at - 1)  # then plain GRPO


def test_z_values_of_the_crafted_series():
    trig = EntropyTrigger(window=30, mode="abs")
    zs = [trig.update(h)[0] for h in crafted_series()]
    assert zs[40] == pytest.approx(-math.sqrt(29), rel=1e-6)
    assert zs[50] == pytest.approx(0.5 / math.sqrt(0.5 / 30), rel=1e-6)
    assert max(abs(z) for z in zs[29:40]) < 1.0


def test_trigger_none_keeps_alpha_forever():
    sfpo = SFPO(make_optimizer("sgd", make_params()), alpha=0.7, trigger=None)
    for h in [1.0] * 40 + [100.0, -100.0]:
        out = sfpo.observe_entropy(h)
        sfpo.s += 1
    assert sfpo.alpha == 0.7 and sfpo.stop_step is None and math.isnan(out["z"])


def fire_at(sfpo, s_fire):
    """Step with window-2 entropies 1, 1, ..., 2 so the trigger fires at iteration s_fire
    (z = 0.5 / (0.5 + 1e-9), just under 1)."""
    params = sfpo._params
    batch = make_batches(iters=1)[0]
    alphas = []
    for s in range(s_fire + 6):
        alphas.append(sfpo.step(closure_for(params, sfpo.optimizer, batch))["alpha"])
        sfpo.observe_entropy(2.0 if s == s_fire else 1.0)
    return alphas


def test_linear_decay_values():
    params = make_params()
    trig = EntropyTrigger(window=2, tau=0.5)  # window 2: |z| < 1 always, so tau < 1
    sfpo = SFPO(
        make_optimizer("sgd", params),
        K=1,
        alpha=0.8,
        trigger=trig,
        decay="linear",
        decay_steps=4,
        params=params,
    )
    alphas = fire_at(sfpo, 4)
    assert sfpo.stop_step == 5
    assert alphas == pytest.approx([0.8] * 5 + [0.6, 0.4, 0.2, 0.0, 0.0])
    assert [sfpo.alpha_at(s) for s in (4, 5, 8, 100)] == pytest.approx([0.8, 0.6, 0.0, 0.0])


def test_linear_decay_of_one_step_equals_zero_decay():
    runs = []
    for decay, steps in (("linear", 1), ("zero", 0)):
        params = make_params()
        sfpo = SFPO(
            make_optimizer("adamw", params),
            K=2,
            alpha=0.5,
            trigger=EntropyTrigger(window=2, tau=0.5),
            decay=decay,
            decay_steps=steps,
            params=params,
        )
        runs.append((fire_at(sfpo, 3), [p.detach().clone() for p in params]))
        assert sfpo.stop_step == 4
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))


def _run(sfpo, params, opt, batches, entropies):
    out = []
    for batch, h in zip(batches, entropies, strict=True):
        out.append(sfpo.step(closure_for(params, opt, batch))["alpha"])
        sfpo.observe_entropy(h)
    return out


def test_state_dict_round_trip_mid_run_continues_identically():
    batches = make_batches(iters=12)
    entropies = [1.0, 1.1, 1.0, 1.1, 1.0, 1.1, 1.0, 1.1, 3.0, 1.0, 1.0, 1.0]
    params = make_params()
    opt = make_optimizer("adamw", params)

    def new_engine(o):
        trig = EntropyTrigger(window=4)
        return SFPO(o, K=2, alpha=0.6, trigger=trig, decay="linear", decay_steps=3)

    sfpo = new_engine(opt)
    _run(sfpo, params, opt, batches[:6], entropies[:6])

    buf = io.BytesIO()
    torch.save({"engine": sfpo.state_dict(), "opt": opt.state_dict()}, buf)
    saved_params = [p.detach().clone() for p in params]
    alphas_a = _run(sfpo, params, opt, batches[6:], entropies[6:])

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    params_b = [torch.nn.Parameter(t) for t in saved_params]
    opt_b = make_optimizer("adamw", params_b)
    opt_b.load_state_dict(ckpt["opt"])
    sfpo_b = new_engine(opt_b)
    sfpo_b.load_state_dict(copy.deepcopy(ckpt["engine"]))
    assert sfpo_b.s == 6 and sfpo_b.trigger.history == [1.0, 1.1, 1.0, 1.1]
    alphas_b = _run(sfpo_b, params_b, opt_b, batches[6:], entropies[6:])

    assert alphas_a == alphas_b and alphas_a[3:] == pytest.approx([0.4, 0.2, 0.0])
    assert sfpo_b.stop_step == sfpo.stop_step == 9
    assert all(torch.equal(a, b) for a, b in zip(params, params_b, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"K": -1}, r"K .*>= 0"),
        ({"K": 1.5}, r"K .*>= 0"),
        ({"K": True}, r"K .*>= 0"),
        ({"alpha": -0.1}, r"alpha .*\[0, 1\]"),
        ({"alpha": 1.1}, r"alpha .*\[0, 1\]"),
        ({"alpha": float("nan")}, r"alpha .*\[0, 1\]"),
        ({"decay": "cosine"}, r"decay .*zero.*linear"),
        ({"decay": "linear", "decay_steps": 0}, r"decay_steps .*>= 1"),
        ({"decay_steps": -2}, r"decay_steps .*>= 0"),
        ({"trigger": "entropy"}, "trigger"),
    ],
)
def test_bad_engine_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SFPO(make_optimizer("sgd", make_params()), **kwargs)


def test_bad_optimizer():
    with pytest.raises(ValueError, match="optimizer"):
        SFPO(object())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 1}, r"window .*>= 2"),
        ({"window": 2.5}, r"window .*>= 2"),
        ({"tau": 0}, r"tau .*> 0"),
        ({"tau": -1.0}, r"tau .*> 0"),
        ({"tau": float("inf")}, r"tau .*> 0"),
        ({"mode": "lower"}, r"mode .*upper.*abs"),
    ],
)
def test_bad_trigger_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EntropyTrigger(**kwargs)
