"""Group-relative advantages (paper Eq. 2): GRPO, Dr. GRPO and batch-std scaling.

Numerically identical to verl 0.9.1 ``compute_grpo_outcome_advantage`` when the responses
of a prompt are consecutive (verl's ``index`` = ``arange(N // G).repeat_interleave(G)``).
"""

from __future__ import annotations

import torch
from torch import Tensor

STD_SCOPES = ("group", "batch")


def grpo_advantages(
    rewards: Tensor,
    group_size: int,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    *,
    std_scope: str = "group",
    response_mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """A_i = (r_i - mean(group)) / (std + eps), one scalar per response (Eq. 2).

    Args:
        rewards: ``[N]`` outcome rewards, or ``[N, T]`` token-level rewards (summed over T,
            as verl does). Responses of one prompt are consecutive: ``N = num_prompts * G``.
        group_size: G, responses per prompt. A group of one gets mean 0 and std 1 (verl).
        norm_by_std: divide by the std (GRPO); ``False`` is Dr. GRPO (mean-centring only).
        eps: added to the std.
        std_scope: ``"group"``: unbiased std of each group (GRPO); ``"batch"``: one unbiased
            std over the whole batch, group means kept (TRL ``scale_rewards="batch"``).
        response_mask: optional ``[N, T]``; if given the advantages are broadcast over the
            response tokens and masked, giving verl's ``[N, T]`` output.

    Returns:
        ``(advantages, metrics)``: ``[N]`` (or ``[N, T]``) advantages, and floats
        ``reward_mean``, ``reward_std`` (batch, unbiased) and ``zero_std_frac`` (fraction of
        groups whose rewards are all equal: they carry no learning signal).
    """
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
    if std_scope not in STD_SCOPES:
        raise ValueError(f"std_scope must be one of {list(STD_SCOPES)}, got {std_scope!r}")
    scores = rewards.sum(dim=-1) if rewards.dim() == 2 else rewards
    if scores.dim() != 1 or scores.shape[0] % group_size != 0:
        raise ValueError(
            f"rewards must be [N] or [N, T] with N divisible by group_size={group_size}, "
            f"got shape {tuple(rewards.shape)}"
        )
    with torch.no_grad():
        groups = scores.view(-1, group_size)
        if group_size == 1:
            # verl's singleton std is a float32 tensor(1.0), so 1 + eps is rounded to float32
            mean, denom = torch.zeros_like(groups), float(torch.tensor(1.0) + eps)
        else:
            mean, denom = groups.mean(dim=1, keepdim=True), groups.std(dim=1, keepdim=True) + eps
        if std_scope == "batch":
            denom = (scores.std() if scores.numel() > 1 else 1.0) + eps
        centred = groups - mean
        adv = (centred / denom if norm_by_std else centred).reshape(-1)
        if response_mask is not None:
            adv = adv.unsqueeze(-1) * response_mask
        metrics = _reward_metrics(scores, groups)
    return adv, metrics


def _reward_metrics(scores: Tensor, groups: Tensor) -> dict[str, float]:
    spread = groups.max(dim=1).values - groups.min(dim=1).values
    return {
        "reward_mean": scores.float().mean().item(),
        "reward_std": scores.float().std().item() if scores.numel() > 1 else 0.0,
        "zero_std_frac": (spread == 0).float().mean().item(),
    }


def drgrpo_advantages(
    rewards: Tensor,
    group_size: int,
    eps: float = 1e-6,
    *,
    response_mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Dr. GRPO (arXiv 2503.20783): r_i - mean(group), no std normalisation."""
    return grpo_advantages(
        rewards, group_size, norm_by_std=False, eps=eps, response_mask=response_mask
    )


def grpo_batch_std_advantages(
    rewards: Tensor,
    group_size: int,
    eps: float = 1e-6,
    *,
    response_mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Group mean, batch std (TRL ``scale_rewards="batch"``, Lite PPO)."""
    return grpo_advantages(
        rewards, group_size, eps=eps, std_scope="batch", response_mask=response_mask
    )
