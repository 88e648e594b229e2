"""Section 3 — rollout engines: our HF engine vs raw ``generate``, vLLM vs our HF engine, sync.

* ``raw generate / HFEngine`` time for identical work: the same model, prompts, ``n``, length
  and seed, so both sample the very same tokens (checked) — the ratio is the engine's
  throughput as a fraction of HF's own (target >= 0.95).
* ``vLLM / HFEngine`` tokens per second on identical prompts, ``n``, lengths and weights
  (vLLM receives the HF model's weights through ``sync_weights``); the two sample different
  tokens, so each response runs to the length cap (no stop token) and tokens/s compares equal
  amounts of decoding.
* weight sync: ``push_full_weights`` into the engine, per iteration, against the time that
  engine takes to generate the batch.

vLLM rows are the section ``vllm_rollouts`` (:mod:`benchmarks.vllm_rollouts`, rows labelled
``rollouts``); they say "not measured: <reason>" when vLLM, ``VLLMEngine`` or SmolLM2 is
unavailable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList

from benchmarks.common import (
    Row,
    interleaved,
    model_dtype,
    paired_ratio,
    qwen05b_config,
    row,
    toy_config,
)
from sfpo_lab.model.build import build_causal_lm
from sfpo_lab.rollout.base import SamplingParams, left_pad
from sfpo_lab.rollout.hf import HFEngine
from sfpo_lab.rollout.seeded import SeededSampler, row_seeds_for
from sfpo_lab.rollout.sync import push_full_weights

SECTION = "rollouts"
PAD, EOS = 0, 1


@dataclass(frozen=True)
class Shape:
    name: str
    config: str  # "toy" | "0.5b"
    prompts: int
    n: int
    max_new_tokens: int
    repeats: int

    @property
    def label(self) -> str:
        return f"{self.name}, {self.prompts} prompts x {self.n} x {self.max_new_tokens} tokens"


def build_model(config: str, device: torch.device) -> torch.nn.Module:
    cfg = {"toy": toy_config, "0.5b": qwen05b_config}[config]()
    torch.manual_seed(0)
    with torch.device(device):
        return build_causal_lm(cfg, dtype=model_dtype(device)).eval().requires_grad_(False)


def make_prompts(count: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """``count`` random prompts of 8..23 tokens (ids >= 3: no pad/eos/unk), varied lengths."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, 24, (count,), generator=g).tolist()
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def hf_vs_raw_shapes(mode: str, device: torch.device) -> list[Shape]:
    if device.type == "cuda" and mode != "smoke":
        return [Shape("toy", "toy", 16, 8, 64, 5), Shape("0.5B-size", "0.5b", 16, 8, 128, 3)]
    if mode == "smoke":
        return [Shape("toy", "toy", 2, 2, 4, 1)]
    if mode == "quick":
        return [Shape("toy", "toy", 16, 8, 64, 5)]
    return [Shape("toy", "toy", 16, 8, 64, 7), Shape("0.5B-size", "0.5b", 4, 8, 32, 2)]


def run(mode: str, device: torch.device) -> list[Row]:
    rows: list[Row] = []
    for shape in hf_vs_raw_shapes(mode, device):
        rows += hf_vs_raw(shape, device)
    return rows + hf_sync(mode, device)  # vLLM rows: section vllm_rollouts


def hf_vs_raw(shape: Shape, device: torch.device) -> list[Row]:
    model = build_model(shape.config, device)
    engine = HFEngine(model, PAD, EOS)
    prompts = make_prompts(shape.prompts, model.config.vocab_size)
    params = SamplingParams(n=shape.n, max_new_tokens=shape.max_new_tokens)
    ids, mask = left_pad(prompts, PAD, device)
    ids, mask = ids.repeat_interleave(shape.n, 0), mask.repeat_interleave(shape.n, 0)
    seed = 1234
    out: dict[str, torch.Tensor] = {}

    def ours() -> None:
        out["ours"] = engine.generate(prompts, params, seed=seed).input_ids

    def raw() -> None:
        # the same per-row sampler as the engine (argmax over its one-hot choice), so the
        # samples can be compared token for token
        sampler = SeededSampler(
            row_seeds_for(seed, range(len(prompts)), shape.n, device), ids.shape[1]
        )
        with torch.no_grad():
            out["raw"] = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=shape.max_new_tokens,
                temperature=None,
                top_p=None,
                top_k=None,
                logits_processor=LogitsProcessorList([sampler]),
                eos_token_id=EOS,
                pad_token_id=PAD,
            )

    t = interleaved({"raw": raw, "ours": ours}, shape.repeats, device=device, clock="cpu")
    same = _same_tokens(out["ours"], out["raw"])
    tokens = int((out["ours"][:, ids.shape[1] :] != PAD).sum())
    return [
        row(
            SECTION,
            "HFEngine throughput / raw model.generate",
            paired_ratio(t, "raw", "ours"),
            ">=",
            0.95,
            config=shape.label,
            note="same model, prompts, n, lengths, seed (median of per-round ratios); "
            + f"identical samples: {'yes' if same else 'NO'}",
            details={
                "seconds": t,
                "identical_samples": same,
                "generated_tokens": tokens,
                "min_ratio": t["raw"]["min"] / t["ours"]["min"],
            },
        )
    ]


def _same_tokens(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to right padding (HF stops at the longest sequence, pads with PAD after EOS)."""
    width = max(a.shape[1], b.shape[1])
    pad = torch.nn.functional.pad
    return bool(torch.equal(pad(a, (0, width - a.shape[1])), pad(b, (0, width - b.shape[1]))))


def hf_sync(mode: str, device: torch.device) -> list[Row]:
    """Pushing the trainer's weights into an HF engine that owns its copy (the FSDP2 path)."""
    shape = (
        Shape("toy", "toy", 16, 8, 64, 3) if mode != "smoke" else Shape("toy", "toy", 2, 2, 4, 1)
    )
    if mode == "full" or (device.type == "cuda" and mode == "quick"):
        shape = Shape("0.5B-size", "0.5b", 4, 8, 32, 1 if device.type == "cpu" else 3)
    policy = build_model(shape.config, device)
    engine = HFEngine.from_config(policy.config, PAD, EOS, device=device)
    prompts = make_prompts(shape.prompts, policy.config.vocab_size)
    params = SamplingParams(n=shape.n, max_new_tokens=shape.max_new_tokens)
    sync_s: list[float] = []
    t = interleaved(
        {
            "sync": lambda: sync_s.append(push_full_weights(policy, engine)),
            "generate": lambda: engine.generate(prompts, params, seed=1),
        },
        shape.repeats,
        device=device,
    )
    return [
        row(
            SECTION,
            "weight sync / rollout time (HF engine owning a copy)",
            t["sync"]["min"] / t["generate"]["min"],
            "<",
            0.10,
            config=shape.label,
            note="push_full_weights (256 MiB buckets) into HFEngine.from_config, once per iteration",
            details={"seconds": t},
        )
    ]
