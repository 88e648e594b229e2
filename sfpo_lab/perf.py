"""Peak memory of each stage of a training step (the paper's Fig. 8: SFPO vs GRPO per stage).

    mem = StageMemory(device)
    with mem.stage("rollout"):
        ...
    with mem.stage("fast_1"):
        ...
    self.log_dict(mem.metrics())   # {"perf/mem/rollout": GB, "perf/mem/fast_1": GB, ...}
    mem.clear()                    # before the next iteration

CUDA: ``torch.cuda.reset_peak_memory_stats`` when a stage starts, ``max_memory_allocated`` when
it ends (so a stage's number is the most that was allocated at any moment during it, weights,
optimizer state and everything earlier stages left behind included). The process-wide peak
before each reset is remembered, so :func:`sfpo_lab.runtime.peak_memory_gb` still reports the
peak since start. CPU: the resident set size (``/proc/self/statm``), sampled by a background
thread every ``interval_s`` while the stage runs and once on entry and exit; the stage's
number is the largest sample. Unit: GiB (2**30 bytes), the unit of ``perf/peak_mem_gb``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

PREFIX = "perf/mem/"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_cuda_peak_before_reset: dict[int, int] = {}  # device index -> bytes (runtime.peak_memory_gb)


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
) -> Iterator[_RssSampler | None]:
    """Record the peak memory of the code inside as ``sink["perf/mem/<name>"]`` (GiB).

    A stage entered twice in one iteration keeps the larger peak. Yields the CPU sampler (for
    tests: its ``samples`` count), or None on CUDA.

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
        index = torch.cuda.current_device() if device.index is None else device.index
        seen = _cuda_peak_before_reset.get(index, 0)
        _cuda_peak_before_reset[index] = max(seen, torch.cuda.max_memory_allocated(index))
        torch.cuda.reset_peak_memory_stats(index)
        try:
            yield None
        finally:
            torch.cuda.synchronize(index)
            peak = torch.cuda.max_memory_allocated(index)
            sink[key] = max(sink.get(key, 0.0), peak / 2**30)
        return
    sampler = _RssSampler(interval_s)
    sampler.start()
    try:
        yield sampler
    finally:
        peak = sampler.stop()
        sink[key] = max(sink.get(key, 0.0), peak / 2**30)


class StageMemory:
    """Per-stage peaks of one iteration, for ``log_dict`` (``perf/mem/<stage>`` in GiB).

    ``enabled=False`` makes :meth:`stage` a no-op (no thread, no CUDA stat reset).
    """

    def __init__(
        self, device: torch.device | str = "cpu", enabled: bool = True, interval_s: float = 0.005
    ) -> None:
        self.device = torch.device(device)
        self.enabled = enabled
        self.interval_s = interval_s
        self.peaks: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with stage_memory(name, self.peaks, self.device, self.interval_s):
            yield

    def metrics(self) -> dict[str, float]:
        """``{"perf/mem/<stage>": GiB}`` for the stages run since the last :meth:`clear`."""
        return dict(self.peaks)

    def clear(self) -> None:
        self.peaks.clear()


NO_STAGES = StageMemory(enabled=False)  # a stand-in that records nothing
