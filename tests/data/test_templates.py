"""Prompt templates: the authors' exact text, the registry, and the chat wrapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfpo_lab.data.templates import TEMPLATES, render_prompt, strip_template
from sfpo_lab.data.tokenizer import build_char_tokenizer

# Copied from ../shared/data/README.md (and checked against every prompt of the authors' parquet).
README_PROMPT = (
    "Please solve the following math problem: What is $1+1$?. The assistant first thinks about "
    "the reasoning process step by step and then provides the user with the answer. Return the "
    "final answer in \\boxed{} tags, for example \\boxed{1}. Let's solve this step by step. "
)


def test_authors_template_is_exact():
    assert render_prompt("What is $1+1$?", "authors") == README_PROMPT
    assert render_prompt("What is $1+1$?") == README_PROMPT


def test_plain_toy_and_literal_templates():
    assert render_prompt("37+45", "toy") == "37+45="
    assert render_prompt(r"\frac{a}{b}", "plain") == r"\frac{a}{b}"
    assert render_prompt("x", "Q: {problem} \\boxed{}") == "Q: x \\boxed{}"
    assert set(TEMPLATES) == {"authors", "plain", "toy"}


def test_unknown_template_lists_the_names():
    with pytest.raises(
        ValueError, match=r"unknown template 'fancy'.*\['authors', 'plain', 'toy'\]"
    ):
        render_prompt("x", "fancy")


def test_strip_template_inverts_render():
    for name in TEMPLATES:
        assert strip_template(render_prompt("a {b} c", name), name) == "a {b} c"
    assert strip_template("no template here") == "no template here"


def test_chat_wraps_one_user_turn(tmp_path: Path):
    tok = build_char_tokenizer(tmp_path / "tok")
    with pytest.raises(ValueError, match="chat template"):
        render_prompt("1+1", "toy", tok, chat=True)
    with pytest.raises(ValueError, match="chat template"):
        render_prompt("1+1", "toy", None, chat=True)
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert render_prompt("1+1", "toy", tok, chat=True) == "<user>1+1=<assistant>"
    assert render_prompt("1+1", "toy", tok) == "1+1="
