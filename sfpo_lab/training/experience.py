"""The rollout batch s as training tensors, and the teacher-forced forward over it.

One :class:`Experience` holds everything fixed at theta0 for one RL iteration: the sampled
sequences, their rewards and group advantages, and the old (and reference) log-probs that
every one of the K+1 update passes reuses (clip ratio pi_theta / pi_theta0, Eq. 4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn

from sfpo_lab.algos.logits import fused_logprobs_and_entropy, logprobs_and_entropy
from sfpo_lab.training.packing import MicroBatch, micro_batches, pack, unpack


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

    def rows(self, index: slice | Tensor) -> Experience:
        """The same fields restricted to some rows (a slice or a ``[n]`` long index)."""
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


def output_projection(model: nn.Module) -> Tensor:
    """The ``[V, H]`` lm_head weight for the fused log-probs, after checking that the model's
    logits are exactly ``hidden @ weight.T`` (no bias, no scale or soft-capping)."""
    head = model.get_output_embeddings()
    cfg = getattr(model, "config", None)
    extra = [
        k
        for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")
        if getattr(cfg, k, None)
    ]
    if not isinstance(head, nn.Linear) or head.bias is not None or extra:
        raise ValueError(
            f"update.fused_lm_head=true needs logits = hidden @ lm_head.weight.T; "
            f"{type(model).__name__} has {type(head).__name__} (bias or {extra}): "
            "set update.fused_lm_head=false"
        )
    return head.weight


def _fused_forward(
    model: nn.Module, inputs: dict, keep: Tensor, labels: Tensor, temperature: float, chunk: int
) -> tuple[Tensor, Tensor]:
    """The root forward with no logits at all (``hidden_states[-1]`` is the final normed
    state), then :func:`fused_logprobs_and_entropy` at the ``keep`` positions."""
    output_projection(model)  # refuse before the forward
    out = model(**inputs, use_cache=False, logits_to_keep=keep[:0], output_hidden_states=True)
    # FSDP2 unshards the root's embeddings / lm_head in its forward and, for the root, keeps
    # them unsharded for backward: the weight is read only now, and its gradient reaches the
    # root's reduce-scatter like any other
    weight = output_projection(model)
    if hasattr(weight, "to_local"):
        raise RuntimeError(
            "update.fused_lm_head=true: the FSDP root resharded lm_head after forward; shard "
            "the root with the default reshard_after_forward or set update.fused_lm_head=false"
        )
    hidden = out.hidden_states[-1][:, keep]
    return fused_logprobs_and_entropy(hidden, weight, labels, temperature, chunk)


def micro_logprobs(
    model: nn.Module,
    mb: MicroBatch,
    temperature: float = 1.0,
    chunk_tokens: int = 256,
    fused: bool = False,
) -> tuple[Tensor, Tensor]:
    """Teacher-forced log-probs and entropy of one micro-batch's responses (with grad when
    grad is enabled). Only the positions that predict response tokens reach the vocabulary:
    chunked over the model's compute-dtype logits (:func:`logprobs_and_entropy`) or, with
    ``fused``, over the final hidden states x lm_head (:func:`fused_logprobs_and_entropy`:
    no ``[n, R, V]`` tensor at all).

    Returns:
        ``([n, R'] log-probs, [n, R'] entropy)`` float32, ``R'`` = ``mb.exp.response_len``;
        packed micro-batches hold 0 off the response mask.
    """
    exp = mb.exp
    if mb.packed:
        pk = pack(exp)
        inputs = {"input_ids": pk.input_ids, "position_ids": pk.position_ids}
        # position ids restarting at 0 = a new sequence (varlen / block-diagonal mask)
        keep, labels = pk.logit_index, pk.labels[None]
    else:
        r, width = exp.response_len, exp.input_ids.shape[1]
        inputs = {
            "input_ids": exp.input_ids,
            "attention_mask": exp.attention_mask,
            "position_ids": exp.position_ids,
        }
        # position t-1 predicts response token t; an index (not an int) keeps the logits
        # contiguous, so no copy of [n, R, V] is made
        keep = torch.arange(width - r - 1, width - 1, device=exp.input_ids.device)
        labels = exp.input_ids[:, -r:]
    if fused:
        lp, ent = _fused_forward(model, inputs, keep, labels, temperature, chunk_tokens)
    else:
        out = model(**inputs, use_cache=False, logits_to_keep=keep)
        lp, ent = logprobs_and_entropy(out.logits, labels, temperature, chunk_tokens)
    if not mb.packed:
        return lp, ent
    shape = tuple(exp.response_mask.shape)
    return unpack(lp[0], pk, shape), unpack(ent[0], pk, shape)


def response_logprobs(
    model: nn.Module,
    exp: Experience,
    temperature: float = 1.0,
    micro_batch_size: int = 16,
    with_entropy: bool = False,
    *,
    max_tokens: int | None = None,
    remove_padding: bool = False,
    chunk_tokens: int = 256,
    fused: bool = False,
    reduce_max: Callable[[int], int] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """No-grad log-probs (and per-token entropy) of the responses, micro-batched exactly as
    the update passes are (:func:`sfpo_lab.training.packing.micro_batches`).

    Returns:
        ``([N, R] log-probs, [N, R] entropy or None)``, float32; 0 where a micro-batch did not
        reach (columns past its longest response; off the mask when packed).
    """
    shape = tuple(exp.response_mask.shape)
    lps = torch.zeros(shape, dtype=torch.float32, device=exp.input_ids.device)
    ents = torch.zeros_like(lps) if with_entropy else None
    mbs = micro_batches(
        exp,
        micro_batch_size=micro_batch_size,
        max_tokens=max_tokens,
        remove_padding=remove_padding,
        reduce_max=reduce_max,
    )
    with torch.no_grad():
        for mb in mbs:
            lp, ent = micro_logprobs(model, mb, temperature, chunk_tokens, fused)
            if mb.empty:
                continue  # ran only so that every rank takes part in the same collectives
            r = lp.shape[1]
            lps[mb.index, :r] = lp.to(lps.dtype)
            if ents is not None:
                ents[mb.index, :r] = ent.to(ents.dtype)
    if hasattr(model, "reshard"):
        # FSDP2 keeps the root gathered after a forward (it expects a backward): shard it again
        # once the pass is done, not after each forward (the fused log-probs read lm_head then)
        model.reshard()
    return lps, ents


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


def dropout_active(model: nn.Module) -> bool:
    """Whether a forward of ``model`` in its current mode draws dropout masks (a dropout
    module with p > 0, or a config ``*dropout`` > 0 that attention applies functionally)."""
    if not model.training:
        return False
    if any(isinstance(mod, nn.Dropout) and mod.p > 0 for mod in model.modules()):
        return True
    cfg = getattr(model, "config", None)
    values = vars(cfg) if hasattr(cfg, "__dict__") else {}  # not to_dict(): ~2 ms a call
    return any(
        "dropout" in k and isinstance(v, int | float) and not isinstance(v, bool) and v > 0
        for k, v in values.items()
    )
