"""Small process-level utilities: seeds, RNG state, gradient norms, memory."""

from __future__ import annotations

import random
import resource
import sys
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


def rng_state() -> dict[str, Any]:
    """Every RNG a run touches (python, numpy, torch CPU, CUDA when present).

    Only tuples, ints, floats, strings and tensors, so a checkpoint holding it loads under
    ``torch.load(weights_only=True)`` (Lightning's FSDP2 resume path loads it that way).
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys  # older checkpoints
    np.random.set_state((name, keys.astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def grad_scaler(trainer: Any) -> Any:
    """The loss scaler of the trainer's precision plugin (``16-mixed``: Lightning's
    ``MixedPrecision.scaler``, a ``torch.amp.GradScaler``), or None where the loss is not scaled
    (every other precision, or a stand-in trainer without a plugin)."""
    plugin = getattr(trainer, "precision_plugin", None)
    scaler = getattr(plugin, "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def clip_grad_norm(model: nn.Module, max_norm: float, scaler: Any = None) -> float:
    """Global gradient norm (all shards), clipped to ``max_norm`` when it is > 0.

    Works for plain tensors and FSDP2 DTensor gradients (the norm is reduced across ranks).

    With a ``scaler`` (16-mixed) the gradients still hold the loss scale s here: Lightning's
    ``manual_backward`` scaled the loss, and its plugin unscales only inside
    ``optimizer.step``. Clipping the scaled gradients to ``s * max_norm`` is clipping the true
    ones to ``max_norm`` (the clip factor is scale-free), and the norm returned is the true one
    (divided by s). So the plugin's own ``unscale_`` / ``step`` / ``update`` run unchanged; a
    second ``unscale_`` before the step would raise in ``GradScaler``.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    scale = scaler.get_scale() if scaler is not None else 1.0
    limit = max_norm * scale if max_norm > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, limit)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm) / scale


def skip_scaled_step(optimizer: Any, scaler: Any) -> None:
    """Tell the loss scaler about an optimizer step skipped as non-finite (no-op without one).

    ``GradScaler.step`` / ``update`` lower the scale (x ``backoff_factor``) only for a step they
    see; a step skipped before ``optimizer.step`` would leave the scale as it was, overflow
    again at the next step and stop the run after ``update.max_skipped_steps``. So: record the
    non-finite gradients (``unscale_``) and ``update``; ``optimizer.step`` is not called, so
    Lightning's ``global_step`` and the LR schedule count real steps only, as at any precision.

    Args:
        optimizer: the (Lightning-wrapped or raw) optimizer whose step was skipped.
        scaler: :func:`grad_scaler`'s result.
    """
    if scaler is None:
        return
    scaler.unscale_(getattr(optimizer, "optimizer", optimizer))  # the raw torch optimizer
    scaler.update()


@torch.no_grad()
def nonfinite_params(model: nn.Module) -> list[str]:
    """Names of parameters holding a NaN or an inf in this rank's (local shard of the) values.

    The caller reduces "any rank found one" across ranks when the model is sharded.
    """
    bad = []
    for name, p in model.named_parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        if local.numel() and not bool(torch.isfinite(local).all()):
            bad.append(name)
    return bad


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated CUDA memory since start (across :mod:`sfpo_lab.run.perf`'s per-stage
    resets), or the process's peak RSS on CPU."""
    if device.type == "cuda":
        from sfpo_lab.run.perf import cuda_peak_since_start

        return cuda_peak_since_start(device) / 2**30
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (2**30 if sys.platform == "darwin" else 2**20)


def optimizer_flags(impl: str, name: str, params: list[Tensor], precision: str) -> dict[str, Any]:
    """``torch.optim`` ``foreach`` / ``fused`` flags for ``optim.impl`` (the same update up to
    float rounding; only the kernels differ).

    ``auto``: AdamW's fused kernel when every parameter is a plain (non-DTensor) CPU tensor and
    no loss scaler is in play (32-true / bf16-mixed), the case where torch's own default, the
    per-tensor loop, costs most (TRL's default ``adamw_torch_fused`` is the fused kernel too);
    everywhere else torch's default (``foreach`` on CUDA, FSDP2 DTensors) stays as it was.
    """
    if impl == "for_loop":
        return {"foreach": False, "fused": False}
    if impl == "foreach":
        return {"foreach": True, "fused": False}
    if impl == "fused":
        return {"foreach": False, "fused": True}
    dtensor = sys.modules.get("torch.distributed.tensor")
    plain_cpu = all(
        p.device.type == "cpu" and not (dtensor and isinstance(p, dtensor.DTensor)) for p in params
    )
    fused = name == "adamw" and plain_cpu and precision in ("32-true", "bf16-mixed")
    return {"foreach": None, "fused": True} if fused else {"foreach": None, "fused": None}
