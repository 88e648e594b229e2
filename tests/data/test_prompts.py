"""Prompt lengths after the template and chat template, the training filter, the validation
check and the context message (char tokenizer: one token per character, hand-countable)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfpo_lab.data.prompts import (
    context_error,
    encode_prompts,
    model_context,
    prompt_lengths,
    split_by_length,
    too_long,
)
from sfpo_lab.data.records import Problem
from sfpo_lab.data.tokenizer import build_char_tokenizer
from sfpo_lab.models import tiny_qwen2_config

CHAT = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_char_tokenizer(tmp_path_factory.mktemp("tok"))


def problems(*texts: str) -> list[Problem]:
    return [Problem(id=f"p{i}", problem=t, answer="0") for i, t in enumerate(texts)]


def test_lengths_count_the_template_and_the_chat_template(tok):
    ps = problems("1+1", "12+34")
    assert prompt_lengths(ps, tok, "toy") == [4, 6]  # "1+1=", "12+34="
    assert encode_prompts(["1+1"], tok, "toy") == [
        tok("1+1=", add_special_tokens=False)["input_ids"]
    ]
    tok.chat_template = CHAT
    try:  # "<user>" + "1+1=" + "<assistant>": 6 + 4 + 11 characters
        assert prompt_lengths(ps, tok, "toy", chat=True) == [21, 23]
    finally:
        tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        prompt_lengths(ps, tok, "toy", chat=True)


def test_split_keeps_order_and_reports_the_dropped():
    ps = problems("a", "b", "c", "d")
    kept, dropped = split_by_length(ps, [3, 9, 4, 5], 4)
    assert [p.id for p in kept] == ["p0", "p2"]
    assert [(p.id, n) for p, n in dropped] == [("p1", 9), ("p3", 5)]
    with pytest.raises(ValueError, match="4 problems but 3 lengths"):
        split_by_length(ps, [1, 2, 3], 4)


def test_too_long_names_benchmark_id_and_length_longest_first():
    sets = {"a": problems("x", "y"), "b": problems("z")}
    lengths = {"a": [10, 3], "b": [12]}
    assert too_long(sets, lengths, 5) == [("b", "p0", 12), ("a", "p0", 10)]
    assert too_long(sets, lengths, 12) == []


def test_context_error_names_the_three_numbers():
    assert context_error(100, 28, 128, "data.max_prompt_len", "rollout.max_new_tokens", "m") is None
    msg = context_error(100, 29, 128, "data.max_prompt_len", "rollout.max_new_tokens", "m")
    assert msg.startswith(
        "data.max_prompt_len=100 + rollout.max_new_tokens=29 = 129 tokens > the model's "
        "context 128 (max_position_embeddings of m)"
    )


def test_model_context_reads_the_config_only(tmp_path: Path):
    tiny_qwen2_config(vocab_size=10, max_position_embeddings=77).save_pretrained(tmp_path)
    assert model_context(str(tmp_path)) == 77
    assert model_context("no-such-org/no-such-model-xyz") is None  # offline: not checkable
