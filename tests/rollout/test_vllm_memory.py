"""Where the colocated vLLM engine's memory is (``sfpo_lab/rollout/vllm_memory.py``), against the
``vllm.LLM`` double (``fake_vllm.py``) and the sleep-pool accounting double
(``tests/doubles/cumem.py``): the pool the memory meter leaves out, the host defaults the
engine is built under, and level-1 sleeps that skip host copies a push would overwrite."""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fake_vllm import EOS, FAKE_VLLM, PAD, FakeLLM, FakeSamplingParams
from fake_vllm import tiny_model as make_vllm_model

import sfpo_lab.rollout.vllm as vllm_mod
from sfpo_lab.rollout import SamplingParams, VLLMEngine, module_weights
from sfpo_lab.run import perf
from sfpo_lab.run.perf import PREFIX, StageMemory
from tests.doubles.cumem import FakeCuda, FakeCuMemAllocator, GiB

PROMPTS = [[5, 6, 7], [2, 3, 4, 5, 9, 8], [11], [20, 21, 22, 23]]
TRAIN = SamplingParams(n=2, max_new_tokens=6, return_logprobs=True)


class Policy:
    """The trainer side: a tiny model whose weights change at every iteration."""

    def __init__(self) -> None:
        self.model = make_vllm_model(1)
        self.iteration = 0

    @torch.no_grad()
    def update(self) -> None:
        for p in self.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        self.iteration += 1


@pytest.fixture
def make_engine(tmp_path: Path, monkeypatch) -> Callable[..., VLLMEngine]:
    monkeypatch.setattr(vllm_mod, "import_vllm", lambda: FAKE_VLLM)
    made = iter(range(100))

    def make(level: int | None, policy: Policy | None = None) -> VLLMEngine:
        engine = VLLMEngine.from_model(
            make_vllm_model(0),
            tmp_path / f"model{next(made)}",
            PAD,
            EOS,
            max_model_len=64,
            device="cpu" if level is None else "cuda",  # cuda: the GPU settings (sleep mode)
            enable_sleep_mode=level is not None,
            sleep_level=level or 2,
        )
        if policy is not None:
            engine.set_weight_source(module_weights(policy.model), lambda: policy.iteration)
        return engine

    return make


@pytest.fixture
def pool(monkeypatch) -> FakeCuMemAllocator:
    """A fake CUDA device with vLLM's sleep-pool allocator, seen by the engine and the double."""
    cuda = FakeCuda().install(monkeypatch)
    allocator = FakeCuMemAllocator(cuda)
    monkeypatch.setattr(FakeLLM, "cumem", allocator)
    monkeypatch.setattr(vllm_mod, "live_cumem_allocator", lambda: allocator, raising=False)
    monkeypatch.setattr(perf, "_cuda_peak_before_reset", {})
    return allocator


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


