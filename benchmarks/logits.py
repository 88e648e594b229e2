"""Peak memory of log-probs + entropy, forward and backward, at R = 2560, V = 151,936
(issue 14, 6c).

From the final hidden states ``[1, R, H]`` and the lm_head weight ``[V, H]`` (both inputs,
not counted) to the gradients of both, for ``sum(w * log p(label)) + c * sum(H)``:

* old — the code before issue 14: the model's ``[1, R, V]`` logits, ``.float()``,
  ``logprobs_from_logits`` and unchunked ``entropy_from_logits`` (its softmax kept for
  backward);
* chunked — :func:`~sfpo_lab.algos.logits.logprobs_and_entropy` over the compute-dtype logits
  (``update.fused_lm_head=false``);
* fused — :func:`~sfpo_lab.algos.logits.fused_logprobs_and_entropy` over the hidden states
  (``update.fused_lm_head=true``): no ``[R, V]`` tensor at all.

Compute dtype bf16 (the paper's ``bf16-mixed``); ``update.logits_chunk_tokens`` = 256.
Method: every storage an op creates is counted while alive (``benchmarks.memory.LiveBytes``,
a ``TorchDispatchMode``; exact bytes, not sampled); ``torch.cuda.max_memory_allocated`` on
CUDA. On CPU the ops run on the ``meta`` device: the same aten ops create the same storages
(``tests/benchmarks/test_bench_harness.py`` checks equal counts against CPU tensors) without
the arithmetic: bf16 GEMMs on a CPU without AVX512-BF16 took this section 5-11 minutes.
"""

from __future__ import annotations

import torch

from benchmarks.common import Row, row
from benchmarks.memory import METHOD_CPU, METHOD_CUDA, peak_new_bytes
from sfpo_lab.algos import entropy_from_logits, logprobs_from_logits
from sfpo_lab.algos.logits import fused_logprobs_and_entropy, logprobs_and_entropy
from sfpo_lab.config import UpdateConfig

SECTION = "logits"
ENTROPY_COEFF = 0.001


def _inputs(r: int, v: int, h: int, dtype: torch.dtype, device: torch.device):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, r, h, generator=g).to(device, dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) / h**0.5).to(device, dtype).requires_grad_()
    labels = torch.randint(0, v, (1, r), generator=g).to(device)
    w = torch.randn(1, r, generator=g).to(device)
    return hidden, weight, labels, w


def run(mode: str, device: torch.device) -> list[Row]:
    return _rows(sizes(mode), device)


def sizes(mode: str) -> tuple[int, int, int]:
    return (64, 1024, 32) if mode == "smoke" else (2560, 151_936, 128)


def peak_bytes(r: int, v: int, h: int, where: torch.device) -> dict[str, int]:
    """Peak new bytes of the old, chunked and fused paths at ``R, V, H`` (bf16 compute), run
    on ``where``."""
    chunk = UpdateConfig().logits_chunk_tokens
    hidden, weight, labels, w = _inputs(r, v, h, torch.bfloat16, where)

    def backward(lp, ent):
        loss = (lp * w).sum() + ENTROPY_COEFF * ent.sum()
        torch.autograd.grad(loss, (hidden, weight))

    def old():
        logits = (hidden @ weight.t()).float()  # response_logits: model logits, then .float()
        backward(logprobs_from_logits(logits, labels), entropy_from_logits(logits))

    def chunked():
        backward(*logprobs_and_entropy(hidden @ weight.t(), labels, chunk_tokens=chunk))

    def fused():
        backward(*fused_logprobs_and_entropy(hidden, weight, labels, chunk_tokens=chunk))

    return {
        name: peak_new_bytes(fn, where)
        for name, fn in [("old", old), ("chunked", chunked), ("fused", fused)]
    }


def _rows(size: tuple[int, int, int], device: torch.device) -> list[Row]:
    r, v, h = size
    # CPU is counted on meta: the same storages without the arithmetic
    peaks = peak_bytes(r, v, h, torch.device("meta") if device.type == "cpu" else device)
    chunk = UpdateConfig().logits_chunk_tokens
    cfg = f"R={r}, V={v}, H={h}, bf16 compute, chunk {chunk} tokens"
    method = METHOD_CUDA if device.type == "cuda" else METHOD_CPU + " on the meta device"
    gib = {k: round(b / 2**30, 3) for k, b in peaks.items()}
    details = {"peak_new_bytes": peaks, "peak_new_gib": gib, "method": method}
    note = f"{method}; GiB old {gib['old']}, chunked {gib['chunked']}, fused {gib['fused']}"
    return [
        row(SECTION, "log-prob+entropy fwd+bwd peak, old / fused", peaks["old"] / peaks["fused"],
            ">=", 5.0, config=cfg, note=note, details=details),
        Row(SECTION, "log-prob+entropy fwd+bwd peak, old / chunked (no fusion)",
            peaks["old"] / peaks["chunked"], config=cfg, note=note, details=details),
    ]  # fmt: skip
