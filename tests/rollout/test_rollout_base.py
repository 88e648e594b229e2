"""SamplingParams validation and the RolloutBatch helpers, with hand-checked values."""

from __future__ import annotations

import pytest
import torch

from sfpo_lab.rollout import (
    RolloutBatch,
    SamplingParams,
    build_rollout_batch,
    concat_rollouts,
    derive_seed,
    left_pad,
    mask_after_eos,
)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n": 0}, "n"),
        ({"n": 1.5}, "n"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.2}, "top_p"),
        ({"top_k": -2}, "top_k"),
    ],
)
def test_sampling_params_rejects_bad_values(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"SamplingParams\.{field} must"):
        SamplingParams(**kwargs)


def test_sampling_params_top_k_off_values() -> None:
    assert SamplingParams(top_k=0).top_k_enabled is None
    assert SamplingParams(top_k=-1).top_k_enabled is None
    assert SamplingParams(top_k=5).top_k_enabled == 5


def test_left_pad() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_token_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []], pad_token_id=0)
    with pytest.raises(ValueError, match="at least one prompt"):
        left_pad([], pad_token_id=0)


def test_mask_after_eos_keeps_first_eos_and_pads_the_rest() -> None:
    response = torch.tensor([[4, 1, 5, 1], [4, 5, 6, 7], [1, 2, 2, 2], [3, 9, 3, 9]])
    ids, mask, truncated = mask_after_eos(response, eos_token_ids=[1, 9], pad_token_id=0)
    assert ids.tolist() == [[4, 1, 0, 0], [4, 5, 6, 7], [1, 0, 0, 0], [3, 9, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert truncated.tolist() == [False, True, False, False]


def _batch() -> RolloutBatch:
    prompt_ids, prompt_mask = left_pad([[5, 6], [7]], pad_token_id=0)
    response = torch.tensor([[3, 1, 4], [2, 3, 4]])
    return build_rollout_batch(
        prompt_ids,
        prompt_mask,
        response,
        eos_token_ids=[1],
        pad_token_id=0,
        n=1,
        logprobs=torch.full((2, 3), -0.5),
    )


def test_rollout_batch_fields_and_helpers() -> None:
    batch = _batch()
    assert batch.input_ids.tolist() == [[5, 6, 3, 1, 0], [0, 7, 2, 3, 4]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 3], [0, 0, 1, 2, 3]]
    assert batch.response_ids.tolist() == [[3, 1, 0], [2, 3, 4]]
    assert batch.response_lengths.tolist() == [2, 3]
    assert batch.truncated.tolist() == [False, True]
    assert batch.logprobs.tolist() == [[-0.5, -0.5, 0.0], [-0.5, -0.5, -0.5]]
    assert (batch.prompt_len, len(batch), batch.num_prompts) == (2, 2, 2)


def test_decode_responses_drops_eos_and_padding() -> None:
    class CharTokenizer:
        def decode(self, token_ids: list[int]) -> str:
            return "".join(chr(ord("a") + t) for t in token_ids)

    assert _batch().decode_responses(CharTokenizer()) == ["d", "cde"]


def test_rollout_batch_validates_shapes() -> None:
    batch = _batch()
    with pytest.raises(ValueError, match="response_mask must have shape"):
        RolloutBatch(
            batch.input_ids, batch.attention_mask, batch.response_mask[:, :2], batch.truncated, 2
        )


def test_concat_rollouts_repads_prompts_left_and_responses_right() -> None:
    a = _batch()
    ids, mask = left_pad([[9, 9, 9]], pad_token_id=0)
    b = build_rollout_batch(
        ids,
        mask,
        torch.tensor([[1]]),
        eos_token_ids=[1],
        pad_token_id=0,
        n=1,
        logprobs=torch.tensor([[-1.0]]),
    )
    both = concat_rollouts([a, b])
    assert both.prompt_len == 3 and both.response_mask.shape == (3, 3)
    assert both.input_ids.tolist() == [[0, 5, 6, 3, 1, 0], [0, 0, 7, 2, 3, 4], [9, 9, 9, 1, 0, 0]]
    assert both.response_mask[2].tolist() == [1, 0, 0]
    assert both.logprobs[2].tolist() == [-1.0, 0.0, 0.0]
    assert torch.equal(both.position_ids[:2, 1:], a.position_ids)
    with pytest.raises(ValueError, match="differ"):
        concat_rollouts([a, RolloutBatch(**{**a.__dict__, "logprobs": None})])


def test_derive_seed_is_stable_and_distinct() -> None:
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3) == 1517167407554927345  # pinned
    assert 0 <= derive_seed(1, 2, 3) < 2**63
    assert len({derive_seed(0, it, c) for it in range(20) for c in range(20)}) == 400
