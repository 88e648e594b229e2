"""``benchmarks.paired.time_pairs``: every timed GRPO and SFPO call starts from the same weights,
optimizer state and (unfilled) old log-probs, and the module is left as it was. A small real
model and AdamW; the update pass is one AdamW step on a fixed batch."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.paired import ratios, summary, time_pairs  # noqa: E402
from sfpo_lab.algos import SFPO  # noqa: E402
from sfpo_lab.run.perf import StageMemory  # noqa: E402


class Exp:
    def __init__(self) -> None:
        self.old_logprobs = None
        self.response_mask = torch.ones(4, 3)

    def __len__(self) -> int:
        return 4


class Module:
    """What ``time_pairs`` reads of an ``SFPOModule``: policy, optimizer, engine, updater."""

    def __init__(self, warm: bool = True) -> None:
        torch.manual_seed(0)
        self.policy = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 1))
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=0.1)
        self.x = torch.randn(4, 5)
        if warm:
            self.update()  # AdamW state exists (step 1), as after a warm-up iteration
        self.run_cfg = SimpleNamespace(
            sfpo=SimpleNamespace(
                K=3, slow_correction=True, lr_schedule="per_batch", slow_old_logprobs="theta0"
            )
        )
        self.sfpo = SFPO(self.opt, K=3, alpha=0.8, slow_correction=True)
        self.stage_mem = StageMemory(enabled=False)
        self.consecutive_skips = 0
        self.device = torch.device("cpu")
        self.starts: list[tuple[list[torch.Tensor], float, bool]] = []
        self.calls = 0

    def optimizers(self) -> SimpleNamespace:
        return SimpleNamespace(optimizer=self.opt)

    def update(self) -> None:
        self.opt.zero_grad()
        self.policy(self.x).square().mean().backward()
        self.opt.step()

    def updater(self, exp: Exp) -> dict[str, float]:
        first = exp.old_logprobs is None  # the first pass of a call fills them (fused)
        if first:
            state = self.opt.state[next(self.policy.parameters())]
            weights = [p.detach().clone() for p in self.policy.parameters()]
            step = float(state["step"]) if "step" in state else 0.0
            self.starts.append((weights, step, self.consecutive_skips == 0))
            exp.old_logprobs = torch.zeros(4, 3)
        self.update()
        self.consecutive_skips += 1  # must be put back too
        # update_s as UpdatePass reports it; 1 for a call's first pass, 2 for later ones
        return {"pg_loss": 0.0, "update_s": 1.0 if first else 2.0}


def test_each_call_starts_from_the_saved_state_and_the_module_is_left_unchanged():
    m = Module()
    before = [p.detach().clone() for p in m.policy.parameters()]
    moments = [m.opt.state[p]["exp_avg"].clone() for p in m.policy.parameters()]
    result = time_pairs(m, Exp(), rounds=4)
    assert len(m.starts) == 2 + 4 * 5  # a warm-up GRPO + SFPO, then 4 x (4 GRPO + 1 SFPO)
    for weights, step, skips_reset in m.starts:
        assert all(torch.equal(w, b) for w, b in zip(weights, before, strict=True))
        assert step == 1.0 and skips_reset
    assert all(torch.equal(p, b) for p, b in zip(m.policy.parameters(), before, strict=True))
    for p, mom in zip(m.policy.parameters(), moments, strict=True):
        assert torch.equal(m.opt.state[p]["exp_avg"], mom) and float(m.opt.state[p]["step"]) == 1
    assert result["sfpo_passes"] == 4 and len(result["grpo"]["cpu"]) == 4
    assert result["grpo"]["pass_s"] == [[1.0] * 4] * 4  # K+1 calls of one pass each
    assert result["sfpo"]["pass_s"] == [[1.0, 2.0, 2.0, 2.0]] * 4  # one call of K+1 passes
    r = ratios(result)  # GRPO's side is already the sum of its K+1 calls
    assert r == [s / g for g, s in zip(result["grpo"]["cpu"], result["sfpo"]["cpu"], strict=True)]
    assert summary(result)["ratio"] == (sorted(r)[1] + sorted(r)[2]) / 2
    assert summary(result)["clock"] == "cpu"


def test_refuses_an_engine_at_alpha_zero():
    m = Module()
    m.sfpo = SFPO(m.opt, K=3, alpha=0.0, slow_correction=True)
    try:
        time_pairs(m, Exp(), rounds=2)
    except RuntimeError as e:
        assert "alpha > 0" in str(e)
    else:
        raise AssertionError("alpha 0 was timed as SFPO")


def test_refuses_an_odd_number_of_rounds():
    """SFPO must run first in exactly half the rounds (the median of an odd count would not
    balance the order)."""
    try:
        time_pairs(Module(), Exp(), rounds=3)
    except ValueError as e:
        assert "even" in str(e)
    else:
        raise AssertionError("3 rounds were accepted")


def test_parameters_without_optimizer_state_start_each_call_without_it():
    """Saved before any AdamW step: every timed call takes a first step (step 0 before it), not
    the previous call's second."""
    m = Module(warm=False)
    time_pairs(m, Exp(), rounds=2)
    assert [step for _, step, _ in m.starts] == [0.0] * (2 + 2 * 5)
    assert not m.opt.state
