"""Token-level quantities from the policy's logits: log-probs and entropy.

Memory matters here: a ``[B, T, V]`` logits tensor for a 150k vocabulary is the largest
activation of the whole training step, so neither function materialises a second full-size
softmax when asked not to (verl issue #2828). Numerics match verl 0.9.1
``utils.torch_functional`` (``logprobs_from_logits_v2``, ``entropy_from_logits`` and
``entropy_from_logits_with_chunking``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sfpo_lab.algos.losses import agg_loss


def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """log softmax(logits)[label] for each position, without a full log-softmax copy.

    For float32/float64 this is ``logits[label] - logsumexp(logits)``, with the logsumexp
    taken one leading row at a time to bound the temporary memory; bfloat16/float16 use a
    per-row log-softmax instead (logsumexp is inaccurate in bf16), as verl does.

    Args:
        logits: ``[B, T, V]`` (or ``[B, V]``).
        labels: ``[B, T]`` (or ``[B]``) token ids.

    Returns:
        ``[B, T]`` log-probabilities, in the logits' dtype.
    """
    if logits.dtype in (torch.float32, torch.float64):
        picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
        lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
        return picked - lse
    rows = [
        torch.log_softmax(row, dim=-1).gather(-1, lab.unsqueeze(-1)).squeeze(-1)
        for row, lab in zip(logits, labels, strict=True)
    ]
    return torch.stack(rows)


def entropy_from_logits(logits: Tensor, chunk_size: int | None = None) -> Tensor:
    """Entropy H(softmax(logits)) = logsumexp(z) - sum softmax(z) z over the last dim.

    Args:
        logits: ``[..., V]``.
        chunk_size: ``None`` computes everything at once in the logits' dtype. An integer
            flattens the leading dims and processes ``chunk_size`` positions at a time in
            float32, so the softmax temporary is ``chunk_size x V`` instead of the full
            tensor (verl ``entropy_from_logits_with_chunking``; output float32).

    Returns:
        ``[...]`` per-position entropy (differentiable in both modes).
    """
    if chunk_size is None:
        probs = torch.softmax(logits, dim=-1)
        return torch.logsumexp(logits, dim=-1) - torch.sum(probs * logits, dim=-1)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")
    flat = logits.reshape(-1, logits.shape[-1])
    parts = []
    for start in range(0, flat.shape[0], chunk_size):
        chunk = flat[start : start + chunk_size].float()
        probs = torch.softmax(chunk, dim=-1)
        parts.append(torch.logsumexp(chunk, dim=-1) - torch.sum(probs * chunk, dim=-1))
    out = torch.cat(parts) if parts else flat.new_zeros(0, dtype=torch.float32)
    return out.reshape(logits.shape[:-1])


def entropy_loss(
    logits: Tensor,
    mask: Tensor,
    agg: str = "token-mean",
    chunk_size: int | None = None,
    **agg_kwargs,
) -> Tensor:
    """Aggregated token entropy (verl ``compute_entropy_loss``). With ``token-mean`` this is
    the masked mean token entropy H_s that drives SFPO's trigger (Alg. 1)."""
    return agg_loss(entropy_from_logits(logits, chunk_size), mask, agg, **agg_kwargs)


