"""The frozen KL reference model pi_ref (issue 24 item 9).

It is the base model, frozen, computing as the policy computes at theta0: under FSDP2 its
parameters are kept in the **compute dtype** (verl: bf16; it only runs no-grad forwards), on one
device / DDP in the policy's dtype (autocast casts both alike), and it is **never checkpointed**: a resume rebuilds it from the base. What a
checkpoint keeps instead is the base's identity (:func:`base_identity`), so a resume on another
base, which would silently change the KL term, is refused (:func:`check_same_base`).

Under FSDP2 the reference is sharded like the policy (:func:`sfpo_lab.model.fsdp_init.shard_reference`);
elsewhere it is :func:`reference_copy`.
"""

from __future__ import annotations

import hashlib
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sfpo_lab.config import RunConfig

REF_PREFIX = "ref_policy."  # where checkpoints written before issue 24 kept it
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
_SAMPLES, _SAMPLE_BYTES, _WHOLE_BYTES = 64, 4096, 64 * 2**20


def build_reference(run: RunConfig, policy: nn.Module, device_mesh: Any = None) -> nn.Module:
    """pi_ref = the base ``policy`` (before any update), frozen, computing exactly as the policy
    does at theta0 (so the KL term is 0 there): under FSDP2 sharded like the policy, filled from
    its shards, its parameters in the compute dtype (the policy's mixed-precision policy gathers
    bf16 parameters for the forward: the same numbers); single device / DDP a copy in the
    policy's own dtype (under ``*-mixed`` the autocast computes both alike; a bf16 copy of an
    fp32-master policy would keep a bf16 residual stream and differ at theta0 by ~0.03 in
    log-prob). The module puts the copy on the policy's device once Lightning has moved it."""
    from sfpo_lab.model.parallel import compute_dtype, mixed_precision_policy

    if run.trainer.strategy != "fsdp":
        return reference_copy(policy, next(policy.parameters()).dtype)
    dtype = compute_dtype(run)
    from sfpo_lab.model.fsdp_init import shard_reference

    mp = mixed_precision_policy(run)
    return shard_reference(policy, device_mesh, mp, dtype, run.model.attn_implementation)


@torch.no_grad()
def reference_copy(policy: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A frozen copy of the (unsharded) ``policy`` with its parameters in ``dtype``; buffers
    keep their dtype (RoPE ``inv_freq`` stays fp32, as ``from_pretrained`` leaves it)."""
    ref = deepcopy(policy).eval().requires_grad_(False)
    for p in ref.parameters():  # tied weights are one Parameter: cast once, stay tied
        p.data = p.data.to(dtype)
    return ref


def _file_digest(path: Path) -> bytes:
    """Name, size and content of one file: all of it up to 64 MiB, else 64 evenly spaced 4 KiB
    samples (any fine-tune of a base changes essentially every weight, so samples tell two
    bases apart without reading gigabytes at every launch)."""
    size = path.stat().st_size
    h = hashlib.sha256(f"{path.name}:{size}".encode())
    with open(path, "rb") as fh:
        if size <= _WHOLE_BYTES:
            h.update(fh.read())
            return h.digest()
        for i in range(_SAMPLES):
            fh.seek((size - _SAMPLE_BYTES) * i // (_SAMPLES - 1))
            h.update(fh.read(_SAMPLE_BYTES))
    return h.digest()


def base_identity(model_path: str) -> dict[str, str]:
    """``{"path", "digest"}`` of the base model: a local directory by the content of its
    ``config.json`` and samples of its weight files (the path may move, the weights may not);
    a hub id by its name."""
    root = Path(model_path).expanduser()
    h = hashlib.sha256()
    if root.is_dir():
        config = root / "config.json"
        h.update(config.read_bytes() if config.is_file() else b"")
        for f in sorted(p for p in root.iterdir() if p.suffix in _WEIGHT_SUFFIXES):
            h.update(_file_digest(f))
    else:
        h.update(f"hub:{model_path}".encode())
    return {"path": str(model_path), "digest": h.hexdigest()[:16]}


def check_same_base(saved: dict[str, str] | None, current: dict[str, str]) -> None:
    """Refuse a resume whose base differs from the checkpoint's (the reference is rebuilt from
    it). Checkpoints without a base identity (written before issue 24) are accepted.

    Raises:
        ValueError: one line naming both bases.
    """
    if saved is None or saved.get("digest") == current["digest"]:
        return
    raise ValueError(
        f"checkpoint was trained from base {saved.get('path')!r} (digest {saved.get('digest')}), "
        f"this run's base is {current['path']!r} (digest {current['digest']}): the KL reference "
        "is rebuilt from the base on resume; resume with the checkpoint's base model"
    )


def drop_reference_keys(checkpoint: dict[str, Any]) -> int:
    """Remove a reference model's weights from a loaded checkpoint (written before issue 24)
    so that Lightning's strict load accepts it; returns how many were removed."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):  # a sharded checkpoint: the strategy loaded it in place
        return 0
    stale = [k for k in state if k.startswith(REF_PREFIX)]
    for k in stale:
        del state[k]
    return len(stale)
