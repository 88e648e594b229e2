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
from sfpo_lab.model.build import tiny_qwen2_config

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


class CallSpy:
    """The tokenizer, recording the length of every text it is asked to encode."""

    def __init__(self, tok) -> None:
        self._tok, self.lengths = tok, []

    def __call__(self, texts, **kwargs):
        self.lengths += [len(t) for t in texts]
        return self._tok(texts, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._tok, name)


def test_a_20mb_row_is_dropped_without_being_tokenised(tmp_path, tok):
    """Issue 30, item 5: a 20 MB problem is over data.max_prompt_len by its characters alone
    (64 tokens of at most 5 characters each: '<pad>' is the longest vocabulary entry), so it
    is dropped before the tokenizer sees it (encoding it cost ~400x its size in memory); the
    validation check refuses one the same way."""
    import json

    from sfpo_lab.config import ConfigError, RunConfig
    from sfpo_lab.data.prompts import check_val_prompts, filter_long_prompts
    from sfpo_lab.data.sources import load_problems

    path = tmp_path / "train.jsonl"
    rows = [("1+1", "2"), ("7" * 20_000_000, "7"), ("2+3", "5")]
    path.write_text("".join(json.dumps({"problem": p, "answer": a}) + "\n" for p, a in rows))
    run = RunConfig()
    run.data.template, run.data.max_prompt_len = "toy", 64
    spy, lines = CallSpy(tok), []
    kept, dropped = filter_long_prompts(run, load_problems(str(path)), spy, log=lines.append)
    assert [p.problem for p in kept] == ["1+1", "2+3"] and dropped == 1
    assert spy.lengths == [4, 4]  # "1+1=", "2+3=": the long row was never encoded
    assert lines == [
        "[data] dropped 1 of 3 training prompts longer than data.max_prompt_len=64 tokens "
        "after the template (1 over 320 characters, not tokenised)"
    ]
    huge = problems("7" * 20_000_000)
    with pytest.raises(ConfigError, match="validation prompt 'p0' of benchmark 'b' has 20000000"):
        check_val_prompts(run, {"b": huge}, spy)
    assert spy.lengths == [4, 4]
