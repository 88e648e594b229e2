"""Strategies (single device, DDP, FSDP2) and mixed precision, decided once here.

Precision as the authors run it (verl: fp32 actor, FSDP ``MixedPrecision(param_dtype=bf16,
reduce_dtype=fp32)``): ``model.dtype`` names the **master weights** (parameters, AdamW state,
the SFPO theta0 snapshot and the reposition all live in it), ``trainer.precision`` the
**compute**. With ``bf16-mixed``:

* single device / DDP: fp32 parameters, Lightning's autocast gives bf16 matmuls, gradients are
  fp32 (they take the parameters' dtype), so DDP all-reduces fp32.
* FSDP2: ``fully_shard(..., mp_policy=MixedPrecisionPolicy(param_dtype=bf16,
  reduce_dtype=fp32))``: fp32 shards, each layer all-gathered in bf16 for the forward, the
  gradients reduce-scattered in fp32 into fp32 shards. Lightning then gets ``32-true``: the
  policy already casts, an autocast on top would handle the same tensors twice.

``model.dtype=bfloat16`` with ``*-mixed`` would silently train bf16 master weights (an update of
1e-6 on a weight of 0.02 rounds away in bf16: one bf16 step there is ~1.2e-4), so it is
refused; pure 16-bit training must be asked for by name (``bf16-true`` / ``16-true`` with the
same ``model.dtype``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sfpo_lab.config import ConfigError, RunConfig

MIXED = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
TRUE_HALF = {"bf16-true": "bfloat16", "16-true": "float16"}
PRECISIONS = ("32-true", *MIXED, *TRUE_HALF)


def check_precision(run: RunConfig) -> None:
    """``model.dtype`` (master weights) and ``trainer.precision`` (compute) agree.

    Raises:
        ConfigError: a combination that would train other master weights than it names.
    """
    p, dtype, strategy = run.trainer.precision, run.model.dtype, run.trainer.strategy
    if p in MIXED and dtype != "float32":
        raise ConfigError(
            f"invalid config: trainer.precision={p!r} with model.dtype={dtype!r}: mixed precision "
            "computes in 16 bits on master weights of model.dtype, so this would train "
            f"{dtype} master weights (small updates round away). Set model.dtype=float32 "
            f"(the authors' setting), or trainer.precision={_true_of(dtype)!r} to train in pure "
            f"{dtype} on purpose"
        )
    if p in TRUE_HALF and dtype != TRUE_HALF[p]:
        raise ConfigError(
            f"invalid config: trainer.precision={p!r} with model.dtype={dtype!r}: the two name "
            f"different master weights; use model.dtype={TRUE_HALF[p]!r}, or "
            "trainer.precision=bf16-mixed for fp32 master weights with bf16 compute"
        )
    if p == "32-true" and dtype != "float32":
        raise ConfigError(
            f"invalid config: trainer.precision='32-true' with model.dtype={dtype!r}: 32-true "
            f"computes in fp32; use trainer.precision={_true_of(dtype)!r} to train in pure "
            f"{dtype}, or model.dtype=float32"
        )
    if p == "16-mixed" and strategy == "fsdp":
        raise ConfigError(
            "invalid config: trainer.precision='16-mixed' with trainer.strategy='fsdp' (fp16 "
            "needs a gradient scaler the FSDP2 policy does not have); use bf16-mixed"
        )
    if p == "16-mixed" and run.trainer.accelerator == "cpu":
        raise ConfigError(
            "invalid config: trainer.precision='16-mixed' with trainer.accelerator='cpu': "
            "Lightning has no fp16 AMP on CPU and would silently run bf16-mixed instead; use "
            "trainer.precision=bf16-mixed (or 32-true) on CPU"
        )


def _true_of(dtype: str) -> str:
    return {v: k for k, v in TRUE_HALF.items()}.get(dtype, "32-true")


def compute_dtype(run: RunConfig) -> torch.dtype:
    """The dtype the forward passes compute in (also the generation copy's and engine's)."""
    from sfpo_lab.model.build import resolve_dtype

    return MIXED.get(run.trainer.precision) or resolve_dtype(run.model.dtype)


def mixed_precision_policy(run: RunConfig) -> Any:
    """FSDP2's policy for ``*-mixed``: 16-bit params in the forward, fp32 gradient reduce."""
    if run.trainer.precision not in MIXED:
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(
        param_dtype=MIXED[run.trainer.precision], reduce_dtype=torch.float32
    )


def lightning_precision(run: RunConfig) -> str:
    """``Trainer(precision=...)``: under FSDP2 the policy casts, so Lightning adds no autocast."""
    t = run.trainer
    return "32-true" if t.strategy == "fsdp" and t.precision in MIXED else t.precision


def build_strategy(run: RunConfig) -> Any:
    """The Lightning strategy for ``trainer.strategy`` (gloo on CPU, nccl on GPU)."""
    t = run.trainer
    fmt = checkpoint_format(run)  # raises on checkpoint.format=sharded without FSDP2
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
            # sharded: a directory of per-rank shards (DCP) + meta.pt, no gather on rank 0
            save_distributed_checkpoint=fmt == "sharded",
        )
    return "auto"


def shard_fsdp2(model: nn.Module, device_mesh: Any, mp_policy: Any = None) -> nn.Module:
    """Apply FSDP2 to each decoder layer and then to the root (in ``configure_model``).

    Args:
        model: the full model (on the host or its device).
        device_mesh: Lightning's mesh (its ``data_parallel`` dim) or None (default mesh).
        mp_policy: a ``MixedPrecisionPolicy`` (:func:`mixed_precision_policy`), or None to
            compute in the parameters' dtype.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from sfpo_lab.model.build import decoder_layer_classes

    mesh = device_mesh["data_parallel"] if device_mesh is not None else None
    policy = mp_policy if mp_policy is not None else MixedPrecisionPolicy()
    layer_types = tuple(decoder_layer_classes(model))
    for module in model.modules():
        if isinstance(module, layer_types):
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def checkpoint_format(run: RunConfig) -> str:
    """``checkpoint.format`` resolved: ``sharded`` (per-rank shards in a directory, FSDP2 only;
    the default there) or ``full`` (one file; the default elsewhere).

    Raises:
        ConfigError: ``sharded`` without ``trainer.strategy=fsdp`` (nothing is sharded).
    """
    fmt, strategy = run.checkpoint.format, run.trainer.strategy
    if fmt is None:
        return "sharded" if strategy == "fsdp" else "full"
    if fmt == "sharded" and strategy != "fsdp":
        raise ConfigError(
            f"invalid config: checkpoint.format='sharded' with trainer.strategy={strategy!r}: "
            "only FSDP2 (trainer.strategy=fsdp) holds sharded weights; use checkpoint.format=full "
            "(or null, the default for this strategy)"
        )
    return fmt
