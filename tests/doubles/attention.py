"""A plain-softmax ``scaled_dot_product_attention`` that returns NaN on an all-masked row.

Stands for the cuDNN SDPA backend on H100-class GPUs (issue 24, item 1): a query row whose
mask is all False has every score at -inf, ``softmax`` of that row is 0 / 0 = NaN, and a NaN
value row then reaches every query that gives it weight 0 (0 x NaN = NaN). torch's CPU kernels
return 0 on such rows instead (``_safe_softmax``), which is why no CPU test saw the NaN.
``tests/test_attention.py::test_double_returns_nan_on_an_all_masked_row`` shows the double does
this, and equals torch's SDPA on every row that attends to something.

Patch it in with :func:`patch_sdpa`: transformers 5.19's ``sdpa_attention_forward`` looks up
``torch.nn.functional.scaled_dot_product_attention`` at call time, so one attribute covers every
model forward, prefill and KV-cache decode.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor


def plain_softmax_sdpa(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``softmax(q k^T * scale + mask) v`` with no repair of all-masked rows.

    Args:
        query: ``[B, H, Q, D]``.
        key, value: ``[B, Hkv, K, D]`` (``Hkv`` divides ``H`` when ``enable_gqa``).
        attn_mask: broadcastable to ``[B, H, Q, K]``: bool (True = attend) or additive float.
        is_causal: upper-left causal mask (torch's convention), only without ``attn_mask``.

    Returns:
        ``[B, H, Q, D]`` in ``query``'s dtype; NaN on every row whose mask is all False.
    """
    if dropout_p:
        raise NotImplementedError("plain_softmax_sdpa: dropout is not modelled")
    if enable_gqa and key.shape[1] != query.shape[1]:
        rep = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    q_len, k_len = query.shape[-2], key.shape[-2]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = (query.float() @ key.float().transpose(-2, -1)) * scale  # [B, H, Q, K]
    if is_causal:
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.float()
    weights = torch.softmax(scores, dim=-1)  # an all -inf row: NaN
    return (weights @ value.float()).to(query.dtype)


def patch_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route every ``F.scaled_dot_product_attention`` call through :func:`plain_softmax_sdpa`."""
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", plain_softmax_sdpa)
