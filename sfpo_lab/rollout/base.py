"""The rollout-engine interface: sampling settings, the batch every engine returns, and the protocol.

Every engine (HF ``generate`` in :mod:`sfpo_lab.rollout.hf`, vLLM in
:mod:`sfpo_lab.rollout.vllm`) returns the same :class:`RolloutBatch`, so the trainer never knows
which one produced its rollouts.

Shapes used below: B prompts, n samples per prompt, N = B * n rows (prompt-major: rows
``i*n .. i*n+n-1`` belong to prompt ``i``, the layout GRPO group advantages expect), P = longest
prompt (prompts are left-padded to P), R = longest response (responses are right-padded to R).

Determinism contract: the same prompts, params, weights and ``seed`` give the same batch, and a
call never touches the caller's global RNG when a seed is given. With the HF engine a row is
also independent of the rest of the call: ``generate(prompts, params, seed, keys=[...])``
draws row (key k, sample j) from its own stream seeded by ``derive_seed(seed, k, j)``, so
batch size, chunking and the number of ranks do not change it (keys = global prompt
positions in training, (benchmark, problem) in validation). vLLM takes one seed per call and
ignores ``keys``: its samples depend on the batch (documented in :mod:`sfpo_lab.rollout.vllm`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to sample completions.

    Attributes:
        n: samples per prompt (GRPO group size G), >= 1.
        max_new_tokens: response budget in tokens, >= 1; a response without EOS in this budget
            is ``truncated``.
        temperature: softmax temperature, > 0. Applied before top-k/top-p (HF and vLLM order).
        top_p: nucleus mass in (0, 1]; 1 = off.
        top_k: keep the k most likely tokens; 0 or -1 = off (vLLM spells "off" as -1).
        greedy: take the argmax of the (tempered, filtered) distribution instead of sampling;
            ``n`` copies are then identical.
        return_logprobs: also return the engine's log-probs of the chosen tokens under the
            distribution it sampled from (after temperature, top-k and top-p).
    """

    n: int = 1
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    return_logprobs: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"SamplingParams.n must be an int >= 1, got {self.n!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(
                f"SamplingParams.max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}"
            )
        if not self.temperature > 0:
            raise ValueError(
                f"SamplingParams.temperature must be > 0 (use greedy=True for argmax), "
                f"got {self.temperature!r}"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            raise ValueError(
                f"SamplingParams.top_k must be an int >= 1, or 0 / -1 for off, got {self.top_k!r}"
            )

    @property
    def top_k_enabled(self) -> int | None:
        """``top_k`` when filtering is on, else None."""
        return self.top_k if self.top_k > 0 else None


class Decoder(Protocol):
    """Anything with a tokenizer-style ``decode`` (HF tokenizers, the project's char tokenizer)."""

    def decode(self, token_ids: list[int]) -> str: ...


@dataclass
class RolloutBatch:
    """Completions for ``B`` prompts x ``n`` samples, as padded tensors (N = B * n rows).

    Attributes:
        input_ids: ``[N, P + R]`` long; prompt left-padded to P, response right-padded to R with
            ``pad_token_id`` (everything after the first EOS is padding).
        attention_mask: ``[N, P + R]`` long; 1 on real prompt tokens and on ``response_mask``.
        response_mask: ``[N, R]`` long; 1 on generated tokens up to and including the first EOS.
        truncated: ``[N]`` bool; True where no EOS was produced within ``max_new_tokens``.
        prompt_len: P, the width of the (left-padded) prompt block.
        n: samples per prompt; rows ``i*n .. i*n+n-1`` belong to prompt ``i``.
        pad_token_id: the id used for padding (used when re-padding in :func:`concat_rollouts`).
        logprobs: ``[N, R]`` float32 engine log-probs of the chosen tokens under the sampling
            distribution (0 where ``response_mask`` is 0), or None when not requested.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    truncated: torch.Tensor
    prompt_len: int
    n: int = 1
    pad_token_id: int = 0
    logprobs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        rows, width = self.input_ids.shape
        resp = width - self.prompt_len
        expected = {
            "attention_mask": (rows, width),
            "response_mask": (rows, resp),
            "truncated": (rows,),
        }
        if self.logprobs is not None:
            expected["logprobs"] = (rows, resp)
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(
                    f"RolloutBatch.{name} must have shape {shape}, "
                    f"got {tuple(getattr(self, name).shape)}"
                )
        if rows % self.n:
            raise ValueError(f"RolloutBatch has {rows} rows, not a multiple of n={self.n}")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_prompts(self) -> int:
        """B, the number of distinct prompts."""
        return len(self) // self.n

    @property
    def prompt_ids(self) -> torch.Tensor:
        """``[N, P]`` left-padded prompt tokens."""
        return self.input_ids[:, : self.prompt_len]

    @property
    def prompt_mask(self) -> torch.Tensor:
        """``[N, P]`` 1 on real prompt tokens."""
        return self.attention_mask[:, : self.prompt_len]

    @property
    def response_ids(self) -> torch.Tensor:
        """``[N, R]`` right-padded response tokens."""
        return self.input_ids[:, self.prompt_len :]

    @property
    def response_lengths(self) -> torch.Tensor:
        """``[N]`` long: response tokens counted by ``response_mask`` (EOS included)."""
        return self.response_mask.sum(-1)

    @property
    def position_ids(self) -> torch.Tensor:
        """``[N, P + R]`` long: ``cumsum(attention_mask) - 1`` clamped at 0.

        Generation numbers positions this way (left padding does not shift the prompt), so a
        teacher-forced forward with these ids sees the tokens at the positions they were
        sampled at.
        """
        return (self.attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def to(self, device: torch.device | str) -> RolloutBatch:
        """A copy with every tensor on ``device``."""
        moved = {
            f.name: v.to(device) if isinstance(v := getattr(self, f.name), torch.Tensor) else v
            for f in fields(self)
        }
        return RolloutBatch(**moved)

    def decode_responses(self, tokenizer: Decoder) -> list[str]:
        """Decode each response without padding and without its final EOS (one string per row)."""
        texts = []
        for ids, length, truncated in zip(
            self.response_ids.tolist(),
            self.response_lengths.tolist(),
            self.truncated.tolist(),
            strict=True,
        ):
            keep = length if truncated else length - 1
            texts.append(tokenizer.decode(ids[:keep]))
        return texts


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer needs from a generation backend."""

    owns_model: bool
    """True when the engine generates with its own copy of the weights (vLLM, or HF beside
    FSDP2): the trainer must push theta with ``sync_weights`` after every update."""

    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        seed: int | None = None,
        keys: Sequence[int] | None = None,
    ) -> RolloutBatch:
        """Sample ``params.n`` completions for each prompt (token-id lists, no padding).

        Returns a prompt-major :class:`RolloutBatch` of ``len(prompts) * params.n`` rows. With a
        ``seed`` the result is reproducible and the caller's global RNG is left untouched;
        ``keys`` (one int per prompt) name the prompts' random streams where the engine
        supports it (see the module docstring).
        """
        ...

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Make the engine generate with these weights (``state_dict()`` names, full tensors).

        The iterable may be lazy (e.g. gathering FSDP2 shards bucket by bucket as it is
        consumed), so an engine consumes it once and holds no more of it than it must.
        """
        ...

    def close(self) -> None:
        """Release the engine's resources; ``generate`` must not be called afterwards."""
        ...


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys, e.g. ``derive_seed(run_seed, iteration, chunk_index)``.

    Stable across processes and Python versions (a hash, not ``hash()``), and unrelated seeds
    for neighbouring keys.
    """
    digest = hashlib.blake2b(",".join(str(int(k)) for k in keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def left_pad(
    prompts: Sequence[Sequence[int]], pad_token_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token-id lists.

    Returns:
        ``(ids, mask)``, both ``[B, P]`` long with P the longest prompt.
    """
    if not prompts:
        raise ValueError("prompts must hold at least one prompt, got an empty list")
    width = max(len(p) for p in prompts)
    if min(len(p) for p in prompts) == 0:
        raise ValueError("every prompt needs at least one token, got an empty prompt")
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


