"""Strategies: single device, DDP, and FSDP2 (``fully_shard`` per decoder layer, then the root)."""

from __future__ import annotations

from typing import Any

from torch import nn

from sfpo_lab.config import RunConfig


def build_strategy(run: RunConfig) -> Any:
    """The Lightning strategy for ``trainer.strategy`` (gloo on CPU, nccl on GPU)."""
    t = run.trainer
    backend = "gloo" if t.accelerator == "cpu" else None
    if t.strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(process_group_backend=backend)
    if t.strategy == "fsdp":
        from lightning.pytorch.strategies import ModelParallelStrategy

        # tensor_parallel_size defaults to the device count: pure data parallel sharding here
        return ModelParallelStrategy(
            data_parallel_size=t.devices * t.num_nodes,
            tensor_parallel_size=1,
            process_group_backend=backend,
            save_distributed_checkpoint=False,  # one full-state file, like single device
        )
    return "auto"


def shard_fsdp2(model: nn.Module, device_mesh: Any) -> nn.Module:
    """Apply FSDP2 to each decoder layer and then to the root (in ``configure_model``)."""
    from torch.distributed.fsdp import fully_shard

    from sfpo_lab.models import decoder_layer_classes

    mesh = device_mesh["data_parallel"] if device_mesh is not None else None
    layer_types = tuple(decoder_layer_classes(model))
    for module in model.modules():
        if isinstance(module, layer_types):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model
