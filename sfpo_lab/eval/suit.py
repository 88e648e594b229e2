"""Standalone settings that suit the model evaluated (no run's checkpoint to take them from).

``chat=auto`` is on when the tokenizer defines a chat template (an instruct / chat model) and
off otherwise; ``max_new_tokens`` from ``standalone`` is cut to the model's context minus the
longest prompt. A value given on the command line is used as given and printed as such (one
beyond the context is refused by ``check_context``). ``model=`` may also name a training model
config, ``conf/model/<name>.yaml`` (e.g. ``smollm2-135m-instruct``, a GGUF in a wheel).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sfpo_lab.data.records import Problem

AUTO = "auto"
MODEL_CONFIGS = Path(__file__).resolve().parents[2] / "conf" / "model"
"""The training model configs (``model=<name>`` of ``train.py``)."""


def conf_model(name: str) -> dict[str, Any] | None:
    """The ``model`` block of ``conf/model/<name>.yaml`` when ``name`` is a config name and no
    local path; None otherwise."""
    path = MODEL_CONFIGS / f"{name}.yaml"
    if "/" in name or Path(name).expanduser().exists() or not path.is_file():
        return None
    block = OmegaConf.to_container(OmegaConf.load(path).get("model") or {})
    return block if isinstance(block, dict) else None


def conf_model_source(name: str, cache_dir: str) -> str | None:
    """The dir or hub id a ``conf/model/`` name means (a GGUF: its materialised directory under
    ``cache_dir/models``); None when ``name`` is no such config."""
    block = conf_model(name)
    if block is None:
        return None
    if block.get("gguf"):
        from sfpo_lab.model.build import materialize_gguf

        return str(materialize_gguf(str(block["gguf"]), Path(cache_dir) / "models"))
    if block.get("name_or_path"):
        return str(block["name_or_path"])
    raise ValueError(f"model={name!r}: conf/model/{name}.yaml names no weights; use model=toy")


def suit_to_model(
    cfg: DictConfig,
    filled: set[str],
    context: int | None,
    tokenizer: Any,
    sets: dict[str, list[Problem]],
) -> list[str]:
    """Settle ``chat`` and ``max_new_tokens`` for this model; returns the lines to print.

    Args:
        cfg: the resolved settings (changed in place).
        filled: the keys that took their ``standalone`` value (not given, no run).
        context: the model's ``max_position_embeddings`` (None: unknown, nothing is cut).
        tokenizer: the model's tokenizer (its ``chat_template`` decides ``chat=auto``).
        sets: benchmark name -> problems (their longest prompt bounds the response).
    """
    from sfpo_lab.data.prompts import prompt_lengths

    lines = []
    if cfg.chat == AUTO:
        cfg.chat = bool(getattr(tokenizer, "chat_template", None))
        why = "defines a" if cfg.chat else "has no"
        lines.append(f"chat={str(cfg.chat).lower()} (auto: the tokenizer {why} chat template)")
    elif "chat" not in filled:
        lines.append(f"chat={str(bool(cfg.chat)).lower()} (given)")
    if "max_new_tokens" not in filled:
        lines.append(f"max_new_tokens={cfg.max_new_tokens} (given)")
        return lines
    if context is None:
        return lines
    chat = bool(cfg.chat)
    longest = max(
        max(prompt_lengths(ps, tokenizer, str(cfg.template), chat)) for ps in sets.values()
    )
    room = context - longest
    if room < int(cfg.max_new_tokens):
        if room < 1:
            raise ValueError(
                f"max_new_tokens: the longest prompt has {longest} tokens, the model's context "
                f"is {context}: no room for a response"
            )
        lines.append(
            f"max_new_tokens={room} (the model's context {context} minus the longest prompt, "
            f"{longest} tokens; standalone {cfg.max_new_tokens})"
        )
        cfg.max_new_tokens = room
    return lines
