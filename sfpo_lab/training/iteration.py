"""One SFPO iteration and the small pure pieces around it (no Lightning): Stage I / II / III on
a fixed rollout batch, the learning-rate factor, per-phase metrics and the trigger's H_s."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from sfpo_lab.algos import SFPO
from sfpo_lab.config import RunConfig
from sfpo_lab.run.perf import NO_STAGES, StageMemory


def sfpo_iteration(
    sfpo: SFPO,
    update_pass: Callable[[], dict[str, float]],
    before_slow: Callable[[], dict[str, float]] | None = None,
    mem: StageMemory | None = None,
) -> tuple[dict[str, float], dict[str, float], dict[str, float], list[dict[str, float]]]:
    """One SFPO iteration (Alg. 1) on a fixed rollout batch.

    Args:
        before_slow: run after the reposition of an iteration with alpha > 0, before Stage
            III (``sfpo.slow_old_logprobs=recompute``); its floats join the ``end`` stats.
        mem: records each stage's peak memory as ``perf/mem/<stage>``: ``fast_1..fast_K``,
            ``reposition``, ``slow`` (an iteration with alpha = 0: its one pass, ``update``).

    Returns:
        ``(fast, slow, end, passes)``: Stage I and Stage III pass metrics (means over their
        passes), the engine's ``end()`` stats, and every update pass's metrics in order.
    """
    passes: list[dict[str, float]] = []
    mem = mem or NO_STAGES
    stage = ["fast"]

    def update() -> dict[str, float]:
        name = f"fast_{len(passes) + 1}" if stage[0] == "fast" else stage[0]
        with mem.stage(name):
            passes.append(update_pass())
        return passes[-1]

    sfpo_on = sfpo.begin()  # snapshot theta0 (one copy of the local shards) iff alpha > 0
    # Stage I — fast trajectory: K full update passes on the same rollout batch
    fast = sfpo.fast(update)
    # Stage II — reposition: theta <- theta0 + alpha (theta_K - theta0), in place (and the
    # optimizer state as sfpo.optimizer_state_after_fast says)
    with mem.stage("reposition") if sfpo_on else nullcontext():
        sfpo.reposition()
    stage[0] = "slow" if sfpo_on else "update"
    extra = before_slow() if sfpo_on and before_slow is not None else {}
    # Stage III — slow correction: one more pass at the repositioned point (plain GRPO when
    # alpha = 0: this is the only update)
    slow = sfpo.slow(update)
    # end(): theta0 comes back if the iteration left a NaN/inf in the weights
    return fast, slow, sfpo.end() | extra, passes


def lr_factor(step: int, optim: Any, iterations: int, per: int = 1) -> float:
    """LR multiplier after ``step`` scheduler steps (LambdaLR's lambda).

    ``per`` = scheduler steps per rollout batch: 1 for ``sfpo.lr_schedule=per_batch``
    (authors), the optimizer steps of a full SFPO iteration for ``per_step``; warm-up and
    horizon (``optim.warmup_iterations``, ``iterations``) are scaled by it."""
    total, warmup = iterations * per, optim.warmup_iterations * per
    if warmup and step < warmup:
        return (step + 1) / warmup
    if optim.scheduler == "constant":
        return 1.0
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 0.5 * (1 + math.cos(math.pi * frac)) if optim.scheduler == "cosine" else 1 - frac
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * decay


def scheduler_steps_per_batch(run: RunConfig) -> int:
    """1 (``per_batch``), else optimizer steps of one full SFPO iteration: (K + slow) passes
    of ``update.ppo_mini_batches`` steps (one pass for GRPO / alpha = 0)."""
    s = run.sfpo
    if s.lr_schedule == "per_batch":
        return 1
    passes = s.K + int(s.slow_correction) if s.alpha > 0 else 1
    return max(1, passes) * run.update.ppo_mini_batches


PHASE_KEYS = ("pg_loss", "pg_clipfrac", "grad_norm")


def phase_metrics(fast: dict, slow: dict, engine: dict) -> dict[str, float]:
    """Per-phase metrics of one iteration: ``sfpo/{fast,slow}_{pg_loss,pg_clipfrac,grad_norm}``
    (fast = mean over the K passes; absent for a phase that did not run) and
    ``sfpo/kl_theta0``, k1 KL(pi_theta0 || pi_theta~) right after the reposition: over the
    whole batch with ``slow_old_logprobs=recompute``, else the slow pass's first mini-batch
    ``ppo_kl`` (taken before its first step, old log-probs at theta0). Only when alpha > 0."""
    out: dict[str, float] = {}
    ran = engine.get("fast_steps", 0.0) > 0
    for phase, stats in (("fast", fast if ran else {}), ("slow", slow)):
        for key in PHASE_KEYS:
            if key in stats:
                out[f"sfpo/{phase}_{key}"] = float(stats[key])
    if "kl_theta0" in engine:
        out["sfpo/kl_theta0"] = float(engine["kl_theta0"])
    elif engine.get("snapshot_bytes", 0.0) > 0 and "ppo_kl_first" in slow:
        out["sfpo/kl_theta0"] = float(slow["ppo_kl_first"])
    return out


def select_entropy(
    source: str, rollout_metrics: dict[str, float], passes: list[dict[str, float]]
) -> float:
    """H_s for the entropy trigger (Alg. 1) of one iteration.

    Args:
        source: ``"update"`` (authors' code: ``actor/entropy_loss`` of the iteration's last
            update pass, i.e. the slow step's training forward, mean over its micro-batches;
            without slow correction the K-th fast pass, after the trigger the GRPO pass) or
            ``"rollout"`` (the no-grad pass at theta0 over the rollout batch).
        rollout_metrics: the experience metrics; ``"train/entropy"`` is the rollout-pass H_s.
        passes: the metrics of every update pass of the iteration, in order; each holds
            ``"entropy"`` (masked token-mean over the pass, averaged over ranks).

    Returns:
        H_s; NaN (ignored by the trigger) when ``source="update"`` and no pass ran (K = 0
        without slow correction updates nothing).
    """
    if source == "rollout":
        return float(rollout_metrics["train/entropy"])
    if source != "update":
        raise ValueError(f"sfpo.entropy_control.source={source!r}: use 'update' or 'rollout'")
    if not passes:
        return math.nan
    if "entropy" not in passes[-1]:
        raise RuntimeError(
            "sfpo.entropy_control.source='update' needs the update pass's token entropy, but "
            "UpdatePass returned none; use sfpo.entropy_control.source=rollout"
        )
    return float(passes[-1]["entropy"])
