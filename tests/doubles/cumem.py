"""A CPU double of CUDA memory accounting beside vLLM's sleep-mode allocator.

What it stands for, as read in vllm 0.32.0 (``vllm/device_allocator/cumem.py``,
``vllm/device_allocator/__init__.py``, ``vllm/device_allocator/sleep_mode_backend.py``) and
torch 2.13 (``torch/cuda/memory.py``):

* ``CuMemAllocator.use_memory_pool(tag)`` makes a torch ``MemPool`` on a pluggable allocator
  and appends ``(pool, allocator)`` to ``allocator_and_pools[tag]``. torch's caching allocator
  serves tensors from that pool like from any other: their blocks count in
  ``memory_allocated`` / ``max_memory_allocated``; the pool's segments come from the pluggable
  ``malloc``, which vLLM records in ``pointer_to_data[ptr] = AllocationData(handle, tag)``
  with ``handle = (device, size, ptr, handle)``.
* ``MemPool.snapshot()`` lists the pool's segments, each with ``total_size`` (what ``malloc``
  got) and ``allocated_size`` (its live blocks: what ``memory_allocated`` counts).
* ``sleep(offload_tags)``: every allocation not asleep is unmapped and released (those whose
  tag is offloaded are first copied to a host tensor) and marked ``is_asleep``; the tensors
  and torch's blocks stay, so ``memory_allocated`` does not change (vLLM issues 17117, 33625)
  while ``mem_get_info``'s free bytes rise. ``CuMemBackend.suspend(level)`` offloads
  ``runtime`` and ``cudagraph`` always and ``weights`` at level 1 only.
* ``wake_up(tags)``: maps again the asleep allocations whose tag is in ``tags`` (or is not a
  deferrable tag, ``weights`` / ``kv_cache``), copying back a host backup where there is one.

:class:`FakeCuda` is torch.cuda's accounting for one device (``install`` patches it in);
:class:`FakeCuMemAllocator` is vLLM's allocator on it. Sizes: torch rounds a block up to 512
bytes; the double's ``malloc`` rounds a segment up to 2 MiB (the CUDA VMM granularity), so a
segment's ``total_size`` exceeds its ``allocated_size`` as on a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

GiB = 2**30
BLOCK = 512  # torch's caching allocator rounds every block up to this
GRANULE = 2 * 2**20  # cuMem allocation granularity
DEFERRABLE_TAGS = ("weights", "kv_cache")


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


@dataclass
class FakeCuda:
    """``torch.cuda``'s memory statistics for device 0.

    ``allocated`` is what torch counts (``memory_allocated``); ``resident`` the physical pages
    in use, what ``mem_get_info`` sees. ``max_memory_allocated`` is the peak of ``allocated``
    since the last ``reset_peak_memory_stats``, which sets it to the current value.
    """

    total: int = 80 * GiB
    allocated: int = 0
    peak: int = 0
    resident: int = 0

    def alloc(self, n: int, resident: int | None = None) -> None:
        """A tensor of ``n`` bytes (resident: the physical bytes it brings, default ``n``)."""
        self.allocated += _round_up(n, BLOCK)
        self.peak = max(self.peak, self.allocated)
        self.resident += _round_up(n, BLOCK) if resident is None else resident

    def free(self, n: int) -> None:
        self.allocated -= _round_up(n, BLOCK)
        self.resident -= _round_up(n, BLOCK)

    def memory_allocated(self, device: Any = None) -> int:
        return self.allocated

    def max_memory_allocated(self, device: Any = None) -> int:
        return self.peak

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        self.peak = self.allocated

    def mem_get_info(self, device: Any = None) -> tuple[int, int]:
        return self.total - self.resident, self.total

    def synchronize(self, device: Any = None) -> None:
        pass

    def current_device(self) -> int:
        return 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
        """Patch ``torch.cuda``'s statistics functions with this double's."""
        for name in (
            "memory_allocated",
            "max_memory_allocated",
            "reset_peak_memory_stats",
            "mem_get_info",
            "synchronize",
            "current_device",
        ):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        return self


@dataclass
class FakeAllocationData:
    """vLLM's ``AllocationData``: ``handle = (device, size, ptr, handle)``."""

    handle: tuple[int, int, int, int]
    tag: str
    cpu_backup_tensor: bytes | None = None
    is_asleep: bool = False


