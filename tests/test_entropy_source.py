"""Where H_s comes from (``sfpo.entropy_control.source``) and when the trigger then fires.

The iterations run through the module's own ``sfpo_iteration`` + ``select_entropy`` with a
real SFPO engine and optimizer; only the entropies are scripted. The authors' rule
(authors_hparams.md, "entropy H_s"): H_s is appended after the update of iteration s and a
trigger it fires switches iteration s + 1 to plain GRPO (fast steps skipped).
"""

from __future__ import annotations

import math

import pytest
import torch

from sfpo_lab.algos import SFPO, EntropyTrigger
from sfpo_lab.training.module import select_entropy, sfpo_iteration

ITERS, K = 40, 3
SPIKE_LAST_PASS, SPIKE_ROLLOUT, JUNK_AT = 35, 33, 31


def last_pass_series(s: int) -> float:
    return 1.5 if s == SPIKE_LAST_PASS else 1.0


def rollout_series(s: int) -> float:
    return 1.5 if s == SPIKE_ROLLOUT else 1.0


def run(source: str, slow_correction: bool = True) -> tuple[SFPO, list[dict[str, float]]]:
    """ITERS iterations; the last pass of iteration s reports ``last_pass_series(s)``, the
    earlier passes 9.0 at iteration JUNK_AT (a trigger on them would fire at JUNK_AT)."""
    w = torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)
    trig = EntropyTrigger(window=30, tau=1.0, mode="upper")
    sfpo = SFPO(opt, K=K, alpha=0.8, slow_correction=slow_correction, trigger=trig)
    ends = []
    for s in range(ITERS):
        n_passes = (K + 1 if slow_correction else K) if sfpo.alpha > 0 else 1
        count = iter(range(n_passes))

        def update_pass(s: int = s, count=count, n_passes=n_passes) -> dict[str, float]:
            k = next(count)
            opt.zero_grad()
            (w - 1).square().sum().backward()
            opt.step()
            last = k == n_passes - 1
            junk = 9.0 if s == JUNK_AT else 1.0
            return {"entropy": last_pass_series(s) if last else junk, "pg_loss": 0.0}

        fast, slow, end, passes = sfpo_iteration(sfpo, update_pass)
        assert len(passes) == n_passes
        metrics = {"train/entropy": rollout_series(s)}
        sfpo.observe_entropy(select_entropy(source, metrics, passes))
        ends.append(end)
    return sfpo, ends


@pytest.mark.parametrize(
    ("source", "slow_correction", "fired_by"),
    [
        ("update", True, SPIKE_LAST_PASS),  # the slow step's pass (authors)
        ("update", False, SPIKE_LAST_PASS),  # no slow step: the K-th fast pass
        ("rollout", True, SPIKE_ROLLOUT),  # the no-grad pass at theta0
    ],
)
def test_trigger_fires_at_the_authors_step(source, slow_correction, fired_by):
    sfpo, ends = run(source, slow_correction)
    assert sfpo.stop_step == fired_by + 1  # H_s of s switches s + 1 to GRPO
    fast_steps = [e["fast_steps"] for e in ends]
    assert fast_steps == [K] * (fired_by + 1) + [0] * (ITERS - fired_by - 1)
    assert [e["alpha"] for e in ends][fired_by : fired_by + 2] == [0.8, 0.0]


def test_select_entropy_takes_the_last_pass_or_the_rollout_pass():
    passes = [{"entropy": 3.0}, {"entropy": 2.0}, {"entropy": 0.25}]
    assert select_entropy("update", {"train/entropy": 7.0}, passes) == 0.25
    assert select_entropy("rollout", {"train/entropy": 7.0}, passes) == 7.0
    assert math.isnan(select_entropy("update", {"train/entropy": 7.0}, []))  # nothing updated
    with pytest.raises(RuntimeError, match=r"source='update'.*source=rollout"):
        select_entropy("update", {}, [{"pg_loss": 0.0}])
    with pytest.raises(ValueError, match="entropy_control.source='slow'"):
        select_entropy("slow", {}, passes)