def _upcast(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # bf16/fp16 -> fp32; fp64 stays


class _ChunkedLogprobEntropy(torch.autograd.Function):
    """log p(label) and H(p) for ``M`` positions, ``chunk`` positions at a time.

    ``x`` is ``[M, V]`` logits (``weight=None``) or ``[M, H]`` hidden states that are
    projected chunk by chunk with the ``[V, H]`` output embedding (fused: no ``[M, V]`` tensor
    at all). Forward keeps only the per-position logsumexp and entropy ``[M]``; backward
    recomputes each chunk's float32 softmax, so no full-vocabulary float32 tensor (softmax,
    log-softmax, upcast copy) ever exists for more than ``chunk`` positions.
    """

    @staticmethod
    def forward(ctx, x, weight, labels, temperature, chunk):
        m = x.shape[0]
        dt = _upcast(x.dtype if weight is None else weight.dtype)
        logp, ent, lse = (x.new_empty(m, dtype=dt) for _ in range(3))
        for s in range(0, m, chunk):
            z = _chunk_logits(x[s : s + chunk], weight, dt, temperature)
            lse_c = torch.logsumexp(z, dim=-1)
            z -= lse_c[:, None]  # log-softmax in place: -sum p log p has no cancellation
            lse[s : s + chunk] = lse_c
            ent[s : s + chunk] = -torch.exp(z).mul_(z).sum(-1)
            logp[s : s + chunk] = z.gather(-1, labels[s : s + chunk, None]).squeeze(-1)
        ctx.save_for_backward(x, weight, labels, lse, ent)
        ctx.temperature, ctx.chunk = temperature, chunk
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        x, weight, labels, lse, ent = ctx.saved_tensors
        t, chunk = ctx.temperature, ctx.chunk
        grad_x = torch.empty_like(x)
        grad_w = None if weight is None else torch.zeros_like(weight, dtype=lse.dtype)
        for s in range(0, x.shape[0], chunk):
            sl = slice(s, s + chunk)
            # in place on the recomputed chunk: at most two [chunk, V] float32 tensors live
            g = _chunk_logits(x[sl], weight, lse.dtype, t).sub_(lse[sl, None])  # log p
            p = torch.exp(g)
            if g_ent is not None:  # dH/dz_j = -p_j (log p_j + H)
                g.add_(ent[sl, None]).mul_(p).mul_(-g_ent[sl, None])
            else:
                g.zero_()
            if g_logp is not None:  # d log p_y / dz_j = 1[j = y] - p_j
                g.addcmul_(p, g_logp[sl, None], value=-1.0)
                g.scatter_add_(-1, labels[sl, None], g_logp[sl, None])
            del p
            if t != 1.0:
                g.div_(t)
            if weight is None:
                grad_x[sl] = g
            else:
                g = g.to(weight.dtype)
                grad_x[sl] = g @ weight
                if grad_w.dtype == g.dtype:
                    grad_w.addmm_(g.t(), x[sl])
                else:
                    grad_w += (g.t() @ x[sl]).to(grad_w.dtype)
        return grad_x, None if grad_w is None else grad_w.to(weight.dtype), None, None, None


def _chunk_logits(x: Tensor, weight: Tensor | None, dtype: torch.dtype, t: float) -> Tensor:
    z = x if weight is None else x @ weight.t()  # the lm_head (no bias), in its dtype
    return z.to(dtype) / t  # always a new tensor: callers modify it in place


def _check(chunk_tokens: int, temperature: float, labels: Tensor, lead: torch.Size) -> None:
    if chunk_tokens < 1:
        raise ValueError(f"update.logits_chunk_tokens must be >= 1, got {chunk_tokens}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if labels.shape != lead:
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(lead)}")


def logprobs_and_entropy(
    logits: Tensor, labels: Tensor, temperature: float = 1.0, chunk_tokens: int = 256
) -> tuple[Tensor, Tensor]:
    """Chunked log softmax(logits / T)[label] and entropy H(softmax(logits / T)), with grad.

    Equals the dense float32 computation (``log_softmax(logits.float() / T)``) in values and
    gradients, but holds full-vocabulary float32 tensors for at most ``chunk_tokens``
    positions at a time, in forward and in backward (entropy is recomputed there, not kept).
    The logits stay in the model's compute dtype (e.g. bf16) and are upcast chunk by chunk.

    Args:
        logits: ``[..., V]`` in any float dtype.
        labels: ``[...]`` token ids.
        temperature: the sampling temperature T the logits are divided by.
        chunk_tokens: positions per chunk (``update.logits_chunk_tokens``).

    Returns:
        ``([...] log-probs, [...] entropy)``, both float32 (float64 for float64 logits).
    """
    lead = logits.shape[:-1]
    _check(chunk_tokens, temperature, labels, lead)
    flat = logits.reshape(-1, logits.shape[-1])  # a view for contiguous logits
    logp, ent = _ChunkedLogprobEntropy.apply(
        flat, None, labels.reshape(-1), temperature, chunk_tokens
    )
    return logp.reshape(lead), ent.reshape(lead)


def fused_logprobs_and_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    temperature: float = 1.0,
    chunk_tokens: int = 256,
) -> tuple[Tensor, Tensor]:
    """:func:`logprobs_and_entropy` of ``hidden @ weight.T`` without ever forming the
    ``[..., V]`` logits: the output projection (lm_head, no bias) runs chunk by chunk inside
    the function and again in backward, which returns the gradients of ``hidden`` and
    ``weight`` (verl's fused linear + log-softmax kernels, in plain PyTorch).

    Args:
        hidden: ``[..., H]`` final (normed) hidden states at the positions that predict.
        weight: ``[V, H]`` output embedding (tied or not).
        labels: ``[...]`` token ids.

    Returns:
        ``([...] log-probs, [...] entropy)`` in float32 (float64 for a float64 weight).
    """
    lead = hidden.shape[:-1]
    _check(chunk_tokens, temperature, labels, lead)
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight {tuple(weight.shape)} is not [V, {hidden.shape[-1]}]")
    flat = hidden.reshape(-1, hidden.shape[-1])
    logp, ent = _ChunkedLogprobEntropy.apply(
        flat, weight, labels.reshape(-1), temperature, chunk_tokens
    )
    return logp.reshape(lead), ent.reshape(lead)