@dataclass
class FakeMemPool:
    """A torch ``MemPool``: ``snapshot()`` lists its segments."""

    segments: list[dict[str, int]] = field(default_factory=list)

    def snapshot(self, include_traces: bool = True) -> list[dict[str, int]]:
        return [dict(seg) for seg in self.segments]


class FakeCuMemAllocator:
    """vLLM's ``CuMemAllocator`` on a :class:`FakeCuda` (module docstring).

    Attributes:
        host_copies: bytes copied device -> host on ``sleep`` plus host -> device on ``wake_up``.
    """

    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda = cuda
        self.pointer_to_data: dict[int, FakeAllocationData] = {}
        self.allocator_and_pools: dict[str, list[tuple[FakeMemPool, object]]] = {}
        self.current_tag = "default"
        self._pool: FakeMemPool | None = None
        self._next_ptr = 1 << 40
        self.host_copies = 0

    @contextlib.contextmanager
    def use_memory_pool(self, tag: str) -> Iterator[None]:
        old, self.current_tag = self.current_tag, tag
        self._pool = FakeMemPool()
        self.allocator_and_pools.setdefault(tag, []).append((self._pool, object()))
        try:
            yield
        finally:
            self.current_tag, self._pool = old, None

    def allocate(self, n: int) -> int:
        """A tensor of ``n`` bytes inside ``use_memory_pool``: one segment of its own."""
        if self._pool is None:
            raise RuntimeError("FakeCuMemAllocator.allocate outside use_memory_pool")
        size = _round_up(_round_up(n, BLOCK), GRANULE)  # the pluggable malloc's request
        ptr, self._next_ptr = self._next_ptr, self._next_ptr + size
        self.pointer_to_data[ptr] = FakeAllocationData((0, size, ptr, ptr), self.current_tag)
        block = _round_up(n, BLOCK)
        self._pool.segments.append({"address": ptr, "total_size": size, "allocated_size": block})
        self.cuda.alloc(n, resident=size)  # torch counts the block; the segment is mapped
        return ptr

    def sleep(self, offload_tags: tuple[str, ...] = ()) -> None:
        for data in self.pointer_to_data.values():
            if data.is_asleep:
                continue
            size = data.handle[1]
            if data.tag in offload_tags:
                data.cpu_backup_tensor = bytes(8)  # stands for `size` bytes in host RAM
                self.host_copies += size
            self.cuda.resident -= size  # unmap_and_release: pages go, the tensor stays
            data.is_asleep = True

    def wake_up(self, tags: list[str] | None = None) -> None:
        for data in self.pointer_to_data.values():
            if not data.is_asleep:
                continue
            if tags is None or data.tag in tags or data.tag not in DEFERRABLE_TAGS:
                size = data.handle[1]
                self.cuda.resident += size  # create_and_map
                data.is_asleep = False
                if data.cpu_backup_tensor is not None:
                    self.host_copies += size
                    data.cpu_backup_tensor = None

    def get_current_usage(self) -> int:
        return sum(d.handle[1] for d in self.pointer_to_data.values())


def suspend(allocator: FakeCuMemAllocator, level: int) -> None:
    """``CuMemBackend.suspend(level)``: what ``LLM.sleep(level)`` does to the allocator."""
    offload = ("runtime", "cudagraph")
    allocator.sleep(offload_tags=("weights", *offload) if level == 1 else offload)


def start_engine(allocator: FakeCuMemAllocator, weights: int, kv_cache: int) -> None:
    """What a sleep-mode vLLM engine allocates at start-up: its weights and its KV cache,
    each in a pool of its own tag (``gpu_worker``: ``_maybe_get_memory_pool_context``)."""
    with allocator.use_memory_pool("weights"):
        allocator.allocate(weights)
    with allocator.use_memory_pool("kv_cache"):
        allocator.allocate(kv_cache)
