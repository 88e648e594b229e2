"""Prompt templates: the authors' instruction text, a plain one, and the toy task's.

Templates are literal text with one ``{problem}`` placeholder, filled by plain substitution
(not ``str.format``), so LaTeX braces such as ``\\boxed{}`` need no escaping.
"""

from __future__ import annotations

from typing import Any

PLACEHOLDER = "{problem}"

AUTHORS = (
    "Please solve the following math problem: {problem}. The assistant first thinks about the "
    "reasoning process step by step and then provides the user with the answer. Return the "
    "final answer in \\boxed{} tags, for example \\boxed{1}. Let's solve this step by step. "
)
"""The SFPO authors' instruction (their verl parquet files hold prompts made with it)."""

TEMPLATES: dict[str, str] = {
    "authors": AUTHORS,
    "plain": PLACEHOLDER,
    "toy": PLACEHOLDER + "=",
}


def get_template(template: str) -> str:
    """A registered template by name, or ``template`` itself if it contains ``{problem}``."""
    if template in TEMPLATES:
        return TEMPLATES[template]
    if PLACEHOLDER in template:
        return template
    raise ValueError(
        f"unknown template {template!r}; valid: {sorted(TEMPLATES)} "
        f"or a literal string containing {PLACEHOLDER!r}"
    )


def template_parts(template: str) -> tuple[str, str]:
    """``(head, tail)``: the text before and after ``{problem}`` in ``template``."""
    head, _, tail = get_template(template).partition(PLACEHOLDER)
    return head, tail


def strip_template(text: str, template: str = "authors") -> str:
    """``text`` without the template's head and tail when it carries both, else unchanged.

    >>> strip_template(render_prompt("1+1", "toy"), "toy")
    '1+1'
    """
    head, tail = template_parts(template)
    if len(text) >= len(head) + len(tail) and text.startswith(head) and text.endswith(tail):
        return text[len(head) : len(text) - len(tail)]
    return text


def render_prompt(
    problem: str, template: str = "authors", tokenizer: Any = None, chat: bool = False
) -> str:
    """The prompt text for ``problem``.

    Args:
        problem: the raw question text.
        template: a name in :data:`TEMPLATES` or a literal string containing ``{problem}``.
        tokenizer: a Hugging Face tokenizer; needed only with ``chat=True``.
        chat: wrap the filled template as a single user turn with the tokenizer's chat
            template (``add_generation_prompt=True``), as instruct models expect.
    """
    text = get_template(template).replace(PLACEHOLDER, problem)
    if not chat:
        return text
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "chat=True (model.chat_template) needs a tokenizer that defines a chat template; "
            f"got {type(tokenizer).__name__ if tokenizer is not None else None}"
        )
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
