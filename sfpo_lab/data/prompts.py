"""Prompt lengths as the model sees them: template (and chat template) applied, then encoded.

The authors' loader (verl ``RLHFDataset``) applies the tokenizer's chat template and drops
training prompts longer than ``max_prompt_length`` tokens; here :func:`split_by_length` does
the same at load time. Validation prompts are never dropped: :func:`too_long` finds them so
the caller can refuse the run with their names.

Characters are checked first: a prompt of at most ``max_len`` tokens has at most
``max_len * L`` characters, where ``L`` is the longest vocabulary entry (:func:`char_bound`:
each token stands for at most ``L`` characters; in byte-level BPE one character per byte).
A problem longer than that is over the limit without being tokenised, so memory is bounded by
the limit, not the row (a fast tokenizer holds ~400 bytes per character of a text while
encoding it: one 20 MB row cost 8 GB). This assumes every character of a text is covered by
some token (byte-level BPE, SentencePiece with byte fallback, the char tokenizer), not by an
``<unk>`` that swallows a whole word.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sfpo_lab.config import ConfigError, RunConfig
from sfpo_lab.data.records import Problem
from sfpo_lab.data.templates import render_prompt

ENCODE_CHUNK = 1024  # prompts per tokenizer call


def char_bound(max_len: int, tokenizer: Any) -> int:
    """The most characters a text of ``max_len`` tokens can have under ``tokenizer``:
    ``max_len`` times its longest vocabulary entry (special tokens included)."""
    longest = max((len(t) for t in tokenizer.get_vocab()), default=1)
    return max_len * max(longest, 1)


def split_by_chars(problems: Sequence[Problem], bound: int) -> tuple[list[Problem], list[Problem]]:
    """``(candidates, over)``: problems of at most ``bound`` characters (to be tokenised), in
    order, and those longer, which are over the token limit without tokenising them."""
    candidates = [p for p in problems if len(p.problem) <= bound]
    over = [p for p in problems if len(p.problem) > bound]
    return candidates, over


def encode_prompts(
    problems: Sequence[str], tokenizer: Any, template: str, chat: bool = False
) -> list[list[int]]:
    """Token ids of each rendered prompt, exactly as training and evaluation encode them.

    Args:
        problems: raw question texts.
        tokenizer: a HF tokenizer.
        template: a name in ``templates.TEMPLATES`` or a literal with ``{problem}``.
        chat: wrap the filled template with the tokenizer's chat template.

    Returns:
        One id list per problem; no special tokens are added (a chat template holds its own).
    """
    out: list[list[int]] = []
    for start in range(0, len(problems), ENCODE_CHUNK):
        texts = [
            render_prompt(p, template, tokenizer, chat)
            for p in problems[start : start + ENCODE_CHUNK]
        ]
        out += [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return out


def prompt_lengths(
    problems: Sequence[Problem], tokenizer: Any, template: str, chat: bool = False
) -> list[int]:
    """Tokens of each problem's rendered prompt (see :func:`encode_prompts`)."""
    return [
        len(ids) for ids in encode_prompts([p.problem for p in problems], tokenizer, template, chat)
    ]


def split_by_length(
    problems: Sequence[Problem], lengths: Sequence[int], max_len: int
) -> tuple[list[Problem], list[tuple[Problem, int]]]:
    """``(kept, dropped)``: problems whose prompt has at most ``max_len`` tokens, in order, and
    the others with their lengths.

    >>> p = [Problem("a", "x", "1"), Problem("b", "y", "2")]
    >>> kept, dropped = split_by_length(p, [3, 5], 4)
    >>> [q.id for q in kept], [(q.id, n) for q, n in dropped]
    (['a'], [('b', 5)])
    """
    if len(problems) != len(lengths):
        raise ValueError(f"{len(problems)} problems but {len(lengths)} lengths")
    kept: list[Problem] = []
    dropped: list[tuple[Problem, int]] = []
    for p, n in zip(problems, lengths, strict=True):
        if n <= max_len:
            kept.append(p)
        else:
            dropped.append((p, n))
    return kept, dropped


def too_long(
    sets: dict[str, Sequence[Problem]], lengths: dict[str, Sequence[int]], max_len: int
) -> list[tuple[str, str, int]]:
    """``(benchmark, problem id, tokens)`` of every prompt longer than ``max_len``, longest first."""
    out = [
        (name, p.id, n)
        for name, problems in sets.items()
        for p, n in zip(problems, lengths[name], strict=True)
        if n > max_len
    ]
    return sorted(out, key=lambda row: -row[2])


