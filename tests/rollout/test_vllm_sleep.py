"""VLLMEngine's sleep/wake state machine against a double of ``vllm.LLM`` that enforces vLLM's
level-1 / level-2 semantics (``fake_vllm.py``), for every call pattern of a run: training
iterations, validation over six benchmarks, chunked generation and resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fake_vllm import EOS, FAKE_VLLM, PAD, FakeLLM, FakeSamplingParams
from fake_vllm import tiny_model as make_vllm_model

import sfpo_lab.rollout.vllm as vllm_mod
from sfpo_lab.data.records import Problem
from sfpo_lab.eval.callback import evaluate_benchmarks
from sfpo_lab.rewards.pool import MathVerifier
from sfpo_lab.rollout import SamplingParams, VLLMEngine, module_weights
from sfpo_lab.rollout.vllm import SleepState

PROMPTS = [[5, 6, 7], [2, 3, 4, 5, 9, 8], [11], [20, 21, 22, 23]]
TRAIN = SamplingParams(n=2, max_new_tokens=6, return_logprobs=True)
VAL = SamplingParams(n=2, max_new_tokens=6)


class Policy:
    """The trainer side: a tiny model whose weights change at every iteration."""

    def __init__(self, seed: int = 1, iteration: int = 0) -> None:
        self.model = make_vllm_model(seed)
        self.iteration = iteration

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
            make_vllm_model(0),  # the base weights the engine starts from
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


def fake(engine: VLLMEngine) -> FakeLLM:
    return engine.llm


def assert_generates_with(engine: VLLMEngine, policy: Policy) -> None:
    """The double's weights are the policy's, exactly, and it is asleep again (GPU)."""
    for name, value in policy.model.state_dict().items():
        assert torch.equal(fake(engine).model.state_dict()[name], value), name
    if engine.sleep_level:
        assert engine.state in (SleepState.ASLEEP_KEPT, SleepState.ASLEEP_DROPPED)


# ---------------------------------------------------------------------- the double itself
def test_double_enforces_vllm_sleep_semantics(tmp_path: Path) -> None:
    make_vllm_model(0).save_pretrained(tmp_path)
    llm = FakeLLM(str(tmp_path), enable_sleep_mode=True)
    state = {k: v.clone() for k, v in llm.model.state_dict().items()}
    request = [{"prompt_token_ids": [3, 4]}]
    llm.sleep(level=1)
    with pytest.raises(RuntimeError, match="scheduler"):
        llm.generate(request, FakeSamplingParams())
    with pytest.raises(RuntimeError, match="unmapped"):
        llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": [], "is_checkpoint_format": True}
        )
    llm.sleep(level=2)  # already asleep: no-op, stays level 1
    assert llm.wake_up(tags=["weights"]) is False  # KV cache still asleep
    assert llm.wake_up(tags=["weights", "kv_cache"]) is False  # weights awake: nothing woken
    assert llm.wake_up(tags=["kv_cache"]) is True
    assert all(torch.equal(llm.model.state_dict()[k], v) for k, v in state.items())  # kept
    llm.generate(request, FakeSamplingParams())

    llm.sleep(level=2)
    llm.wake_up(tags=["weights"])
    llm.wake_up(tags=["kv_cache"])
    with pytest.raises(RuntimeError, match="garbage"):
        llm.generate(request, FakeSamplingParams())
    llm.collective_rpc(
        "reload_weights", kwargs={"weights_iterator": state.items(), "is_checkpoint_format": True}
    )
    llm.generate(request, FakeSamplingParams())


# ---------------------------------------------------------------------- call patterns
@pytest.mark.parametrize("level", [None, 1, 2], ids=["cpu-no-sleep", "level1", "level2"])
def test_training_iterations_push_once_per_version(make_engine, level) -> None:
    policy = Policy()
    engine = make_engine(level, policy)
    for _ in range(3):
        batch = engine.generate(PROMPTS, TRAIN, seed=policy.iteration)
        assert len(batch) == 8 and batch.logprobs is not None
        assert_generates_with(engine, policy)
        policy.update()
    assert fake(engine).events.count("reload_weights") == 3
    if level:  # the order vLLM needs: weights awake -> reload -> KV cache awake -> generate
        events = fake(engine).events
        i = events.index("reload_weights")
        assert events[i - 1 : i + 4] == [
            "wake_up(['weights'])",
            "reload_weights",
            "reset_prefix_cache",
            "wake_up(['kv_cache'])",
            "generate",
        ]


def _benchmarks() -> dict[str, list[Problem]]:
    names = ["math500", "aime24", "aime25", "amc23", "minerva", "olympiad"]
    return {
        name: [
            Problem(id=f"{name}-{i}", problem=f"{b} plus {i}", answer=str(b + i)) for i in range(3)
        ]
        for b, name in enumerate(names)
    }


def _validate(engine: VLLMEngine, verifier: MathVerifier, seed: int) -> dict:
    return evaluate_benchmarks(
        engine,
        lambda texts: [[2 + ord(c) % 30 for c in t] for t in texts],
        _Digits(),
        verifier.grade_many,
        _benchmarks(),
        VAL,
        seed=seed,
    )


class _Digits:
    def decode(self, ids: list[int]) -> str:
        return "".join(str(i % 10) for i in ids)


@pytest.mark.parametrize("level", [None, 1, 2], ids=["cpu-no-sleep", "level1", "level2"])
def test_validation_over_six_benchmarks_between_training_iterations(make_engine, level) -> None:
    policy = Policy()
    engine = make_engine(level, policy)
    with MathVerifier(num_workers=0) as verifier:
        for it in range(3):
            if it % 2 == 0:  # validation at iterations 0 and 2, before that iteration's rollout
                generated = fake(engine).events.count("generate")
                results = _validate(engine, verifier, seed=it)
                assert fake(engine).events.count("generate") == generated + 1  # one call
                assert list(results) == list(_benchmarks())
                assert all(r.correct.shape == (3, 2) for r in results.values())
                assert_generates_with(engine, policy)
            engine.generate(PROMPTS, TRAIN, seed=it)
            assert_generates_with(engine, policy)
            policy.update()
    pushes = fake(engine).events.count("reload_weights")
    # level 2 drops the weights after validation: the rollout of the same iteration re-pushes
    assert pushes == {None: 3, 1: 3, 2: 5}[level]


@pytest.mark.parametrize("level", [None, 1, 2], ids=["cpu-no-sleep", "level1", "level2"])
def test_chunked_generation(make_engine, level) -> None:
    policy = Policy()
    engine = make_engine(level, policy)
    for chunk in range(3):  # rollout.prompts_per_generate: one call per chunk
        engine.generate(PROMPTS[chunk : chunk + 2], TRAIN, seed=chunk)
        assert_generates_with(engine, policy)
    assert fake(engine).events.count("reload_weights") == (3 if level == 2 else 1)
    policy.update()
    before = fake(engine).events.count("reload_weights")
    with engine.keep_awake():  # chunks back to back: awake in between, one push
        for chunk in range(3):
            engine.generate(PROMPTS[chunk : chunk + 2], TRAIN, seed=chunk)
            assert engine.state is SleepState.AWAKE
    assert_generates_with(engine, policy)
    assert fake(engine).events.count("reload_weights") == before + 1


@pytest.mark.parametrize("level", [None, 1, 2], ids=["cpu-no-sleep", "level1", "level2"])
def test_resume_pushes_the_restored_weights_first(make_engine, level) -> None:
    policy = Policy(seed=3, iteration=5)  # weights and iteration restored from a checkpoint
    engine = make_engine(level, policy)  # a fresh engine on the base weights
    engine.generate(PROMPTS, TRAIN, seed=0)
    assert_generates_with(engine, policy)
    assert fake(engine).events.count("reload_weights") == 1


def test_explicit_pushes_without_a_source_still_work_and_level2_says_what_to_do(
    make_engine,
) -> None:
    policy = Policy()
    engine = make_engine(2)  # the module's current flow: sync_weights, then generate
    engine.sync_weights(policy.model.state_dict().items())
    engine.generate(PROMPTS, TRAIN, seed=0)
    assert_generates_with(engine, policy)
    assert engine.needs_weights  # level 2 dropped them
    with pytest.raises(RuntimeError, match="set_weight_source"):
        engine.generate(PROMPTS, TRAIN, seed=0)
    engine.sync_weights(policy.model.state_dict().items())
    engine.generate(PROMPTS, TRAIN, seed=0)


def test_one_seed_per_call_and_no_request_seeds(make_engine) -> None:
    policy = Policy()
    engine = make_engine(1, policy)
    torch.manual_seed(123)
    first = engine.generate(PROMPTS, TRAIN, seed=7)
    after = torch.rand(3)
    torch.manual_seed(123)
    again = engine.generate(PROMPTS, TRAIN, seed=7)
    assert torch.equal(first.input_ids, again.input_ids)
    assert torch.equal(torch.rand(3), after)  # the caller's RNG is restored
    other = engine.generate(PROMPTS, TRAIN, seed=8)
    assert not torch.equal(first.input_ids, other.input_ids)
    assert {p.seed for p in fake(engine).sampling} == {None}
    # chunks of one batch share the seed; their keys keep the noise streams apart
    a = engine.generate(PROMPTS[:1], TRAIN, seed=7, keys=[0])
    b = engine.generate(PROMPTS[:1], TRAIN, seed=7, keys=[1])
    assert torch.equal(a.input_ids, engine.generate(PROMPTS[:1], TRAIN, seed=7, keys=[0]).input_ids)
    assert not torch.equal(a.input_ids, b.input_ids)


def test_tensor_parallel_size_must_divide_the_ranks(make_engine) -> None:
    with pytest.raises(ValueError, match=r"tensor_parallel_size=2 with 1 rank\(s\): allowed a div"):
        VLLMEngine("unused", PAD, EOS, max_model_len=8, tensor_parallel_size=2)
