"""Weight sync from the trainer's (possibly FSDP2-sharded) module into a rollout engine.

Once per rollout batch, never per token: the full weights are gathered bucket by bucket (not
one giant dict, not tensor by tensor) and streamed into the engine, which copies each bucket
into its own inference weights.

Names are ``state_dict()`` names, so a tied ``lm_head.weight`` is included: vLLM needs it
(pushing ``named_parameters()`` leaves its LM head stale, measured in issue 4).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Iterator

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from sfpo_lab.rollout.base import RolloutEngine

DEFAULT_BUCKET_BYTES = 256 * 2**20


def _full(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The unsharded value of a (DTensor) parameter, detached, cast to ``dtype`` (floating
    point only) *before* the gather, so a bf16 engine costs half the all-gather traffic."""
    tensor = tensor.detach()
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def iter_full_tensors(
    module: nn.Module,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    dtype: torch.dtype | None = None,
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Yield ``module``'s full (unsharded) state in buckets of about ``bucket_bytes``.

    FSDP2 shards (``DTensor``) are gathered with ``full_tensor()``; plain tensors pass through
    (no copy). Tensors shared under several names (tied embeddings) are gathered once and
    yielded under every name, in the same bucket. A bucket closes once it holds at least
    ``bucket_bytes`` (one large tensor may exceed it).

    Under FSDP2 ``full_tensor()`` is a collective: every rank must consume this iterator to the
    end, in step (the order is the ``state_dict()`` order, the same on every rank).

    Args:
        module: the trainer's module (plain or ``fully_shard``-ed).
        bucket_bytes: target bucket size in bytes (of the yielded, possibly cast, tensors).
        dtype: cast floating-point tensors to this dtype (e.g. bf16 for a bf16 engine).

    Yields:
        Lists of ``(state_dict name, full tensor)``.
    """
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    state = module.state_dict(keep_vars=True)
    names_of: dict[int, list[str]] = {}
    for name, tensor in state.items():
        names_of.setdefault(id(tensor), []).append(name)
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in state.items():
        aliases = names_of[id(tensor)]
        if aliases[0] != name:
            continue  # already yielded with its first name
        full = _full(tensor, dtype)
        bucket.extend((alias, full) for alias in aliases)
        size += full.numel() * full.element_size()
        if size >= bucket_bytes:
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket


def push_full_weights(
    module: nn.Module,
    engine: RolloutEngine,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    dtype: torch.dtype | None = None,
) -> float:
    """Stream ``module``'s full weights into ``engine.sync_weights``; returns seconds taken.

    The gather is lazy: an engine that needs no sync (it generates with the trainer's own
    module) consumes nothing, so nothing is gathered. Log the result as ``perf/weight_sync_s``.
    """
    start = time.perf_counter()
    engine.sync_weights(
        pair for bucket in iter_full_tensors(module, bucket_bytes, dtype) for pair in bucket
    )
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.no_grad()
def load_named_tensors_(
    module: nn.Module, named_tensors: Iterable[tuple[str, torch.Tensor]], strict: bool = True
) -> int:
    """Copy named full tensors into ``module``'s parameters and buffers in place.

    Values are cast to each target's dtype and device (``copy_``); tied parameters are filled
    through whichever of their names arrives.

    Args:
        module: the inference copy to update (plain, unsharded).
        named_tensors: ``(state_dict name, tensor)`` pairs, consumed once.
        strict: raise if some weight of ``module`` was not provided.

    Returns:
        The number of tensors copied.

    Raises:
        KeyError: an unknown name. ValueError: a shape mismatch, or (strict) missing weights.
    """
    targets = module.state_dict(keep_vars=True)
    loaded: set[int] = set()
    count = 0
    for name, value in named_tensors:
        target = targets.get(name)
        if target is None:
            known = ", ".join(list(targets)[:5])
            raise KeyError(
                f"sync_weights: unknown weight name {name!r} for {type(module).__name__} "
                f"(expects state_dict names such as {known}, ...)"
            )
        if target.shape != value.shape:
            raise ValueError(
                f"sync_weights: {name!r} has shape {tuple(value.shape)}, "
                f"the engine's weight has {tuple(target.shape)}"
            )
        target.copy_(value)
        loaded.add(id(target))
        count += 1
    missing = [name for name, t in targets.items() if id(t) not in loaded]
    if strict and missing:
        raise ValueError(
            f"sync_weights: {len(missing)} weight(s) were not provided, e.g. {missing[:5]}; "
            "push the full state_dict()"
        )
    return count


TensorSource = Callable[[], Iterable[tuple[str, torch.Tensor]]]


def module_weights(
    module: nn.Module, bucket_bytes: int = DEFAULT_BUCKET_BYTES, dtype: torch.dtype | None = None
) -> TensorSource:
    """A weight source for ``engine.set_weight_source``: each call streams ``module``'s full
    state lazily, bucket by bucket (an FSDP2 gather is a collective: all ranks consume it)."""

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for bucket in iter_full_tensors(module, bucket_bytes, dtype):
            yield from bucket

    return tensors


class WeightSource:
    """Where an engine that owns its copy gets the trainer's weights again, and when.

    Args:
        tensors: returns a fresh iterable of ``(state_dict name, full tensor)``.
        version: returns a tag of the trainer's current weights (e.g. the iteration); a push
            is due when it differs from the tag of the weights the engine holds. None: a push is
            due only when the engine holds no valid weights (never pushed, or dropped).
    """

    def __init__(self, tensors: TensorSource, version: Callable[[], Hashable] | None = None):
        self.tensors = tensors
        self.version = version

    def tag(self) -> Hashable:
        """The current weights' tag (None without a version function)."""
        return None if self.version is None else self.version()

    def due(self, held_valid: bool, held_tag: Hashable) -> bool:
        """Whether the engine must be pushed before it generates."""
        return not held_valid or (self.version is not None and self.version() != held_tag)
