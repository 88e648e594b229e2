"""FSDP2 models built without a full host copy per rank (issue 24 items 6, 7 and 9).

``from_pretrained`` on every rank, then ``fully_shard``, costs each rank the whole fp32 model
on the host first (~30 GB for a 7B model, x8 ranks per node), plus a deepcopy for the KL
reference. Here instead:

1. every rank builds the model with its **parameters on the meta device** (no memory, no
   random init); buffers are computed by the modules' ``__init__`` as usual (RoPE ``inv_freq``
   is non-persistent: no checkpoint holds it, so it must come from there);
2. ``fully_shard`` (per decoder layer, then the root), then ``to_empty`` on the training
   device: each rank allocates only its 1/world of every parameter; the buffers' values are
   put back;
3. rank 0 reads the base weights bucket by bucket (safetensors, tensor by tensor) and
   ``set_model_state_dict(..., broadcast_from_rank0=True)`` broadcasts each tensor and copies
   the local slice into each rank's shard (torch 2.13 ``_broadcast_state_dict``: one tensor in
   flight at a time, cast to the shard's dtype on copy).

The frozen reference is built the same way in the compute dtype and filled from the policy's
own local shards (same mesh, same placements: no communication); the HF generation copy is
built from the config on the device and filled by the first weight push.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import AutoConfig, GenerationConfig, PretrainedConfig

from sfpo_lab.config import RunConfig
from sfpo_lab.model.build import build_causal_lm, resolve_dtype
from sfpo_lab.model.parallel import mixed_precision_policy, shard_fsdp2

DEFAULT_BUCKET_BYTES = 512 * 2**20  # rank 0's host memory for base weights in flight


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Inside, every parameter a module registers is moved to the meta device (tied weights
    stay one Parameter); buffers stay where ``__init__`` computed them."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            p = module._parameters[name]
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def empty_causal_lm(
    source: str | PretrainedConfig, dtype: str | torch.dtype, attn_implementation: str = "sdpa"
) -> nn.Module:
    """A causal LM of ``source``'s architecture with parameters on meta (buffers real), plus
    the directory's ``generation_config.json`` (its EOS ids are stop ids)."""
    if isinstance(source, PretrainedConfig):
        config = deepcopy(source)  # from_config sets dtype / attention on it: not the policy's
    else:
        config = AutoConfig.from_pretrained(source)
    with parameters_on_meta():
        model = build_causal_lm(config, dtype=dtype, attn_implementation=attn_implementation)
    if not isinstance(source, PretrainedConfig):
        with suppress(OSError):  # none saved: from_config's default, as from_pretrained
            model.generation_config = GenerationConfig.from_pretrained(source)
    return model


@torch.no_grad()
def materialize_(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Allocate ``model``'s (sharded) parameters on ``device`` uninitialised, and put every
    buffer back to its value from ``__init__`` (``to_empty`` wipes them too)."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    if any(b.is_meta for b in buffers.values()):
        raise RuntimeError("materialize_: a buffer is on meta; build with parameters_on_meta()")
    model.to_empty(device=device)
    for name, b in model.named_buffers():
        b.copy_(buffers[name])
    return model


def _aliases(model: nn.Module) -> list[list[str]]:
    """``state_dict`` names grouped by tensor (tied weights: one group of several names)."""
    groups: dict[int, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), []).append(name)
    return list(groups.values())


