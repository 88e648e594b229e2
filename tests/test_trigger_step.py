"""One trigger-step convention (docs/algorithm.md, "The trigger step"): iterations are counted
from 1 as logged (``step`` of metrics.csv, ``train/iteration``); ``stop_step`` = t is the
iteration whose entropy fired the trigger. Iterations 1..t ran SFPO with alpha0, t + 1 on run
alpha = 0, and the same t is logged as ``sfpo/stop_step`` from iteration t on and stored as
``stop_step`` (the engine's value that summary.json and the launcher's CSV write)."""

from __future__ import annotations

import math

import torch

from sfpo_lab.algos import SFPO, EntropyTrigger
from sfpo_lab.training.module import SFPOModule
from tests.algos._problem import closure_for, make_batches, make_optimizer, make_params

ENTROPY = [1.0, 1.0, 1.0, 1.0, 3.0, 1.0, 1.0]  # the spike at the 5th iteration fires


def test_stop_step_is_the_1_based_iteration_that_fired_everywhere():
    params = make_params()
    opt = make_optimizer("adamw", params)
    sfpo = SFPO(opt, K=2, alpha=0.8, trigger=EntropyTrigger(window=3, tau=1.0, mode="upper"))
    (batch,) = make_batches(iters=1)
    passes, rows = [], []
    original = opt.step

    def counting(*args, **kwargs):
        passes[-1] += 1
        return original(*args, **kwargs)

    opt.step = counting
    for iteration, h in enumerate(ENTROPY, start=1):  # as SFPOModule.training_step
        passes.append(0)
        sfpo.step(closure_for(params, opt, batch))
        metrics = SFPOModule._sfpo_metrics(None, sfpo.observe_entropy(torch.tensor(h)))
        rows.append({"step": iteration, **metrics})  # logged at step = train/iteration
    fired = next(r["step"] for r in rows if r["sfpo/z"] >= 1.0)
    assert fired == 5 == sfpo.stop_step  # the value summary.json's stop_step takes
    logged = {r["sfpo/stop_step"] for r in rows if not math.isnan(r["sfpo/stop_step"])}
    assert logged == {5.0} and math.isnan(rows[fired - 2]["sfpo/stop_step"])
    assert [r["sfpo/alpha"] for r in rows] == [0.8] * 5 + [0.0] * 2  # alpha 0 after t
    assert passes == [3] * 5 + [1] * 2  # K + 1 passes up to t, one GRPO pass after
