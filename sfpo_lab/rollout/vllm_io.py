"""vLLM's side of :class:`~sfpo_lab.rollout.vllm.VLLMEngine`: its outputs as a padded batch, and
its weights read back to check that none is stale (``read_weights``, ``weight_mismatch``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from sfpo_lab.rollout.base import RolloutBatch, SamplingParams, build_rollout_batch, left_pad


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