# ---------------------------------------------------------------------- item 5: the meter
def test_pool_bytes_is_what_torch_counts_for_the_sleep_pool(make_engine, pool) -> None:
    engine = make_engine(2)
    want = -(-_param_bytes(make_vllm_model(0)) // 512) * 512 + FakeLLM.KV_CACHE_BYTES  # blocks
    assert engine.pool_bytes() == want == torch.cuda.memory_allocated()
    assert make_engine(None).pool_bytes() == 0  # CPU: no sleep pool (the engine is in the RSS)


def test_stage_memory_with_the_engines_pool_reports_the_trainer_only(make_engine, pool) -> None:
    """One iteration as the module runs it: a rollout (engine awake inside), then an update;
    the engine sleeps outside the rollout, yet torch still counts its pool."""
    policy = Policy()
    engine = make_engine(2, policy)
    engine_held = torch.cuda.memory_allocated()
    cuda = pool.cuda
    cuda.alloc(1 * GiB)  # the trainer's weights and optimizer state

    def iteration(mem: StageMemory) -> dict[str, float]:
        with mem.stage("rollout"):
            engine.generate(PROMPTS, TRAIN, seed=policy.iteration)
        with mem.stage("fast_1"):
            cuda.alloc(2 * GiB)  # activations and gradients
            cuda.free(2 * GiB)
        policy.update()
        return mem.metrics()

    today = iteration(StageMemory("cuda:0"))  # e086ca0's meter: no way to leave the pool out
    assert today[PREFIX + "fast_1"] * GiB == 3 * GiB + engine_held
    wired = StageMemory("cuda:0", engine_bytes=engine.pool_bytes)  # module.py's wiring
    assert iteration(wired) == {PREFIX + "rollout": 1.0, PREFIX + "fast_1": 3.0}


# ---------------------------------------------------------------------- item 8: host defaults
def test_a_default_device_around_the_engine_does_not_reach_vllm(tmp_path: Path, monkeypatch):
    """Lightning builds the module's engine in ``configure_model``, inside
    ``Strategy.tensor_init_context`` (``with self.root_device``: cuda:N) and, for
    ``bf16-true``, the precision plugin's default dtype. vLLM must not see either."""
    from lightning.pytorch.plugins.precision import HalfPrecision
    from lightning.pytorch.strategies import SingleDeviceStrategy

    seen: dict[str, object] = {}

    class SpyLLM(FakeLLM):
        def __init__(self, model: str, **kwargs: object) -> None:
            seen.update(device=torch.get_default_device(), dtype=torch.get_default_dtype())
            super().__init__(model, **kwargs)  # loads the model: CUDA tensors fail here

    spy = types.SimpleNamespace(LLM=SpyLLM, SamplingParams=FakeSamplingParams)
    monkeypatch.setattr(vllm_mod, "import_vllm", lambda: spy)
    make_vllm_model(0).save_pretrained(tmp_path)
    strategy = SingleDeviceStrategy(device=torch.device("cuda", 0))
    with strategy.tensor_init_context(), HalfPrecision("bf16-true").module_init_context():
        engine = VLLMEngine(tmp_path, PAD, EOS, max_model_len=64, device="cpu")
        assert torch.get_default_device() == torch.device("cuda", 0)  # the caller's, restored
        assert torch.get_default_dtype() == torch.bfloat16
    assert seen == {"device": torch.device("cpu"), "dtype": torch.float32}
    assert engine.generate(PROMPTS[:1], TRAIN, seed=0).input_ids.device.type == "cpu"


# ---------------------------------------------------------------------- item 12: host copies
def test_level1_rollouts_skip_the_host_round_trip_a_push_overwrites(make_engine, pool) -> None:
    """A level-1 engine keeps its weights in host RAM across a sleep; after a rollout the
    trainer updates them, so the copy out and back in would be overwritten by the next push:
    ``keep_awake(replace_weights=True)`` drops them instead. Validation (no hint) still keeps
    them for the rollout of the same version, which then needs no push."""
    policy = Policy()
    engine = make_engine(1, policy)
    weights = pool.get_current_usage() - FakeLLM.KV_CACHE_BYTES  # the weights' segments
    start_copies = pool.host_copies  # construction sleeps at level 1 (no source yet)
    for it in range(3):
        if it == 1:  # validation, then the rollout of the same iteration
            engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=6), seed=99)
        with engine.keep_awake(replace_weights=True):  # the module's rollout
            engine.generate(PROMPTS, TRAIN, seed=it)
        for name, value in policy.model.state_dict().items():
            assert torch.equal(engine.llm.model.state_dict()[name], value), name
        policy.update()
    events = engine.llm.events
    assert events.count("reload_weights") == 3  # one push per weight version
    assert [e for e in events if e.startswith("sleep")] == ["sleep(1)"] + ["sleep(2)"] + [
        "sleep(1)",  # validation: kept for the rollout that follows
        "sleep(2)",
        "sleep(2)",
    ]
    # host copies: the start weights restored at the first wake, then only validation's pair
    assert pool.host_copies - start_copies == weights + 2 * weights
