"""The GRPO objective: loss aggregation, clipped policy loss, KL estimators (paper Eq. 1).

Every function is pure and numerically identical to verl 0.9.1 ``core_algos`` /
``utils.torch_functional`` (checked against verl itself on random inputs). Shapes:
``B`` responses, ``T`` response tokens (right-padded), ``mask`` is 1 on real response
tokens and 0 on padding.

Where we deliberately differ from verl, it is only for non-finite values *outside* the
mask: every masked sum here zeroes padded positions before summing (verl does that for
``token-mean`` only), so a ``-inf`` log-prob on a padding token cannot turn the loss NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

AGG_MODES = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)
KL_KINDS = ("k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl")


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``values`` where ``mask`` is non-zero; NaN/inf outside the mask are ignored."""
    valid = torch.where(mask.bool(), values, 0.0) * mask
    return valid.sum() if dim is None else valid.sum(dim=dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """verl's masked mean: ``masked_sum / (mask.sum() + 1e-8)`` (0 for an empty mask)."""
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(values, mask, dim) / (count + 1e-8)


def agg_loss(
    loss_mat: Tensor,
    mask: Tensor,
    mode: str = "token-mean",
    *,
    dp_size: int = 1,
    batch_num_tokens: Tensor | float | None = None,
    global_batch_size: Tensor | float | None = None,
    loss_scale_factor: float | None = None,
) -> Tensor:
    """Aggregate a per-token loss ``[B, T]`` into a scalar (verl ``agg_loss``).

    Modes: ``token-mean`` (sum / #tokens, DAPO), ``token-sum``, ``seq-mean-token-sum``
    (mean over sequences of per-sequence sums), ``seq-mean-token-mean`` (mean of per-sequence
    means, original GRPO), ``seq-mean-token-sum-norm`` (``seq-mean-token-sum`` divided by
    ``loss_scale_factor``, default ``T``; Dr. GRPO). Fully masked rows are excluded from the
    sequence count.

    Micro-batching / data parallelism: pass the *global* denominators (``batch_num_tokens``:
    valid tokens in the whole batch; ``global_batch_size``: non-empty sequences in the whole
    batch). The result is then ``local part / global denominator * dp_size``, so summing it
    over micro-batches (and averaging gradients over ``dp_size`` ranks, as DDP/FSDP do)
    reproduces the full-batch aggregate exactly. Without them a micro-batch is its own batch;
    ``dp_size > 1`` then raises, as in verl. An all-masked batch gives NaN for the mean
    modes, as in verl.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"agg mode must be one of {list(AGG_MODES)}, got {mode!r}")
    if mode == "token-mean":
        if batch_num_tokens is None:
            _require_global(dp_size, "batch_num_tokens")
            batch_num_tokens = mask.sum()
        return masked_sum(loss_mat, mask) / batch_num_tokens * dp_size
    if mode == "token-sum":
        return masked_sum(loss_mat, mask) * dp_size
    tokens_per_seq = mask.sum(dim=-1)
    seq_loss = masked_sum(loss_mat, mask, dim=-1)
    if mode == "seq-mean-token-mean":
        seq_loss = seq_loss / (tokens_per_seq + 1e-8)
    seq_mask = (tokens_per_seq > 0).float()
    if global_batch_size is None:
        _require_global(dp_size, "global_batch_size")
        global_batch_size = seq_mask.sum()
    loss = masked_sum(seq_loss, seq_mask) / global_batch_size * dp_size
    if mode == "seq-mean-token-sum-norm":
        loss = loss / (mask.shape[-1] if loss_scale_factor is None else loss_scale_factor)
    return loss


def _require_global(dp_size: int, name: str) -> None:
    if dp_size > 1:
        raise ValueError(f"{name} (the global denominator) is required when dp_size > 1")


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float | None = None,
    agg: str = "token-mean",
    **agg_kwargs,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate of GRPO/PPO (paper Eq. 1; verl ``compute_policy_loss_vanilla``).

    With r = exp(clamp(logprobs - old_logprobs, -20, 20)) and A the advantage, the per-token
    loss is max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)); for A < 0 it is further capped
    at -A * clip_c (dual-clip PPO, arXiv 1912.09729; ``clip_c=None``, the default and the
    authors' loss, disables it). The objective variants are settings of this one function
    (``LossConfig.policy_loss_kwargs``; presets in ``conf/loss/``): DAPO is ``clip_high=0.28``
    with ``token-mean``, Dr. GRPO is ``agg="seq-mean-token-sum-norm"`` with a constant
    ``loss_scale_factor`` (the response-length cap) and advantages without std division.

    Args:
        logprobs: ``[B, T]`` log pi_theta of the response tokens (carries the gradient).
        old_logprobs: ``[B, T]`` log pi_theta_old (the rollout / theta0 policy).
        advantages: ``[B, T]``, or ``[B]`` (broadcast over tokens).
        mask: ``[B, T]`` response mask.
        agg: aggregation mode of :func:`agg_loss`; ``agg_kwargs`` (``dp_size``,
            ``batch_num_tokens``, ``global_batch_size``, ``loss_scale_factor``) go to it.

    Returns:
        ``(loss, metrics)`` with metrics ``pg_clipfrac`` (tokens where the clip is active),
        ``pg_clipfrac_lower`` (negative-advantage tokens capped by the dual clip) and
        ``ppo_kl`` (masked mean of old - new log-prob), as Python floats.
    """
    if clip_c is not None and not clip_c > 1.0:
        raise ValueError(f"clip_c (dual-clip bound) must be > 1 or None, got {clip_c}")
    if advantages.dim() == logprobs.dim() - 1:
        advantages = advantages.unsqueeze(-1)
    log_ratio = torch.clamp(logprobs - old_logprobs, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    ppo_kl = masked_mean(-log_ratio, mask)

    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    loss_ppo = torch.maximum(loss_unclipped, loss_clipped)
    clipfrac = masked_mean(torch.gt(loss_clipped, loss_unclipped).float(), mask)

    if clip_c is None:
        loss_mat = loss_ppo
        clipfrac_lower = torch.zeros((), device=logprobs.device)
    else:
        loss_cap = -advantages * clip_c
        negative = (advantages < 0).float()
        clipfrac_lower = masked_mean(torch.gt(loss_ppo, loss_cap) * negative, mask)
        loss_mat = torch.where(advantages < 0, torch.minimum(loss_cap, loss_ppo), loss_ppo)

    loss = agg_loss(loss_mat, mask, agg, **agg_kwargs)
    metrics = {
        "pg_clipfrac": clipfrac.item(),
        "pg_clipfrac_lower": clipfrac_lower.item(),
        "ppo_kl": ppo_kl.item(),
    }
    return loss, metrics


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "low_var_kl") -> Tensor:
    """Per-token KL(pi_theta || pi_ref) estimate (Schulman's k1/k2/k3; verl ``kl_penalty``).

    ``k1``/``kl``: log-ratio; ``abs``: its absolute value; ``k2``/``mse``: half its square;
    ``k3``/``low_var_kl``: exp(ref - logp) - (ref - logp) - 1 with the log-ratio clamped to
    [-20, 20] and the result to [-10, 10]. A trailing ``+`` (e.g. ``k3+``) keeps the value
    of the named estimator but takes its gradient from k2 (straight-through), which is the
    unbiased KL gradient.

    Returns:
        ``[B, T]`` (same shape as the inputs), unmasked.
    """
    base = kind[:-1] if kind.endswith("+") else kind
    if base not in KL_KINDS:
        valid = list(KL_KINDS) + [k + "+" for k in KL_KINDS]
        raise ValueError(f"KL kind must be one of {valid}, got {kind!r}")
    value = _kl_forward(logprobs, ref_logprobs, base)
    if base == kind or base in ("k2", "mse"):
        return value
    k2 = 0.5 * (logprobs - ref_logprobs).square()
    return k2 - k2.detach() + value.detach()


def _kl_forward(logprobs: Tensor, ref_logprobs: Tensor, kind: str) -> Tensor:
    if kind in ("k1", "kl"):
        return logprobs - ref_logprobs
    if kind == "abs":
        return (logprobs - ref_logprobs).abs()
    if kind in ("k2", "mse"):
        return 0.5 * (logprobs - ref_logprobs).square()
    log_ratio = torch.clamp(ref_logprobs - logprobs, min=-20, max=20)
    return torch.clamp(torch.exp(log_ratio) - log_ratio - 1, min=-10, max=10)


def kl_loss(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    kind: str = "low_var_kl",
    agg: str = "token-mean",
    **agg_kwargs,
) -> Tensor:
    """Aggregated KL-to-reference loss (verl's ``use_kl_loss`` term; off in the paper)."""
    return agg_loss(kl_penalty(logprobs, ref_logprobs, kind), mask, agg, **agg_kwargs)
