"""Tensor-parallel groups of a colocated vLLM engine: T consecutive ranks are one replica (vLLM's
``initialize_model_parallel`` layout, TP innermost); every rank of a group submits the group's
prompts together, with one seed, and keeps its own rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def tp_subgroup(tp: int) -> Any:
    """This rank's group of ``tp`` consecutive ranks (vLLM's TP layout), gloo for objects."""
    import torch.distributed as dist

    group, _ = dist.new_subgroups(group_size=tp, backend="gloo")
    return group


def gather_tp_group(
    group: Any, prompts: list[list[int]], seed: int | None, keys: Sequence[int] | None
) -> tuple[list[list[int]], list[int] | None, int]:
    """The TP group's prompts in rank order, their keys, and where this rank's start.

    Raises:
        RuntimeError: the ranks of the group were called with different seeds (they would
            sample different tokens from one sharded model: vLLM requires identical inputs).
    """
    import torch.distributed as dist

    parts: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, (prompts, seed, None if keys is None else list(keys)), group)
    if len({s for _, s, _ in parts}) > 1:
        raise RuntimeError(
            f"VLLMEngine: the ranks of one tensor-parallel group generate with seeds "
            f"{[s for _, s, _ in parts]}; they must share one seed (one model replica)"
        )
    start = sum(len(p) for p, _, _ in parts[: dist.get_rank(group)])
    all_prompts = [p for part, _, _ in parts for p in part]
    if any(k is None for _, _, k in parts):
        return all_prompts, None, start
    return all_prompts, [k for _, _, ks in parts for k in ks], start
