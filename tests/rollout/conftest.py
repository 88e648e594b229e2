"""Tiny random Qwen2 models, a teacher-forced log-prob helper and (when vllm is installed) one
session-wide vLLM engine for the rollout tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from transformers import PreTrainedModel

from sfpo_lab.model.build import build_causal_lm, tiny_qwen2_config
from sfpo_lab.rollout import RolloutBatch

VOCAB, PAD, EOS = 32, 0, 1


def make_model(seed: int = 0, tie: bool = True) -> PreTrainedModel:
    """A ~50k-parameter random Qwen2; a wide init so greedy continuations are not constant."""
    config = tiny_qwen2_config(
        VOCAB,
        hidden_size=64,
        num_layers=2,
        intermediate_size=128,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    return build_causal_lm(config).eval()


def make_vllm_model(seed: int = 0) -> PreTrainedModel:
    """Like :func:`make_model` with head_dim 32: vLLM's CPU attention takes multiples of 32."""
    config = tiny_qwen2_config(
        VOCAB,
        hidden_size=64,
        num_heads=2,
        num_kv_heads=1,
        num_layers=2,
        intermediate_size=128,
        max_position_embeddings=128,
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    return build_causal_lm(config).eval()


@pytest.fixture(scope="session")
def vllm_engine(tmp_path_factory) -> Iterator[Any]:
    """One in-process vLLM engine for the session (``LLM()`` costs ~10-20 s on CPU), started
    from ``make_vllm_model(0)``; tests push the weights they need with ``sync_weights``."""
    pytest.importorskip("vllm")
    from sfpo_lab.rollout.vllm import VLLMEngine

    save_dir = tmp_path_factory.mktemp("vllm_model")
    engine = VLLMEngine.from_model(
        make_vllm_model(0), save_dir, PAD, EOS, max_model_len=128, cpu_kv_cache_gib=0.25, seed=0
    )
    yield engine
    engine.close()


@pytest.fixture
def make_vllm() -> Callable[..., PreTrainedModel]:
    """``make_vllm(seed)``: a random tiny Qwen2 vLLM's CPU backend can run."""
    return make_vllm_model


@pytest.fixture(scope="module")
def model() -> PreTrainedModel:
    return make_model(seed=0)


@pytest.fixture
def model_factory() -> Callable[..., PreTrainedModel]:
    return make_model


def teacher_forced_logprobs(
    model: PreTrainedModel,
    batch: RolloutBatch,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """``[N, R]`` log-probs of the response tokens from one full forward (the trainer's way)."""
    with torch.no_grad():
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
        ).logits.float()
    logits = logits[:, batch.prompt_len - 1 : -1] / temperature  # [N, R, V] predicts responses
    if top_k > 0:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:  # keep the most likely tokens until their mass reaches top_p
        probs, order = torch.softmax(logits, dim=-1).sort(dim=-1, descending=True)
        outside = (probs.cumsum(-1) - probs) >= top_p
        logits = logits.masked_fill(outside.scatter(-1, order, outside), float("-inf"))
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(-1, batch.response_ids[..., None]).squeeze(-1)
    return chosen.masked_fill(batch.response_mask == 0, 0.0)


@pytest.fixture
def teacher_forced() -> Callable[..., torch.Tensor]:
    return teacher_forced_logprobs
