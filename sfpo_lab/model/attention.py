"""Attention choices, decided once where the model is built (:func:`sfpo_lab.model.build.build_causal_lm`).

Three settings, read against torch 2.13 and transformers 5.19:

* ``model.attn_implementation`` — the kernel transformers loads the model with. ``sdpa`` (the
  default) is loaded as :data:`PAD_SAFE_SDPA`: transformers' own SDPA attention with a mask in
  which every query row attends to at least one key (:func:`attend_somewhere`). A left-padded
  row's pad queries otherwise get an all-False mask row; transformers 5.19's ``sdpa_mask`` no
  longer repairs such rows (its ``allow_torch_fix`` "has no effect") and the cuDNN SDPA backend
  returns NaN there, which reaches the real tokens at the next layer (their softmax weight on
  the pad keys is 0, and 0 x NaN = NaN). ``flash_attention_2`` (the paper configs, as verl's
  ``fsdp_workers``) unpads instead: packed rows reach the kernel as ``cu_seqlens``, with no
  dense ``[1, 1, T, T]`` mask (with sdpa a packed row of T tokens builds one: T^2 bytes, 256 MiB
  at T = 16,384, and attention over the whole T x T square).
* which package each implementation needs (:func:`missing_attn_package`), checked in preflight
  and before any weights load.
* ``model.sdpa_backends`` — the ``F.scaled_dot_product_attention`` backends allowed on CUDA
  (:func:`configure_sdpa_backends`). The default leaves cuDNN out: its backward returns NaN in
  ``grad_q`` with an explicit mask when ``seq_len % 128 == 64`` on H100/H200 (pytorch issue
  196678, "regression since 2.11, default backend"; huggingface/trl issue 7181: DPO/KTO NaN on
  torch 2.13, clean with ``enable_cudnn_sdp(False)``); flash / mem-efficient / math are clean.

This module imports only the standard library at import time (``sfpo_lab.config`` reads its
constants); torch and transformers are imported where used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

ATTN_IMPLEMENTATIONS: tuple[str, ...] = (
    "sdpa",
    "eager",
    "flash_attention_2",
    "flash_attention_3",
    "flash_attention_4",
    "flex_attention",
)
"""What ``model.attn_implementation`` accepts: transformers 5.19's ``AttentionInterface`` keys
plus ``eager`` (``paged|eager`` is for continuous batching; hub-kernel ids need the network)."""

# the distribution each implementation needs beyond torch + transformers, as transformers 5.19's
# is_flash_attn_{2,3,4}_available names them (FA2 and FA4 both install the module flash_attn)
ATTN_PACKAGES: dict[str, str] = {
    "flash_attention_2": "flash-attn",
    "flash_attention_3": "flash-attn-3",
    "flash_attention_4": "flash-attn-4",
}

PAD_SAFE_SDPA = "sdpa_pad_safe"
"""The name ``sdpa`` is registered under in transformers (it contains "sdpa", so transformers
still checks that the model supports SDPA)."""

SDPA_BACKENDS: tuple[str, ...] = ("flash", "efficient", "math", "cudnn")
"""``model.sdpa_backends`` choices, named after ``torch.backends.cuda.enable_<name>_sdp``."""

DEFAULT_SDPA_BACKENDS: tuple[str, ...] = ("flash", "efficient", "math")
"""The safe set for torch 2.13: no cuDNN (pytorch issue 196678, trl issue 7181)."""

_SDPA_FLAGS = {  # backend -> torch.backends.cuda setter
    "flash": "enable_flash_sdp",
    "efficient": "enable_mem_efficient_sdp",
    "math": "enable_math_sdp",
    "cudnn": "enable_cudnn_sdp",
}
_SDPA_GETTERS = {  # backend -> torch.backends.cuda getter
    "flash": "flash_sdp_enabled",
    "efficient": "mem_efficient_sdp_enabled",
    "math": "math_sdp_enabled",
    "cudnn": "cudnn_sdp_enabled",
}


# ------------------------------------------------------------------ settings and packages
def check_attention_settings(impl: str, backends: Sequence[str] | None) -> None:
    """``model.attn_implementation`` and ``model.sdpa_backends`` name allowed values (no
    package check here: a config is valid on a machine without flash-attn; preflight checks).

    Raises:
        ConfigError: naming the setting, the value and what is allowed.
    """
    from sfpo_lab.config.algo import _check, _choice

    _choice("model.attn_implementation", impl, ATTN_IMPLEMENTATIONS)
    b = None if backends is None else list(backends)
    _check(
        b is None or (len(b) > 0 and len(set(b)) == len(b) and set(b) <= set(SDPA_BACKENDS)),
        "model.sdpa_backends",
        b,
        "null (flash, efficient, math: no cudnn, pytorch issue 196678) or a non-empty list "
        f"of distinct names from {' | '.join(SDPA_BACKENDS)}",
    )


def missing_attn_package(impl: str) -> str | None:
    """The pip distribution ``impl`` needs that is not installed, else None (no import)."""
    from importlib.metadata import PackageNotFoundError, version

    dist = ATTN_PACKAGES.get(impl)
    if dist is None:
        return None
    try:
        version(dist)
    except PackageNotFoundError:
        return dist
    return None


def check_attn_implementation(impl: str, key: str = "model.attn_implementation") -> None:
    """Refuse an unknown ``impl`` or one whose package is missing, naming the setting.

    Raises:
        ConfigError: the value is not in :data:`ATTN_IMPLEMENTATIONS`, or its package
            (:data:`ATTN_PACKAGES`) is not installed.
    """
    from sfpo_lab.config.algo import ConfigError

    if impl not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(
            f"invalid config: {key}={impl!r} (allowed: {' | '.join(ATTN_IMPLEMENTATIONS)})"
        )
    dist = missing_attn_package(impl)
    if dist is not None:
        raise ConfigError(
            f"invalid config: {key}={impl!r} needs the package {dist!r}, which is not installed "
            f"(pip install {dist}; it builds against CUDA), or set {key}=sdpa"
        )


def resolve_attn_implementation(
    requested: str | None, config: PretrainedConfig | None = None
) -> str:
    """The name to load a model with in transformers.

    ``None`` keeps the implementation ``config`` was built with (a copy made from a policy's
    config attends as the policy does), else ``sdpa``. ``sdpa`` becomes :data:`PAD_SAFE_SDPA`
    (registered here); other values are checked (:func:`check_attn_implementation`) and kept.
    """
    if requested is None:
        inherited = getattr(config, "_attn_implementation", None) if config is not None else None
        requested = inherited or "sdpa"
        if requested == PAD_SAFE_SDPA:
            return register_pad_safe_sdpa()
    check_attn_implementation(requested, "attn_implementation")
    return register_pad_safe_sdpa() if requested == "sdpa" else requested


# ------------------------------------------------------------------ pad-safe sdpa
def attend_somewhere(mask: torch.Tensor) -> torch.Tensor:
    """Let every query row attend to at least one key.

    Args:
        mask: ``[B, H, Q, K]`` bool, True = attend (transformers' ``sdpa_mask`` output).

    Returns:
        ``[B, H, Q, K]`` bool: rows with no True (a left-pad query) become all True; every other
        row is returned unchanged, so real tokens' outputs do not change. What a pad query then
        computes is never read: no real query attends to a pad key.
    """
    return mask | ~mask.any(dim=-1, keepdim=True)


def pad_safe_sdpa_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """transformers' ``sdpa_mask`` (same arguments), then :func:`attend_somewhere`.

    Built once per forward (not per layer); ``None`` (SDPA's ``is_causal`` path, no padding)
    stays ``None``. Covers the causal, sliding-window and packed (block-diagonal) masks, which
    all go through the mask interface registered for the model's implementation.
    """
    import torch
    from transformers.masking_utils import sdpa_mask

    mask = sdpa_mask(*args, **kwargs)
    if mask is None or mask.dtype != torch.bool:
        return mask
    return attend_somewhere(mask)


def register_pad_safe_sdpa() -> str:
    """Register :data:`PAD_SAFE_SDPA` with transformers (idempotent) and return the name.

    Attention: transformers' own ``sdpa_attention_forward`` (it calls
    ``torch.nn.functional.scaled_dot_product_attention``); mask: :func:`pad_safe_sdpa_mask`.
    Both registries must hold the name: ``create_causal_mask`` builds no mask at all for an
    implementation missing from ``AttentionMaskInterface``.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(PAD_SAFE_SDPA, sdpa_attention_forward)
    AttentionMaskInterface.register(PAD_SAFE_SDPA, pad_safe_sdpa_mask)
    return PAD_SAFE_SDPA


# ------------------------------------------------------------------ SDPA backends (CUDA)
def sdpa_backend_flags() -> dict[str, bool]:
    """The current ``torch.backends.cuda`` SDPA flags, by backend name."""
    import torch

    return {name: bool(getattr(torch.backends.cuda, g)()) for name, g in _SDPA_GETTERS.items()}


def configure_sdpa_backends(
    backends: Sequence[str] | None, device: torch.device | str
) -> dict[str, bool] | None:
    """Allow only ``backends`` for ``F.scaled_dot_product_attention`` on CUDA.

    Sets the process-wide ``torch.backends.cuda.enable_<name>_sdp`` flags (they hold for the
    training forwards, HF generation and validation alike; a ``sdpa_kernel`` context would
    have to wrap each call). Without a mask SDPA still picks flash first; with a mask the
    mem-efficient kernel, else math.

    Args:
        backends: names from :data:`SDPA_BACKENDS`; None = :data:`DEFAULT_SDPA_BACKENDS`.
        device: the training device; anything but CUDA leaves the flags alone.

    Returns:
        The flags set (``{backend: enabled}``), or None when ``device`` is not CUDA.
    """
    import torch

    chosen = tuple(DEFAULT_SDPA_BACKENDS if backends is None else backends)
    bad = [b for b in chosen if b not in SDPA_BACKENDS]
    if bad or not chosen:
        raise ValueError(
            f"model.sdpa_backends={list(chosen)!r}: allowed a non-empty list from "
            f"{list(SDPA_BACKENDS)}"
        )
    if torch.device(device).type != "cuda":
        return None
    flags = {name: name in chosen for name in SDPA_BACKENDS}
    for name, enabled in flags.items():
        getattr(torch.backends.cuda, _SDPA_FLAGS[name])(enabled)
    return flags