def mask_after_eos(
    response_ids: torch.Tensor, eos_token_ids: Sequence[int], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut responses at their first EOS.

    Args:
        response_ids: ``[N, R]`` generated tokens (anything may follow an EOS).
        eos_token_ids: ids that end a response.
        pad_token_id: written after the first EOS.

    Returns:
        ``(ids, response_mask, truncated)``: ``[N, R]`` ids padded after the first EOS,
        ``[N, R]`` long mask (1 up to and including the first EOS), ``[N]`` bool (no EOS).
    """
    eos = torch.as_tensor(list(eos_token_ids), dtype=response_ids.dtype, device=response_ids.device)
    is_eos = torch.isin(response_ids, eos).long()
    eos_before = is_eos.cumsum(-1) - is_eos  # EOS tokens strictly before each position
    response_mask = (eos_before == 0).long()
    ids = response_ids.masked_fill(response_mask == 0, pad_token_id)
    return ids, response_mask, is_eos.sum(-1) == 0


def build_rollout_batch(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    *,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    n: int,
    logprobs: torch.Tensor | None = None,
) -> RolloutBatch:
    """Assemble a :class:`RolloutBatch` from an engine's raw output.

    Args:
        prompt_ids: ``[N, P]`` left-padded prompts, already repeated ``n`` times (prompt-major).
        prompt_mask: ``[N, P]`` 1 on real prompt tokens.
        response_ids: ``[N, R]`` generated tokens, cut at the first EOS here.
        eos_token_ids: ids that end a response.
        pad_token_id: padding id.
        n: samples per prompt.
        logprobs: ``[N, R]`` log-probs of ``response_ids``; zeroed outside the response mask.
    """
    ids, response_mask, truncated = mask_after_eos(response_ids, eos_token_ids, pad_token_id)
    if logprobs is not None:
        logprobs = logprobs.float().masked_fill(response_mask == 0, 0.0)
    return RolloutBatch(
        input_ids=torch.cat([prompt_ids, ids], dim=-1),
        attention_mask=torch.cat([prompt_mask.long(), response_mask], dim=-1),
        response_mask=response_mask,
        truncated=truncated,
        prompt_len=prompt_ids.shape[1],
        n=n,
        pad_token_id=pad_token_id,
        logprobs=logprobs,
    )


def concat_rollouts(batches: Sequence[RolloutBatch]) -> RolloutBatch:
    """Stack chunk batches row-wise, re-padding prompts (left) and responses (right).

    All batches must share ``n``, ``pad_token_id`` and whether they carry log-probs; rows keep
    their order, so chunk-wise prompt-major batches stay prompt-major.
    """
    if not batches:
        raise ValueError("concat_rollouts needs at least one batch")
    first = batches[0]
    for b in batches[1:]:
        if (b.n, b.pad_token_id, b.logprobs is None) != (
            first.n,
            first.pad_token_id,
            first.logprobs is None,
        ):
            raise ValueError("concat_rollouts: batches differ in n, pad_token_id or log-probs")
    p = max(b.prompt_len for b in batches)
    r = max(b.response_mask.shape[1] for b in batches)
    pad = torch.nn.functional.pad
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("ids", "attn", "resp", "lp")}
    for b in batches:
        left, right = p - b.prompt_len, r - b.response_mask.shape[1]
        parts["ids"].append(pad(b.input_ids, (left, right), value=first.pad_token_id))
        parts["attn"].append(pad(b.attention_mask, (left, right), value=0))
        parts["resp"].append(pad(b.response_mask, (0, right), value=0))
        if b.logprobs is not None:
            parts["lp"].append(pad(b.logprobs, (0, right), value=0.0))
    return RolloutBatch(
        input_ids=torch.cat(parts["ids"]),
        attention_mask=torch.cat(parts["attn"]),
        response_mask=torch.cat(parts["resp"]),
        truncated=torch.cat([b.truncated for b in batches]),
        prompt_len=p,
        n=first.n,
        pad_token_id=first.pad_token_id,
        logprobs=torch.cat(parts["lp"]) if parts["lp"] else None,
    )


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Ids that end a response: the tokenizer's EOS and the model's ``generation_config`` EOS
    ids (what vLLM and ``generate`` stop at by default; Qwen chat models list ``<|im_end|>``
    and ``<|endoftext|>``), without duplicates, the tokenizer's first."""
    ids = [tokenizer.eos_token_id]
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    ids += extra if isinstance(extra, list) else [extra]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))
