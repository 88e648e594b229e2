"""Peak memory of each stage of a training step (the paper's Fig. 8: SFPO vs GRPO per stage).

    mem = StageMemory(device)
    with mem.stage("rollout"):
        ...
    with mem.stage("fast_1"):
        ...
    self.log_dict(mem.metrics())   # {"perf/mem/rollout": GB, "perf/mem/fast_1": GB, ...}
    mem.clear()                    # before the next iteration

CUDA: the trainer's memory. ``torch.cuda.reset_peak_memory_stats`` when a stage starts,
``max_memory_allocated`` when it ends (the most that was allocated at any moment during it:
weights, optimizer state and everything earlier stages left behind included), minus the bytes
a colocated vLLM engine holds in its sleep pool (``engine_bytes``, e.g.
``VLLMEngine.pool_bytes``). torch counts that pool (the engine's weights, KV cache and runtime
buffers) as allocated whether vLLM has its pages mapped or not: ``sleep()`` unmaps them but
keeps the tensors, so ``memory_allocated()`` does not fall (vLLM issues 17117, 33625) and every
stage would carry the sleeping engine's share of the device. So ``perf/mem/<stage>`` never
includes the engine's weights and KV cache, asleep or (in ``rollout``) awake; ``rollout`` does
include what vLLM allocates outside its pool while generating (activations, sampler buffers),
and an engine without sleep mode has no pool and is counted whole. The pool is allocated at
engine start-up and sleep/wake only (un)map it, so it is constant within a stage; the smaller
of its sizes at the stage's start and end is subtracted (a change could only overstate the
trainer). The process-wide peak before each reset is remembered as torch reports it (engine
pool included), so :func:`sfpo_lab.training.runtime.peak_memory_gb` is still the process's peak since
start.

CPU: the resident set size (``/proc/self/statm``), sampled by a background thread every
``interval_s`` while the stage runs and once on entry and exit; the stage's number is the
largest sample (the CPU engine never sleeps: its KV cache and weights are in the RSS, and
``engine_bytes`` is 0 there). Unit: GiB (2**30 bytes), the unit of ``perf/peak_mem_gb``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

PREFIX = "perf/mem/"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_cuda_peak_before_reset: dict[int, int] = {}  # device index -> bytes (runtime.peak_memory_gb)
EngineBytes = Callable[[], int]  # bytes a colocated engine's sleep pool holds now (CUDA)


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc/self/statm``; else the peak RSS)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:  # not Linux: the lifetime peak is the best there is
        import resource
        import sys

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb if sys.platform == "darwin" else kb * 1024


def cuda_peak_since_start(device: torch.device) -> int:
    """Peak allocated CUDA bytes since the process started, across stage resets."""
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    return max(torch.cuda.max_memory_allocated(index), _cuda_peak_before_reset.get(index, 0))


class _RssSampler(threading.Thread):
    """Samples the RSS every ``interval_s`` until stopped; ``peak`` is the largest sample."""

    def __init__(self, interval_s: float) -> None:
        super().__init__(name="stage-memory-rss", daemon=True)
        self.interval_s = interval_s
        self.peak = rss_bytes()
        self.samples = 1
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.peak = max(self.peak, rss_bytes())
            self.samples += 1

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, rss_bytes())
        return self.peak


@contextmanager
def stage_memory(
    name: str,
    sink: dict[str, float],
    device: torch.device | str = "cpu",
    interval_s: float = 0.005,
    engine_bytes: EngineBytes | None = None,
) -> Iterator[_RssSampler | None]:
    """Record the peak memory of the code inside as ``sink["perf/mem/<name>"]`` (GiB).

    A stage entered twice in one iteration keeps the larger peak. Yields the CPU sampler (for
    tests: its ``samples`` count), or None on CUDA. ``engine_bytes`` (CUDA): the bytes of a
    colocated engine's sleep pool, left out of the peak (module docstring).

    Raises:
        ValueError: an empty ``name``, or ``interval_s`` <= 0, before anything is measured.
    """
    if not name or "/" in name:
        raise ValueError(f"stage_memory: name {name!r} must be a non-empty word without '/'")
    if interval_s <= 0:
        raise ValueError(f"stage_memory: interval_s={interval_s} must be > 0")
    device = torch.device(device)
    key = PREFIX + name
    if device.type == "cuda":
        with _cuda_stage(device, key, sink, engine_bytes or _no_engine):
            yield None
        return
    sampler = _RssSampler(interval_s)
    sampler.start()
    try:
        yield sampler
    finally:
        peak = sampler.stop()
        sink[key] = max(sink.get(key, 0.0), peak / 2**30)


def _no_engine() -> int:
    return 0


@contextmanager
def _cuda_stage(
    device: torch.device, key: str, sink: dict[str, float], engine_bytes: EngineBytes
) -> Iterator[None]:
    """The CUDA branch of :func:`stage_memory`: peak allocated minus the engine's pool."""
    index = torch.cuda.current_device() if device.index is None else device.index
    seen = _cuda_peak_before_reset.get(index, 0)
    _cuda_peak_before_reset[index] = max(seen, torch.cuda.max_memory_allocated(index))
    torch.cuda.reset_peak_memory_stats(index)
    held = engine_bytes()
    try:
        yield
    finally:
        torch.cuda.synchronize(index)
        peak = torch.cuda.max_memory_allocated(index)
        held = min(held, engine_bytes())
        sink[key] = max(sink.get(key, 0.0), max(peak - held, 0) / 2**30)


class StageMemory:
    """Per-stage peaks of one iteration, for ``log_dict`` (``perf/mem/<stage>`` in GiB).

    ``enabled=False`` makes :meth:`stage` a no-op (no thread, no CUDA stat reset).
    ``engine_bytes`` (CUDA): returns the bytes a colocated engine's sleep pool holds (e.g.
    ``VLLMEngine.pool_bytes``), left out of every stage (module docstring).
    """

    def __init__(
        self,
        device: torch.device | str = "cpu",
        enabled: bool = True,
        interval_s: float = 0.005,
        engine_bytes: EngineBytes | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.enabled = enabled
        self.interval_s = interval_s
        self.engine_bytes = engine_bytes
        self.peaks: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with stage_memory(name, self.peaks, self.device, self.interval_s, self.engine_bytes):
            yield

    def metrics(self) -> dict[str, float]:
        """``{"perf/mem/<stage>": GiB}`` for the stages run since the last :meth:`clear`."""
        return dict(self.peaks)

    def clear(self) -> None:
        self.peaks.clear()


NO_STAGES = StageMemory(enabled=False)  # a stand-in that records nothing