def _safetensors_index(path: str) -> dict[str, str] | None:
    """``{weight name: file}`` of a local safetensors directory, or None."""
    root = Path(path)
    if not root.is_dir():
        return None
    index = root / "model.safetensors.index.json"
    if index.is_file():
        return {k: str(root / f) for k, f in json.loads(index.read_text())["weight_map"].items()}
    from safetensors import safe_open

    out: dict[str, str] = {}
    for file in sorted(root.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            out.update(dict.fromkeys(fh.keys(), str(file)))
    return out or None


def _bucket_plan(model: nn.Module, path: str, bucket_bytes: int) -> tuple[list, bool]:
    """(buckets of names, read from files?) on rank 0: the safetensors names the model needs
    in buckets of about ``bucket_bytes``, or the model's own names when the files do not cover
    it (other names, .bin files, a hub id): then rank 0 loads it whole with from_pretrained."""
    index = _safetensors_index(path)
    groups = _aliases(model)
    if index is None or any(not set(g) & index.keys() for g in groups):
        names = [g[0] for g in groups]
        return [names[i : i + 64] for i in range(0, len(names), 64)], False
    wanted = [next(n for n in g if n in index) for g in groups]
    shapes = dict(model.state_dict(keep_vars=True).items())
    buckets, size = [[]], 0
    for name in sorted(wanted, key=lambda n: (index[n], n)):  # file by file
        t = shapes[name]
        if size and size + t.numel() * t.element_size() > bucket_bytes:
            buckets, size = [*buckets, []], 0
        buckets[-1].append(name)
        size += t.numel() * t.element_size()
    return buckets, True


def _read_bucket(path: str, names: list[str], full: nn.Module | None) -> dict[str, torch.Tensor]:
    """Rank 0: the full tensors of ``names`` (from the files, or the fallback's loaded model)."""
    if full is not None:
        state = full.state_dict()
        return {n: state[n] for n in names}
    from safetensors import safe_open

    index = _safetensors_index(path) or {}
    out: dict[str, torch.Tensor] = {}
    for file in dict.fromkeys(index[n] for n in names):
        with safe_open(file, framework="pt", device="cpu") as fh:
            out.update({n: fh.get_tensor(n) for n in names if index[n] == file})
    return out


def load_base_weights_(
    model: nn.Module, path: str, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> None:
    """Fill a materialised FSDP2 ``model`` with the base weights at ``path``: rank 0 reads,
    every rank keeps its slices (``set_model_state_dict`` with ``broadcast_from_rank0``).
    A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    rank0 = dist.get_rank() == 0
    plan = [_bucket_plan(model, path, bucket_bytes) if rank0 else None]
    dist.broadcast_object_list(plan, src=0)
    buckets, from_files = plan[0]
    full = None
    if rank0 and not from_files:  # verl's way: one full copy, on rank 0 only
        dtype = next(model.parameters()).dtype
        full = build_causal_lm(path, dtype=dtype)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    for names in buckets:
        tensors = _read_bucket(path, names, full) if rank0 else {}
        set_model_state_dict(model, tensors, options=options)
        del tensors


def sharded_causal_lm(
    path: str,
    device_mesh: Any,
    mp_policy: Any,
    *,
    dtype: str | torch.dtype,
    device: torch.device | str,
    attn_implementation: str = "sdpa",
    activation_checkpointing: bool = False,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> nn.Module:
    """The base model at ``path`` as an FSDP2 model whose ranks each hold 1/world of it,
    never more than one bucket of it beside (issue 24 item 7)."""
    model = empty_causal_lm(path, dtype, attn_implementation)
    if activation_checkpointing:  # as before sharding in the unsharded build
        model.gradient_checkpointing_enable()
    shard_fsdp2(model, device_mesh, mp_policy)
    materialize_(model, device)
    load_base_weights_(model, path, bucket_bytes)
    return model


def sharded_policy(
    run: RunConfig, path: str, device_mesh: Any, device: torch.device | str
) -> nn.Module:
    """The policy for ``trainer.strategy=fsdp``: :func:`sharded_causal_lm` with the run's
    master dtype, attention, activation checkpointing, mixed-precision policy and
    ``rollout.sync_bucket_mb`` (rank 0 holds at most one such bucket of base weights)."""
    return sharded_causal_lm(
        path,
        device_mesh,
        mixed_precision_policy(run),
        dtype=run.model.dtype,
        device=device,
        attn_implementation=run.model.attn_implementation,
        activation_checkpointing=run.model.activation_checkpointing,
        bucket_bytes=run.rollout.sync_bucket_mb * 2**20,  # full tensors in flight, as for a push
    )


@torch.no_grad()
def shard_reference(
    policy: nn.Module,
    device_mesh: Any,
    mp_policy: Any = None,
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
) -> nn.Module:
    """The frozen KL reference: a copy of the FSDP2-sharded ``policy`` (before any update),
    sharded like it, its parameters in ``dtype`` (the compute dtype; default: the policy's).

    Built on meta from the policy's config and filled from the policy's local shards (same
    mesh and placements: no communication, no full copy). Unlike the policy it is resharded by
    whoever runs it (:func:`sfpo_lab.training.experience.response_logprobs`), not by a forward hook: a
    hook would reshard the root before the fused log-probs read ``lm_head`` (item 6).
    """
    src = [p for p in policy.parameters()]
    dtype = dtype or src[0].dtype
    ref = empty_causal_lm(policy.config, dtype, attn_implementation)
    ref.generation_config = policy.generation_config
    shard_fsdp2(ref, device_mesh, mp_policy)
    materialize_(ref, _local(src[0]).device)
    named = dict(policy.named_parameters())
    for name, p in ref.named_parameters():
        _local(p).copy_(_local(named[name]))  # the same slice of the same parameter
    own = dict(policy.named_buffers())
    for name, b in ref.named_buffers():
        b.copy_(own[name])
    return ref.eval().requires_grad_(False)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def empty_generation_copy(
    source: str | PretrainedConfig,
    dtype: str | torch.dtype,
    device: torch.device | str,
    attn_implementation: str = "sdpa",
) -> nn.Module:
    """The HF engine's full copy under FSDP2, allocated on ``device`` in ``dtype`` (parameters;
    buffers keep theirs) without weights: the engine pulls the policy's before it generates."""
    model = empty_causal_lm(source, resolve_dtype(dtype), attn_implementation)
    return materialize_(model, device).eval().requires_grad_(False)
