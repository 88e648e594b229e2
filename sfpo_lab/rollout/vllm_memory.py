"""Where a colocated vLLM engine's memory is: sleep states, the sleep pool's size, and the
host-side default context the engine is built under.

Read against vllm 0.32.0 (``vllm/device_allocator/cumem.py``, ``vllm/device_allocator/
sleep_mode_backend.py``, ``vllm/v1/worker/gpu_worker.py``) and torch 2.13
(``torch/cuda/memory.py``):

* With ``enable_sleep_mode`` vLLM allocates its weights, KV cache and runtime buffers inside
  ``CuMemAllocator.use_memory_pool(tag)``: a torch ``MemPool`` whose pluggable allocator maps
  physical pages with the CUDA driver. torch's caching allocator counts those blocks like any
  other, so ``torch.cuda.memory_allocated()`` includes them.
* ``sleep()`` unmaps the pages of every pool allocation (copying the ``weights`` tag to host
  RAM first at level 1) but keeps the tensors and torch's blocks: ``memory_allocated()`` does
  not fall (vLLM issues 17117, 33625); only ``mem_get_info()``'s free bytes rise.
* :func:`cumem_pool_bytes` is the part of ``memory_allocated()`` that lives in those pools (the
  ``allocated_size`` of each pool segment in ``MemPool.snapshot()``): what
  :mod:`sfpo_lab.run.perf` subtracts to report the trainer's memory.

The engine's states (:class:`SleepState`); transitions in ``VLLMEngine._prepare`` (before a
generation) and ``VLLMEngine._sleep`` (after one):

=================  ===================================  ===================================
state              how it is entered                    what ``generate`` does first
=================  ===================================  ===================================
AWAKE              start (CPU), ``_prepare``            push if the weight version changed
WEIGHTS_AWAKE      a push while asleep                  push if due; wake the KV cache
ASLEEP_KEPT        ``sleep(level=1)``: weights in RAM   wake weights (restored); as above
ASLEEP_DROPPED     ``sleep(level=2)``: weights gone     wake weights (garbage); push; wake KV
=================  ===================================  ===================================

``generate`` while asleep would never be scheduled, and a reload into sleeping weights writes
into unmapped memory. A level-1 engine sleeps at level 2 when the caller says the weights are
replaced before the next generation (:func:`sleep_level_for`).
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from typing import Any

import torch


class SleepState(enum.Enum):
    """Where the engine's memory is (see :mod:`sfpo_lab.rollout.vllm` for the transitions)."""

    AWAKE = "awake"
    WEIGHTS_AWAKE = "weights awake, KV cache asleep"
    ASLEEP_KEPT = "asleep, weights kept in host RAM (level 1)"
    ASLEEP_DROPPED = "asleep, weights dropped (level 2)"


ASLEEP = (SleepState.ASLEEP_KEPT, SleepState.ASLEEP_DROPPED)


def sleep_level_for(configured: int, replace_weights: bool) -> int:
    """The vLLM sleep level to use now.

    Level 1 copies the weights to host RAM on ``sleep`` and back on ``wake_up``; when the caller
    replaces them before the next generation (a training update follows every rollout) both
    copies are overwritten by the push, so the weights are dropped (level 2) instead.

    Args:
        configured: ``rollout.vllm.sleep_level`` (1 or 2); 0 = no sleep mode.
        replace_weights: the weights are pushed again before the next generation.
    """
    return 2 if configured == 1 and replace_weights else configured


def cumem_pool_bytes(allocator: Any) -> int:
    """Bytes torch counts as allocated in a ``CuMemAllocator``'s pools, every tag.

    ``allocator.allocator_and_pools`` maps a tag (``weights``, ``kv_cache``, ``runtime``, ...) to
    the ``(MemPool, allocator)`` pairs made for it; a pool segment's ``allocated_size`` is the
    bytes of its live blocks (what ``memory_allocated()`` counts; free blocks inside a segment
    are reserved, not allocated). Mapped or not does not matter to torch.
    """
    total = 0
    for entries in allocator.allocator_and_pools.values():
        for pool, *_ in entries:
            total += sum(int(seg["allocated_size"]) for seg in pool.snapshot())
    return total


def live_cumem_allocator() -> Any | None:
    """vLLM's ``CuMemAllocator`` singleton if an engine created it in this process, else None
    (never creates one: ``get_instance`` would)."""
    try:
        from vllm.device_allocator import cumem
    except Exception:  # no vllm, or a build without the CUDA allocator
        return None
    return cumem.CuMemAllocator.instance


@contextlib.contextmanager
def host_defaults() -> Iterator[None]:
    """torch's defaults as vLLM expects them while it builds an engine: device CPU, dtype fp32.

    Lightning calls ``configure_model`` (where the module builds the engine) inside the
    strategy's ``tensor_init_context``: a ``torch.device(root_device)`` (or ``meta``) default
    device and, for ``*-true`` precisions, a default dtype. vLLM places its model and GPU
    buffers explicitly (``base_loader.load_model`` enters its own device and dtype) but makes
    host-side buffers with the default device, e.g. ``GPUModelRunner``'s pinned ``torch.zeros(...,
    pin_memory=True)``: under a CUDA or meta default these land on the wrong device.
    """
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with torch.device("cpu"):
            yield
    finally:
        torch.set_default_dtype(dtype)
