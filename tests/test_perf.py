"""sfpo_lab.run.perf: per-stage peak memory (CPU RSS sampled by a thread; CUDA peak per stage)."""

from __future__ import annotations

import time

import pytest
import torch

from sfpo_lab.run import perf
from sfpo_lab.run.perf import PREFIX, StageMemory, rss_bytes, stage_memory
from sfpo_lab.training import runtime

MB = 2**20


def _touch(n_bytes: int) -> torch.Tensor:
    return torch.ones(n_bytes // 4, dtype=torch.float32)  # written: every page resident


def test_a_stage_holding_a_large_tensor_reports_at_least_its_size_above_an_idle_stage():
    mem = StageMemory("cpu")
    size = 256 * MB
    with mem.stage("idle"):
        pass
    with mem.stage("alloc"):
        big = _touch(size)
    del big
    with mem.stage("after"):
        pass
    m = mem.metrics()
    assert set(m) == {PREFIX + "idle", PREFIX + "alloc", PREFIX + "after"}
    assert (m[PREFIX + "alloc"] - m[PREFIX + "idle"]) * 2**30 >= 0.97 * size
    # freed (glibc returns a large block to the OS): the next stage is back near idle
    assert (m[PREFIX + "after"] - m[PREFIX + "idle"]) * 2**30 < 0.5 * size


def test_the_background_thread_catches_a_peak_freed_before_the_stage_ends():
    sink: dict[str, float] = {}
    size = 192 * MB
    with stage_memory("idle", sink):
        pass
    with stage_memory("transient", sink, interval_s=0.001) as sampler:
        big = _touch(size)
        taken = sampler.samples
        deadline = time.monotonic() + 30
        while sampler.samples < taken + 2 and time.monotonic() < deadline:  # sampled while held
            time.sleep(0.001)
        assert sampler.samples >= taken + 2, "the RSS sampler thread did not run"
        del big
        end_rss = rss_bytes()
    assert (sink[PREFIX + "transient"] - sink[PREFIX + "idle"]) * 2**30 >= 0.97 * size
    assert sink[PREFIX + "transient"] * 2**30 > end_rss + 0.9 * size


def test_a_repeated_stage_keeps_its_larger_peak_and_clear_empties():
    mem = StageMemory("cpu")
    with mem.stage("x"):
        big = _touch(128 * MB)
    del big
    first = mem.metrics()[PREFIX + "x"]
    with mem.stage("x"):
        pass
    assert mem.metrics()[PREFIX + "x"] == first
    mem.clear()
    assert mem.metrics() == {}


def test_disabled_records_nothing_and_bad_names_are_refused():
    mem = StageMemory("cpu", enabled=False)
    with mem.stage("rollout"):
        pass
    assert mem.metrics() == {}
    for bad in ("", "a/b"):
        with pytest.raises(ValueError, match="stage_memory: name"), stage_memory(bad, {}):
            pass
    with pytest.raises(ValueError, match="interval_s=0"), stage_memory("x", {}, interval_s=0):
        pass


class _FakeCuda:
    """CPU double of torch.cuda's allocator statistics: ``max_memory_allocated`` is the peak
    of the allocated bytes since the last ``reset_peak_memory_stats``, which sets it to the
    bytes allocated now (CUDA's documented semantics)."""

    def __init__(self) -> None:
        self.allocated = 0
        self.peak = 0

    def alloc(self, n: int) -> None:
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def free(self, n: int) -> None:
        self.allocated -= n

    def reset_peak_memory_stats(self, device=None) -> None:
        self.peak = self.allocated

    def max_memory_allocated(self, device=None) -> int:
        return self.peak

    def current_device(self) -> int:
        return 0

    def synchronize(self, device=None) -> None:
        pass


def test_cuda_branch_resets_per_stage_and_keeps_the_process_peak(monkeypatch):
    fake = _FakeCuda()
    for name in (
        "reset_peak_memory_stats",
        "max_memory_allocated",
        "current_device",
        "synchronize",
    ):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    monkeypatch.setattr(perf, "_cuda_peak_before_reset", {})
    mem = StageMemory("cuda:0")
    fake.alloc(1 * 2**30)  # weights
    with mem.stage("rollout"):
        fake.alloc(3 * 2**30)  # KV cache, freed inside
        fake.free(3 * 2**30)
    with mem.stage("fast_1"):
        fake.alloc(2 * 2**30)  # activations + grads
        fake.free(1 * 2**30)
    with mem.stage("reposition"):
        pass
    assert mem.metrics() == {
        PREFIX + "rollout": 4.0,
        PREFIX + "fast_1": 3.0,
        PREFIX + "reposition": 2.0,  # what fast_1 left allocated
    }
    assert runtime.peak_memory_gb(torch.device("cuda:0")) == 4.0  # not just the last stage's


def test_the_cumem_double_keeps_torch_allocated_through_sleep_as_vllm_does(monkeypatch):
    """vLLM's sleep unmaps its pool's pages but keeps the tensors: ``memory_allocated`` does not
    move, ``mem_get_info`` sees the pages go; level 1 copies the weights to host and back."""
    from tests.doubles.cumem import FakeCuda, FakeCuMemAllocator, start_engine, suspend

    cuda = FakeCuda().install(monkeypatch)
    pool = FakeCuMemAllocator(cuda)
    start_engine(pool, weights=3 * 2**30, kv_cache=5 * 2**30)
    segments = {d.tag: d.handle[1] for d in pool.pointer_to_data.values()}
    allocated, free_awake = torch.cuda.memory_allocated(), torch.cuda.mem_get_info()[0]
    assert allocated == 8 * 2**30
    suspend(pool, level=2)
    assert torch.cuda.memory_allocated() == allocated  # vLLM issues 17117, 33625
    assert torch.cuda.mem_get_info()[0] - free_awake == sum(segments.values())
    assert pool.host_copies == 0  # level 2 keeps nothing
    pool.wake_up(tags=["weights"])  # the KV cache stays unmapped
    assert free_awake + segments["kv_cache"] == torch.cuda.mem_get_info()[0]
    pool.wake_up(tags=["kv_cache"])
    suspend(pool, level=1)
    pool.wake_up()
    assert pool.host_copies == 2 * segments["weights"]  # out at sleep, back at wake
    assert torch.cuda.memory_allocated() == allocated


def test_cuda_stage_memory_leaves_out_a_sleeping_vllm_engines_pool(monkeypatch):
    """Fig. 8 beside a colocated vLLM engine: without ``engine_bytes`` every stage carries the
    sleeping engine's 8 GiB; with it, the trainer's memory only."""
    from tests.doubles.cumem import FakeCuda, FakeCuMemAllocator, start_engine, suspend

    cuda = FakeCuda().install(monkeypatch)
    monkeypatch.setattr(perf, "_cuda_peak_before_reset", {})
    pool = FakeCuMemAllocator(cuda)
    start_engine(pool, weights=3 * 2**30, kv_cache=5 * 2**30)
    suspend(pool, level=2)
    cuda.alloc(1 * 2**30)  # the trainer's weights and optimizer state

    def iteration(mem: StageMemory) -> dict[str, float]:
        with mem.stage("rollout"):
            pool.wake_up(tags=["weights"])
            pool.wake_up(tags=["kv_cache"])
            cuda.alloc(2**29)  # generation: activations outside vLLM's pool
            cuda.free(2**29)
            suspend(pool, level=2)
        with mem.stage("fast_1"):
            cuda.alloc(2 * 2**30)
            cuda.free(2 * 2**30)
        return mem.metrics()

    def pool_bytes() -> int:
        from sfpo_lab.rollout.vllm_memory import cumem_pool_bytes

        return cumem_pool_bytes(pool)

    today = iteration(StageMemory("cuda:0"))
    assert today == {PREFIX + "rollout": 9.5, PREFIX + "fast_1": 11.0}  # trainer + engine
    mem = StageMemory("cuda:0", engine_bytes=pool_bytes)
    assert iteration(mem) == {PREFIX + "rollout": 1.5, PREFIX + "fast_1": 3.0}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_stage_peak_on_a_real_device():
    dev = torch.device("cuda")
    mem = StageMemory(dev)
    with mem.stage("idle"):
        pass
    with mem.stage("alloc"):
        x = torch.ones(2**28, device=dev)  # 1 GiB
        del x
    m = mem.metrics()
    assert m[PREFIX + "alloc"] - m[PREFIX + "idle"] == pytest.approx(1.0, abs=0.01)
