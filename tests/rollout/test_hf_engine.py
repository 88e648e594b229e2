"""HFEngine on a tiny random Qwen2: shapes, padding, EOS, ordering, determinism, log-probs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from sfpo_lab.rollout import HFEngine, RolloutEngine, SamplingParams, derive_seed

PAD, EOS = 0, 1
PROMPTS = [[5, 6, 7], [2, 3, 4, 5, 9, 8], [11]]


@pytest.fixture
def engine(model) -> HFEngine:
    return HFEngine(model, pad_token_id=PAD, eos_token_id=EOS)


def test_engine_satisfies_protocol(engine: HFEngine) -> None:
    assert isinstance(engine, RolloutEngine)


def test_shapes_and_prompt_block(engine: HFEngine) -> None:
    batch = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=5), seed=0)
    n_rows, width = batch.input_ids.shape
    assert (n_rows, batch.prompt_len) == (6, 6)
    assert width == 6 + batch.response_mask.shape[1] <= 6 + 5
    assert batch.logprobs is None and batch.truncated.dtype == torch.bool
    assert batch.prompt_ids[4].tolist() == [0, 0, 0, 0, 0, 11]
    assert batch.prompt_mask[4].tolist() == [0, 0, 0, 0, 0, 1]


def test_n_samples_are_prompt_major(engine: HFEngine) -> None:
    n = 3
    batch = engine.generate(PROMPTS, SamplingParams(n=n, max_new_tokens=4), seed=0)
    for i, prompt in enumerate(PROMPTS):
        for row in range(i * n, i * n + n):
            real = batch.prompt_ids[row][batch.prompt_mask[row].bool()]
            assert real.tolist() == prompt
    greedy = engine.generate(PROMPTS, SamplingParams(n=n, max_new_tokens=4, greedy=True))
    for i in range(len(PROMPTS)):
        group = greedy.response_ids[i * n : i * n + n]
        assert (group == group[0]).all()


def test_left_padding_does_not_change_greedy_continuations(engine: HFEngine) -> None:
    params = SamplingParams(max_new_tokens=8, greedy=True, return_logprobs=True)
    together = engine.generate(PROMPTS, params)
    for i, prompt in enumerate(PROMPTS):
        alone = engine.generate([prompt], params)
        r = alone.response_mask.shape[1]
        assert together.response_ids[i, :r].tolist() == alone.response_ids[0].tolist()
        torch.testing.assert_close(together.logprobs[i, :r], alone.logprobs[0], atol=1e-5, rtol=0)


def _eos_biased(model: nn.Module, bias: float) -> nn.Module:
    """A copy of ``model`` whose LM head adds ``bias`` to the EOS logit."""
    biased = type(model)(model.config).eval()
    biased.load_state_dict(model.state_dict())
    head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[EOS] = bias
    biased.lm_head = head
    return biased


def test_forced_eos_stops_every_row_early(model) -> None:
    engine = HFEngine(_eos_biased(model, 100.0), PAD, EOS)
    batch = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=10), seed=0)
    assert batch.response_ids.tolist() == [[EOS]] * 6  # R = 1, not max_new_tokens
    assert batch.response_mask.tolist() == [[1]] * 6
    assert not batch.truncated.any()


def test_eos_masking_with_ragged_stops(model, teacher_forced) -> None:
    engine = HFEngine(_eos_biased(model, 3.0), PAD, EOS)
    params = SamplingParams(n=8, max_new_tokens=12, return_logprobs=True)
    batch = engine.generate(PROMPTS, params, seed=3)
    lengths = batch.response_lengths
    assert lengths.max() == batch.response_mask.shape[1]
    assert len(set(lengths.tolist())) > 2, "want ragged stops for this test"
    for row in range(len(batch)):
        length, ids = int(lengths[row]), batch.response_ids[row]
        assert batch.response_mask[row].tolist() == [1] * length + [0] * (len(ids) - length)
        assert (ids[length:] == PAD).all()
        assert EOS not in ids[: length - 1].tolist()
        assert bool(batch.truncated[row]) == (ids[length - 1].item() != EOS)
        assert bool(batch.truncated[row]) == (length == params.max_new_tokens and ids[-1] != EOS)
    assert (batch.logprobs[batch.response_mask == 0] == 0).all()
    torch.testing.assert_close(
        batch.logprobs, teacher_forced(engine.model, batch), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(n=4, max_new_tokens=10, temperature=0.7, return_logprobs=True),
        SamplingParams(n=4, max_new_tokens=10, temperature=1.3, top_k=5, return_logprobs=True),
        SamplingParams(n=4, max_new_tokens=10, top_p=0.6, return_logprobs=True),
        SamplingParams(
            n=4, max_new_tokens=10, temperature=0.8, top_k=6, top_p=0.7, return_logprobs=True
        ),
        SamplingParams(n=1, max_new_tokens=10, temperature=0.5, greedy=True, return_logprobs=True),
    ],
    ids=["temperature", "top_k", "top_p", "all", "greedy"],
)
def test_logprobs_equal_teacher_forced(engine: HFEngine, teacher_forced, params) -> None:
    batch = engine.generate(PROMPTS, params, seed=11)
    expected = teacher_forced(
        engine.model, batch, params.temperature, max(params.top_k, 0), params.top_p
    )
    torch.testing.assert_close(batch.logprobs, expected, atol=1e-5, rtol=0)
    if params.top_k > 0 or params.top_p < 1:  # the filtering really renormalised something
        unfiltered = teacher_forced(engine.model, batch, params.temperature)
        assert (batch.logprobs - unfiltered).abs().max() > 1e-3


def test_same_seed_same_batch_and_global_rng_untouched(engine: HFEngine) -> None:
    params = SamplingParams(n=4, max_new_tokens=8, return_logprobs=True)
    torch.manual_seed(123)
    first = engine.generate(PROMPTS, params, seed=7)
    after_call = torch.rand(3)
    torch.manual_seed(123)
    second = engine.generate(PROMPTS, params, seed=7)
    assert torch.equal(first.input_ids, second.input_ids)
    assert torch.equal(first.logprobs, second.logprobs)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after_call)  # generate() drew nothing from the global RNG
    other = engine.generate(PROMPTS, params, seed=8)
    assert not torch.equal(first.input_ids, other.input_ids)


def test_training_mode_is_restored(model) -> None:
    model.train()
    try:
        HFEngine(model, PAD, EOS).generate([[3]], SamplingParams(max_new_tokens=2), seed=0)
        assert model.training
    finally:
        model.eval()


CHUNKS = {0: [[5, 6, 7], [11]], 1: [[2, 3, 4, 5, 9, 8], [4, 4]]}
CHUNK_PARAMS = SamplingParams(n=3, max_new_tokens=6)


def _chunk_ids(engine: HFEngine, chunk: int) -> list[list[int]]:
    seed = derive_seed(17, 2, chunk)  # (run seed, iteration, global chunk index)
    return engine.generate(CHUNKS[chunk], CHUNK_PARAMS, seed=seed).input_ids.tolist()


def test_chunks_are_independent_of_order_and_process(model, tmp_path: Path) -> None:
    engine = HFEngine(model, PAD, EOS)
    in_order = [_chunk_ids(engine, 0), _chunk_ids(engine, 1)]
    torch.rand(5)  # unrelated global draws between calls must not matter
    reversed_order = [_chunk_ids(engine, 1), _chunk_ids(engine, 0)][::-1]
    assert in_order == reversed_order

    # another process (another "rank") generating chunk 1 alone gets the same rows
    model.save_pretrained(tmp_path / "model")
    script = textwrap.dedent(
        f"""
        import json, torch
        from transformers import AutoModelForCausalLM
        from sfpo_lab.rollout import HFEngine, SamplingParams, derive_seed
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "model")!r}).eval()
        params = SamplingParams(n=3, max_new_tokens=6)
        batch = HFEngine(model, {PAD}, {EOS}).generate(
            {CHUNKS[1]!r}, params, seed=derive_seed(17, 2, 1))
        print(json.dumps(batch.input_ids.tolist()))
        """
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == in_order[1]


def test_closed_engine_refuses_to_generate(model) -> None:
    engine = HFEngine(model, PAD, EOS)
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate([[3]], SamplingParams(max_new_tokens=1))


# ---------------------------------------------------------------- device (issue 14, item 1)
def test_owned_copy_moves_to_the_training_device(model_factory) -> None:
    engine = HFEngine(model_factory(0), PAD, EOS, owns_model=True, device="meta")
    assert engine.device == torch.device("meta")
    assert {p.device.type for p in engine.model.parameters()} == {"meta"}
    cpu = HFEngine(model_factory(0), PAD, EOS, owns_model=True, device="cpu")
    assert cpu.device == torch.device("cpu") and cpu.dtype == torch.float32


def test_refuses_to_generate_on_the_host_beside_an_accelerator(model) -> None:
    engine = HFEngine(model, PAD, EOS, device="cuda")  # borrowed: not moved
    assert engine.device == torch.device("cuda")
    with pytest.raises(RuntimeError, match="on cpu but the training device is cuda"):
        engine.generate([[3]], SamplingParams(max_new_tokens=2), seed=0)


def test_weight_source_pushes_when_the_version_changes(model_factory) -> None:
    trainer = {"model": model_factory(1), "iteration": 0}
    engine = HFEngine(model_factory(0), PAD, EOS, owns_model=True)
    engine.set_weight_source(
        lambda: trainer["model"].state_dict().items(), lambda: trainer["iteration"]
    )
    pushes = []
    sync = engine.sync_weights
    engine.sync_weights = lambda named: (pushes.append(1), sync(named))
    params = SamplingParams(max_new_tokens=3, greedy=True)
    for _ in range(2):  # same version twice: one push
        got = engine.generate(PROMPTS, params)
    want = HFEngine(trainer["model"], PAD, EOS).generate(PROMPTS, params)
    assert torch.equal(got.input_ids, want.input_ids) and len(pushes) == 1
    trainer["model"], trainer["iteration"] = model_factory(2), 1
    got = engine.generate(PROMPTS, params)
    want = HFEngine(trainer["model"], PAD, EOS).generate(PROMPTS, params)
    assert torch.equal(got.input_ids, want.input_ids) and len(pushes) == 2


# ------------------------------------------------- per-row streams (issue 13 item 8, 14 item 5)
KEYED = [[5, 6, 7], [2, 3, 4, 5, 9, 8], [11], [4, 4], [7, 8, 9, 10, 12], [13, 2], [3], [9, 9, 9]]


def _rows_by_key(engine, prompts, keys, params, seed) -> dict[tuple[int, int], list[int]]:
    batch = engine.generate(prompts, params, seed=seed, keys=keys)
    out = {}
    for i, key in enumerate(keys):
        for j in range(params.n):
            row = i * params.n + j
            out[key, j] = batch.response_ids[row, : int(batch.response_lengths[row])].tolist()
    return out


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(n=3, max_new_tokens=8),
        SamplingParams(n=2, max_new_tokens=8, temperature=0.7, top_k=6, top_p=0.8),
    ],
    ids=["plain", "filtered"],
)
def test_rows_do_not_depend_on_batch_size_chunking_or_order(model, params) -> None:
    engine = HFEngine(model, PAD, EOS)
    keys = [100 + 7 * i for i in range(len(KEYED))]
    whole = _rows_by_key(engine, KEYED, keys, params, seed=5)
    for size in (1, 3, 4):  # other batch sizes (and so other padding widths)
        chunked = {}
        for start in range(0, len(KEYED), size):
            part = slice(start, start + size)
            chunked |= _rows_by_key(engine, KEYED[part], keys[part], params, seed=5)
        assert chunked == whole, f"chunks of {size}"
    reverse = _rows_by_key(engine, KEYED[::-1], keys[::-1], params, seed=5)
    assert reverse == whole
    # the streams are really per key and per sample: another seed or key changes rows
    assert _rows_by_key(engine, KEYED, keys, params, seed=6) != whole
    samples = [whole[keys[0], j] for j in range(params.n)] + [whole[keys[1], 0]]
    assert len({tuple(s) for s in samples}) > 1


def test_keys_must_match_prompts(model) -> None:
    with pytest.raises(ValueError, match="keys has 2 entries for 3 prompts"):
        HFEngine(model, PAD, EOS).generate(PROMPTS, SamplingParams(), seed=0, keys=[1, 2])
