"""Small process-level utilities: seeds, RNG state, gradient norms, memory."""

from __future__ import annotations

import random
import resource
import sys
from typing import Any

import numpy as np
import torch
from torch import nn


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


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Global gradient norm (all shards), clipped to ``max_norm`` when it is > 0.

    Works for plain tensors and FSDP2 DTensor gradients (the norm is reduced across ranks).
    """
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    limit = max_norm if max_norm > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, limit)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


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
    """Peak allocated CUDA memory since start (across :mod:`sfpo_lab.perf`'s per-stage
    resets), or the process's peak RSS on CPU."""
    if device.type == "cuda":
        from sfpo_lab.perf import cuda_peak_since_start

        return cuda_peak_since_start(device) / 2**30
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (2**30 if sys.platform == "darwin" else 2**20)
