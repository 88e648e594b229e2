"""Model builders: the tiny Qwen2 used on CPU, loading hub/local causal LMs, FSDP2 wrap classes.

Nothing here touches the network unless :func:`build_causal_lm` is called with a hub id and
neither ``local_files_only`` nor ``HF_HUB_OFFLINE=1`` forbids it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, Qwen2Config

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# "name" or "org/name": letters, digits, "_", "-", "." (no leading "." and no "..").
_HUB_ID = re.compile(r"^(?!.*\.\.)[A-Za-z0-9_][\w.-]{0,95}(/[A-Za-z0-9_][\w.-]{0,95})?$")
_TRUE = {"1", "true", "yes", "on"}


def tiny_qwen2_config(
    vocab_size: int,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 384,
    max_position_embeddings: int = 256,
    tie_word_embeddings: bool = True,
    **overrides: Any,
) -> Qwen2Config:
    """A small Qwen2 config (~0.8M parameters plus ``vocab_size * hidden_size`` by default, fp32).

    Same architecture as Qwen2.5 (GQA, RoPE, RMSNorm, SwiGLU, tied embeddings), so the CPU
    default exercises the code path the paper's models take. ``overrides`` go to
    :class:`~transformers.Qwen2Config` (e.g. ``pad_token_id``, ``eos_token_id``,
    ``initializer_range``).
    """
    if vocab_size < 2:
        raise ValueError(f"tiny_qwen2_config: vocab_size must be >= 2, got {vocab_size}")
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError(
            "tiny_qwen2_config: hidden_size must be divisible by num_heads and num_heads by "
            f"num_kv_heads, got {hidden_size}, {num_heads}, {num_kv_heads}"
        )
    kwargs: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": tie_word_embeddings,
        "use_sliding_window": False,
        "dtype": "float32",
    }
    kwargs.update(overrides)
    return Qwen2Config(**kwargs)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"bf16"``/... or a ``torch.dtype`` -> ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; allowed: {sorted(DTYPES)}")
    return DTYPES[dtype]


def is_plausible_hub_id(name: str) -> bool:
    """Whether ``name`` could be a hub repo id (``"gpt2"``, ``"Qwen/Qwen2.5-Math-1.5B"``)."""
    return bool(_HUB_ID.match(name))


def build_causal_lm(
    source: str | os.PathLike | PretrainedConfig,
    dtype: str | torch.dtype = "float32",
    local_files_only: bool | None = None,
    attn_implementation: str = "sdpa",
    **from_pretrained_kwargs: Any,
) -> PreTrainedModel:
    """Build a causal LM from a config (random init), a local directory or a hub id.

    Args:
        source: a ``PretrainedConfig``, a local model directory, or a hub id.
        dtype: parameter dtype (``"float32"``, ``"bfloat16"``, ``"float16"`` or a torch dtype).
        local_files_only: never reach the hub; None = True iff ``HF_HUB_OFFLINE`` is set.
        attn_implementation: ``"sdpa"`` (default), ``"eager"``, ``"flash_attention_2"``, ...
        from_pretrained_kwargs: passed on (e.g. ``revision``, ``cache_dir``).

    Raises:
        ValueError: unknown dtype, or a path that neither exists nor looks like a hub id.
        OSError: a hub id that is not cached while offline / ``local_files_only``.
    """
    torch_dtype = resolve_dtype(dtype)
    if isinstance(source, PretrainedConfig):
        return AutoModelForCausalLM.from_config(
            source, dtype=torch_dtype, attn_implementation=attn_implementation
        )
    name = os.fspath(source)
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE
    if Path(name).expanduser().is_dir():
        name, local_files_only = str(Path(name).expanduser()), True
    elif not is_plausible_hub_id(name):
        raise ValueError(f"model {name!r}: no such local directory, and not a hub id ('org/name')")
    try:
        return AutoModelForCausalLM.from_pretrained(
            name,
            dtype=torch_dtype,
            attn_implementation=attn_implementation,
            local_files_only=local_files_only,
            **from_pretrained_kwargs,
        )
    except OSError as err:
        if not local_files_only:
            raise
        raise OSError(
            f"model {name!r} is not in the local Hugging Face cache and hub access is off "
            "(local_files_only / HF_HUB_OFFLINE=1): download it first or pass a local directory"
        ) from err


def decoder_layer_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The decoder-block classes of ``model``: the units FSDP2 ``fully_shard`` wraps one by one.

    Uses the HF ``_no_split_modules`` declaration when present, else the class of the blocks in
    the model's ``layers``/``h``/``blocks`` ``ModuleList``.
    """
    declared = set(getattr(model, "_no_split_modules", None) or ())
    classes = {type(m) for m in model.modules() if type(m).__name__ in declared}
    if classes:
        return classes
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in {"layers", "h", "blocks"}:
            classes |= {type(child) for child in module}
    if not classes:
        raise ValueError(
            f"decoder_layer_classes: found no decoder blocks in {type(model).__name__} "
            "(no _no_split_modules and no layers/h/blocks ModuleList)"
        )
    return classes


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters, tied ones counted once (global numel for sharded DTensors)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
