"""Per-row seeded sampling: a row's tokens depend on its own key, never on the rest of the batch.

``torch.multinomial`` draws from one generator for the whole ``[N, V]`` batch, so a row's
sample depends on how many rows came before it (batch size, chunking, rank slicing). Here each
row has its own counter-based random stream: the uniform of row ``r`` at response position
``t`` is a hash of ``(row_seed[r], t)``, and the token is drawn by inverse-transform sampling
of the processed distribution with it. Same row seed and same logits give the same token,
whatever else is in the batch.

Exactness: inverse-transform sampling of ``softmax(scores)`` is an exact draw from the
processed distribution (temperature -> top-k -> top-p), up to the 2^-24 resolution of the
float32 uniform and the float32 CDF (what ``torch.multinomial`` itself uses on CUDA).
Batched kernels may still round a row's logits differently at another batch shape; a token
then changes only if its uniform falls within that rounding (~1e-6) of a CDF step.

Cost per step: O(N) hashes plus one ``[N, V]`` float32 softmax/cumsum buffer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.generation.logits_process import LogitsProcessor

from sfpo_lab.rollout.base import derive_seed

_M32 = 0xFFFFFFFF
_MUL = 0x45D9F3B  # < 2^27: (x < 2^32) * _MUL < 2^59, so int64 products never overflow
_SALT = (0x9E3779B9, 0x85EBCA6B, 0xC2B2AE35)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash, elementwise; ``x`` int64 in [0, 2^32) -> int64 in [0, 2^32)."""
    x = (((x >> 16) ^ x) * _MUL) & _M32
    x = (((x >> 16) ^ x) * _MUL) & _M32
    return (x >> 16) ^ x


def row_uniforms(row_seeds: torch.Tensor, step: int) -> torch.Tensor:
    """``[N]`` float32 uniforms in [0, 1) from ``[N]`` int64 row seeds (>= 0) and a step.

    A pure function of ``(row_seed, step)``: the counter-based stream of each row.
    """
    lo, hi = row_seeds & _M32, (row_seeds >> 32) & _M32
    h = _mix32(torch.full_like(row_seeds, (int(step) ^ _SALT[0]) & _M32))
    h = _mix32(h ^ lo ^ _SALT[1])
    h = _mix32(h ^ hi ^ _SALT[2])
    return (h >> 8).to(torch.float32) / float(2**24)  # 24 bits: exact in float32


def inverse_cdf_sample(scores: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Draw one token per row of ``softmax(scores)`` with the given uniforms.

    Args:
        scores: ``[N, V]`` processed logits (``-inf`` = excluded token).
        uniforms: ``[N]`` values in [0, 1).

    Returns:
        ``[N]`` long: the first token whose cumulative probability exceeds ``u * total``; it
        always has probability > 0 (the CDF is non-decreasing and the target is < its end).
    """
    cdf = torch.softmax(scores, dim=-1, dtype=torch.float32).cumsum_(-1)  # [N, V]
    total = cdf[:, -1:]
    target = torch.minimum(
        uniforms.to(cdf.device)[:, None] * total, total.nextafter(cdf.new_zeros(()))
    )
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


def row_seeds_for(
    seed: int, keys: Sequence[int], n: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``[len(keys) * n]`` int64 seeds, prompt-major: row ``(key k, sample j)`` gets
    ``derive_seed(seed, k, j)``."""
    seeds = [derive_seed(seed, int(k), j) for k in keys for j in range(n)]
    return torch.tensor(seeds, dtype=torch.long, device=device)


class SeededSampler(LogitsProcessor):
    """Last processor of a greedy ``generate``: turns the processed scores into a one-hot
    choice drawn per row (so HF's argmax picks the sampled token).

    Args:
        row_seeds: ``[N]`` int64, one per row of the generation batch.
        prompt_width: P, the left-padded prompt width (response position t = length - P).
    """

    def __init__(self, row_seeds: torch.Tensor, prompt_width: int) -> None:
        self.row_seeds = row_seeds
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_width
        tokens = inverse_cdf_sample(scores, row_uniforms(self.row_seeds, step))
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(-1, tokens[:, None], 0.0)
