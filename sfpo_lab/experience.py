"""The rollout batch s as training tensors, and the teacher-forced forward over it.

One :class:`Experience` holds everything fixed at theta0 for one RL iteration: the sampled
sequences, their rewards and group advantages, and the old (and reference) log-probs that
every one of the K+1 update passes reuses (clip ratio pi_theta / pi_theta0, Eq. 4).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn

from sfpo_lab.algos import entropy_from_logits, logprobs_from_logits


@dataclass
class Experience:
    """N = prompts x n sequences, prompt-major (rows i*n .. i*n+n-1 share prompt i).

    Attributes:
        input_ids: ``[N, P+R]`` prompt (left-padded) + response (right-padded).
        attention_mask: ``[N, P+R]``.
        position_ids: ``[N, P+R]`` positions as used during generation.
        response_mask: ``[N, R]`` 1 on generated tokens up to and including EOS.
        advantages: ``[N]`` group-normalised advantage per sequence (Eq. 2).
        old_logprobs: ``[N, R]`` log pi_theta0 of the response tokens.
        ref_logprobs: ``[N, R]`` log pi_ref, or None when the KL term is off.
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    response_mask: Tensor
    advantages: Tensor
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_len(self) -> int:
        return self.response_mask.shape[1]

    def rows(self, index: slice) -> Experience:
        """The same fields restricted to a slice of rows."""
        return replace(
            self,
            **{
                f.name: getattr(self, f.name)[index]
                for f in fields(self)
                if getattr(self, f.name) is not None
            },
        )

    def to(self, device: torch.device | str) -> Experience:
        return replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in fields(self)
                if getattr(self, f.name) is not None
            },
        )

    def split(self, size: int) -> Iterator[Experience]:
        """Consecutive chunks of at most ``size`` rows (mini- or micro-batches)."""
        for start in range(0, len(self), size):
            yield self.rows(slice(start, start + size))


def response_logits(model: nn.Module, exp: Experience, temperature: float = 1.0) -> Tensor:
    """Teacher-forced logits for the response tokens.

    Returns:
        ``[N, R, V]`` logits (divided by the sampling temperature) whose position t predicts
        response token t; only the last R+1 positions are projected to the vocabulary.
    """
    r = exp.response_len
    out = model(
        input_ids=exp.input_ids,
        attention_mask=exp.attention_mask,
        position_ids=exp.position_ids,
        use_cache=False,
        logits_to_keep=r + 1,
    )
    logits = out.logits[:, :-1, :].float()
    return logits / temperature if temperature != 1.0 else logits


def response_logprobs(
    model: nn.Module,
    exp: Experience,
    temperature: float = 1.0,
    micro_batch_size: int = 16,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """No-grad log-probs (and per-token entropy) of the responses, micro-batched.

    Returns:
        ``([N, R] log-probs, [N, R] entropy or None)``.
    """
    lps, ents = [], []
    with torch.no_grad():
        for mb in exp.split(micro_batch_size):
            logits = response_logits(model, mb, temperature)
            lps.append(logprobs_from_logits(logits, mb.input_ids[:, -mb.response_len :]))
            if with_entropy:
                ents.append(entropy_from_logits(logits))
    return torch.cat(lps), (torch.cat(ents) if with_entropy else None)


def old_logprobs_policy(
    mode: str,
    trainer_logprobs: Tensor,
    engine_logprobs: Tensor | None,
    response_mask: Tensor,
) -> tuple[Tensor, dict[str, float]]:
    """Choose the old log-probs (log pi_theta0 in the clip ratio, Eq. 4) and measure the
    train/inference mismatch.

    Args:
        mode: ``"recompute"`` keeps the trainer's teacher-forced log-probs at theta0 (verl's
            default); ``"engine"`` uses the rollout engine's, i.e. the exact sampling
            distribution (vLLM ``processed_logprobs``).
        trainer_logprobs: ``[N, R]`` teacher-forced log-probs at theta0.
        engine_logprobs: ``[N, R]`` the engine's log-probs of the same tokens, or None.
        response_mask: ``[N, R]`` 1 on response tokens.

    Returns:
        ``([N, R] old log-probs, metrics)``; with engine log-probs the metrics hold
        ``rollout/logprob_diff_mean`` and ``rollout/logprob_diff_max``: |engine - trainer| over
        this rank's response tokens.
    """
    if mode not in ("recompute", "engine"):
        raise ValueError(f"rollout.logprobs must be 'recompute' or 'engine', got {mode!r}")
    if engine_logprobs is None:
        if mode == "engine":
            raise ValueError("rollout.logprobs='engine' but the engine returned no log-probs")
        return trainer_logprobs, {}
    engine_logprobs = engine_logprobs.to(trainer_logprobs.device, trainer_logprobs.dtype)
    mask = response_mask.bool()
    diff = (engine_logprobs - trainer_logprobs).abs()[mask]
    metrics = {
        "rollout/logprob_diff_mean": float(diff.mean()) if diff.numel() else 0.0,
        "rollout/logprob_diff_max": float(diff.max()) if diff.numel() else 0.0,
    }
    if mode == "engine":
        return engine_logprobs.masked_fill(~mask, 0.0), metrics
    return trainer_logprobs, metrics