def context_error(
    prompt: int, response: int, context: int, prompt_key: str, response_key: str, where: str
) -> str | None:
    """The message when ``prompt + response`` tokens exceed the model's ``context``, else None.

    Args:
        prompt: prompt tokens (a limit or a measured length).
        response: new tokens generated after it.
        context: the model's ``max_position_embeddings``.
        prompt_key, response_key: the settings (or facts) the two numbers come from.
        where: the model (source of ``context``).
    """
    if prompt + response <= context:
        return None
    return (
        f"{prompt_key}={prompt} + {response_key}={response} = {prompt + response} tokens > "
        f"the model's context {context} (max_position_embeddings of {where}); positions past "
        "it are untrained: lower one of them"
    )


def model_context(source: str) -> int | None:
    """``max_position_embeddings`` of a local model dir or a cached hub id, read from its
    config alone (local files only, nothing downloaded); None when it cannot be read here."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        return None
    value = getattr(config.get_text_config(), "max_position_embeddings", None)
    return int(value) if value else None


def filter_long_prompts(
    run: RunConfig, problems: list[Problem], tokenizer: Any, log: Callable[[str], Any] = print
) -> tuple[list[Problem], int]:
    """Drop training prompts longer than ``data.max_prompt_len`` tokens after the template and
    chat template (the authors' loader does the same); problems over :func:`char_bound`
    characters are dropped without being tokenised. Returns ``(kept, number dropped)`` and
    ``log``s a line when it dropped any."""
    d = run.data
    bound = char_bound(d.max_prompt_len, tokenizer)
    candidates, over = split_by_chars(problems, bound)
    lengths = prompt_lengths(candidates, tokenizer, d.template, run.model.chat_template)
    kept, dropped = split_by_length(candidates, lengths, d.max_prompt_len)
    if dropped or over:
        longest = f"longest {max(n for _, n in dropped)} tokens" if dropped else ""
        huge = f"{len(over)} over {bound} characters, not tokenised" if over else ""
        log(
            f"[data] dropped {len(dropped) + len(over)} of {len(problems)} training prompts "
            f"longer than data.max_prompt_len={d.max_prompt_len} tokens after the template "
            f"({'; '.join(x for x in (longest, huge) if x)})"
        )
    if not kept:
        shortest = f"{min(lengths)} tokens" if lengths else f"over {bound} characters"
        raise ConfigError(
            f"invalid config: data.max_prompt_len={d.max_prompt_len}: every one of the "
            f"{len(problems)} training prompts is longer (shortest {shortest})"
        )
    return kept, len(dropped) + len(over)


def check_val_prompts(run: RunConfig, sets: dict[str, list[Problem]], tokenizer: Any) -> None:
    """Validation prompts are never dropped: one longer than ``data.max_prompt_len`` tokens
    (the engines' prompt budget) stops the run, naming it; one over :func:`char_bound`
    characters does so before anything is tokenised."""
    d = run.data
    bound = char_bound(d.max_prompt_len, tokenizer)
    for name, problems in sets.items():
        over = split_by_chars(problems, bound)[1]
        if over:
            raise ConfigError(
                f"invalid config: data.max_prompt_len={d.max_prompt_len}: validation prompt "
                f"{over[0].id!r} of benchmark {name!r} has {len(over[0].problem)} characters, "
                f"more than {d.max_prompt_len} tokens can hold (at most {bound} with this "
                "tokenizer); validation prompts are never dropped: raise data.max_prompt_len "
                "or leave the benchmark out of val.benchmarks"
            )
    lengths = {
        name: prompt_lengths(problems, tokenizer, d.template, run.model.chat_template)
        for name, problems in sets.items()
    }
    long = too_long(sets, lengths, d.max_prompt_len)
    if long:
        name, pid, n = long[0]
        raise ConfigError(
            f"invalid config: data.max_prompt_len={d.max_prompt_len}: validation prompt {pid!r} "
            f"of benchmark {name!r} is {n} tokens after the template ({len(long)} validation "
            "prompts are longer); validation prompts are never dropped: raise "
            "data.max_prompt_len (prompt + response must still fit the model's context) or "
            "leave the benchmark out of val.benchmarks"
        )
