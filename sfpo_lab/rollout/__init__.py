"""Rollout engines behind one interface (:class:`RolloutEngine`): HF ``generate`` and vLLM.

``VLLMEngine`` imports without vllm installed; constructing it needs the package.
"""

from sfpo_lab.rollout.base import (
    RolloutBatch,
    RolloutEngine,
    SamplingParams,
    build_rollout_batch,
    concat_rollouts,
    derive_seed,
    left_pad,
    mask_after_eos,
)
from sfpo_lab.rollout.hf import HFEngine
from sfpo_lab.rollout.sync import (
    WeightSource,
    iter_full_tensors,
    load_named_tensors_,
    module_weights,
    push_full_weights,
)
from sfpo_lab.rollout.vllm import VLLMEngine

__all__ = [
    "HFEngine",
    "RolloutBatch",
    "RolloutEngine",
    "SamplingParams",
    "VLLMEngine",
    "WeightSource",
    "build_rollout_batch",
    "concat_rollouts",
    "derive_seed",
    "iter_full_tensors",
    "left_pad",
    "load_named_tensors_",
    "mask_after_eos",
    "module_weights",
    "push_full_weights",
]
