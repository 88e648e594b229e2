"""SFPO's update against K+1 GRPO updates on one rollout batch at one theta0, in one process.

The whole-trainer rows of ``iteration`` compare two training runs: two processes (a run's
per-pass time differed by up to 1.4x between processes) and, after the first iteration, two
policies with different response lengths, i.e. unequal work. Here one run of the real trainer
(``SFPOModule`` under Lightning, the default SFPO config, a fresh process) trains its first
iterations as usual; on the rollout batch of its last iteration it times rounds of

* K+1 GRPO iterations: :func:`sfpo_lab.training.iteration.sfpo_iteration` with an alpha = 0
  engine, exactly what ``algorithm=grpo`` runs per batch (one ``UpdatePass``), K+1 times;
* one SFPO iteration: the same call with the run's own engine (K = 3, alpha = 0.8): K fast
  passes, the reposition, the slow pass, the snapshot and the finite check;

GRPO first in even rounds, SFPO first in odd ones. Every call starts from the same weights
and optimizer state (copied back in place before it, not timed) with the batch's fused old
log-probs reset, so both sides run the same K+1 update passes on the same batch, SFPO adding
its snapshot, reposition and finite check (each GRPO call fills the fused old log-probs in its
pass, as every ``algorithm=grpo`` iteration does; SFPO only in its first). Timing K+1 separate GRPO
calls (not one, times K+1) gives both sides of the ratio the same per-pass noise (single 0.5B
passes took 6.3-9.5 s in one process here). The ratio is the median over rounds of SFPO / (K+1 GRPO iterations)
timed in the same round, on this process's CPU clock (as the engine section; wall clock on
CUDA; wall clock and sum over sum in the details). An even number of rounds, so SFPO runs first
in half of them; a restore (a full copy of weights and AdamW state) precedes every call.
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from sfpo_lab.algos import SFPO
from sfpo_lab.training.iteration import sfpo_iteration
from sfpo_lab.training.module import SFPOModule
from sfpo_lab.training.stages import recompute_old_logprobs


def paired_updates(rounds: int, overrides: list[str]) -> dict[str, Any]:
    """Run the paired timing in a fresh process (:func:`benchmarks.ours.run_fresh`)."""
    from benchmarks.ours import run_fresh

    return run_fresh("benchmarks.paired", "dump_paired", [str(rounds), *overrides])


def dump_paired(path: str, rounds: str, *overrides: str) -> None:
    """The child: train with ``overrides``; time its last batch; write the timings to ``path``."""
    from benchmarks.ours import fit

    PairedModule.rounds = int(rounds)
    fit(list(overrides), module_cls=PairedModule)
    if PairedModule.result is None:
        raise RuntimeError("the paired timing did not run (no last iteration reached)")
    Path(path).write_text(json.dumps(PairedModule.result))


class PairedModule(SFPOModule):
    """``SFPOModule`` whose last training step times GRPO and SFPO updates instead of training."""

    rounds = 2
    result: dict[str, Any] | None = None

    def training_step(self, batch: dict[str, list], batch_idx: int) -> None:
        if self.iteration < self.run_cfg.iterations - 1:
            return super().training_step(batch, batch_idx)
        exp, _ = self.maker(batch)  # rollouts, rewards, advantages at theta0
        PairedModule.result = time_pairs(self, exp, self.rounds)
        self.trainer.should_stop = True  # the module stops a run at `iterations` (max_epochs=-1)
        return None


def time_pairs(module: SFPOModule, exp: Any, rounds: int) -> dict[str, Any]:
    """One untimed warm-up round (a GRPO and an SFPO call), then ``rounds`` rounds of K+1 GRPO
    iterations and one SFPO iteration (GRPO first in even rounds, last in odd ones), each call
    from the saved weights and optimizer state.

    Returns per round: ``grpo`` / ``sfpo`` ``cpu`` and ``wall`` seconds (GRPO: the sum of its
    K+1 calls) and ``pass_s`` (each call's per-pass wall seconds); ``sfpo_passes`` (K+1)."""
    s = module.run_cfg.sfpo
    if rounds < 2 or rounds % 2:
        raise ValueError(f"rounds={rounds}: an even number >= 2 (SFPO first in half of them)")
    if module.sfpo.alpha <= 0 or s.lr_schedule != "per_batch":
        raise RuntimeError(
            "the paired timing needs the run's engine at alpha > 0 (trigger fired?) and "
            "sfpo.lr_schedule=per_batch (per_step would step the scheduler in the timed calls)"
        )
    call = _timed_call(module, exp)
    k1 = s.K + int(s.slow_correction)  # passes of one SFPO iteration
    out: dict[str, Any] = {k: {"cpu": [], "wall": [], "pass_s": []} for k in ("grpo", "sfpo")}
    call("grpo"), call("sfpo")  # warm-up
    for r in range(rounds):
        order = ["grpo"] * k1 + ["sfpo"]
        for k in out:
            out[k]["cpu"].append(0.0), out[k]["wall"].append(0.0), out[k]["pass_s"].append([])
        for name in order if r % 2 == 0 else order[::-1]:
            cpu, wall, pass_s = call(name)
            out[name]["cpu"][-1] += cpu
            out[name]["wall"][-1] += wall
            out[name]["pass_s"][-1] += pass_s
    call.restore()
    cuda = module.device.type == "cuda"
    return out | {
        "sfpo_passes": k1,
        "clock": "wall" if cuda else "cpu",  # kernels run async: CPU time means little there
        "rows": len(exp),
        "response_tokens": float(exp.response_mask.sum()),
    }


def _timed_call(module: SFPOModule, exp: Any) -> Any:
    """``call(name)`` -> (CPU s, wall s, per-pass wall s) of one GRPO or SFPO iteration on
    ``exp`` from the state saved now; ``call.restore()`` puts that state back."""
    opt = module.optimizers().optimizer
    s = module.run_cfg.sfpo
    engines = {
        "grpo": SFPO(opt, K=s.K, alpha=0.0, slow_correction=s.slow_correction),
        "sfpo": module.sfpo,
    }
    want = {"grpo": 1, "sfpo": s.K + int(s.slow_correction)}
    saved = _save(module, opt)
    old0 = exp.old_logprobs  # None when the first update pass fills them (fused)
    # as training_step: sfpo.slow_old_logprobs=recompute adds a no-grad pass before Stage III
    recompute = None
    if s.slow_old_logprobs == "recompute":
        recompute = functools.partial(recompute_old_logprobs, module, exp)
    cuda = module.device.type == "cuda"

    def call(name: str) -> tuple[float, float, list[float]]:
        _restore(module, opt, saved)
        exp.old_logprobs = old0
        module.stage_mem.clear()
        if cuda:
            torch.cuda.synchronize(module.device)
        w0, c0 = time.perf_counter(), time.process_time()
        *_, passes = sfpo_iteration(
            engines[name], lambda: module.updater(exp), recompute, mem=module.stage_mem
        )
        if cuda:
            torch.cuda.synchronize(module.device)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        if len(passes) != want[name]:
            raise RuntimeError(f"{name} ran {len(passes)} update passes, not {want[name]}")
        return cpu, wall, [round(p["update_s"], 4) for p in passes]

    call.restore = lambda: _restore(module, opt, saved)  # type: ignore[attr-defined]
    return call


def _save(module: SFPOModule, opt: torch.optim.Optimizer) -> dict[str, Any]:
    params = list(module.policy.parameters())
    state = {
        i: {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
        for i, p in enumerate(params)
        if p in opt.state
    }
    return {
        "weights": [p.detach().clone() for p in params],
        "state": state,
        "skips": module.consecutive_skips,
    }


@torch.no_grad()
def _restore(module: SFPOModule, opt: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """In place: no new allocation per round (a fresh 6 GB of AdamW state at 0.5B would add
    page faults to the next timed call)."""
    params = list(module.policy.parameters())
    torch._foreach_copy_([p.detach() for p in params], saved["weights"])
    for i, p in enumerate(params):  # no AdamW state when saved: none now (a fresh first step)
        if i not in saved["state"]:
            opt.state.pop(p, None)
    for i, st in saved["state"].items():
        live = opt.state[params[i]]
        for k, v in st.items():
            if torch.is_tensor(v):
                live[k].copy_(v)
            else:
                live[k] = v
    module.consecutive_skips = saved["skips"]


def ratios(result: dict[str, Any], clock: str = "cpu") -> list[float]:
    """Per round: SFPO / (K+1 GRPO iterations) on ``clock`` ("cpu" or "wall")."""
    g, s = result["grpo"][clock], result["sfpo"][clock]
    return [b / a for a, b in zip(g, s, strict=True)]


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The row's value (median ratio on the result's clock: CPU time on CPU, wall on CUDA)
    and what the details keep."""
    clock = result.get("clock", "cpu")
    main, wall = ratios(result, clock), ratios(result, "wall")
    g, s = result["grpo"][clock], result["sfpo"][clock]
    return {
        "ratio": statistics.median(main),
        "clock": clock,
        "ratios": main,
        "ratio_wall": statistics.median(wall),
        "min_over_min": min(s) / min(g),
        "sum_over_sum": sum(s) / sum(g),
        "grpo_k1_s": g,
        "sfpo_s": s,
        "pass_wall_s": {k: result[k]["pass_s"] for k in ("grpo", "sfpo")},
        "sfpo_passes": result["sfpo_passes"],
        "rows": result["rows"],
        "response_tokens": result["response_tokens"],
    }
