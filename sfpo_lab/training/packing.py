"""Padding-free micro-batches: split an :class:`Experience` by token budget, pack and unpack.

Pure functions on an ``Experience`` (no model, no Lightning) that :class:`UpdatePass` and the
no-grad log-prob pass iterate over (verl ``dp_actor``: ``use_dynamic_bsz`` with
``ppo_max_token_len_per_gpu``, and ``use_remove_padding``):

* :func:`micro_batches` — rows grouped by length into micro-batches of at most
  ``max_tokens`` tokens (or fixed ``micro_batch_size`` rows), each trimmed to its own longest
  prompt and response, the count made equal on every rank with empty micro-batches (FSDP's
  collectives hang when ranks run different numbers of forwards).
* :func:`pack` / :func:`unpack` — one micro-batch as a single row of real tokens with
  per-sequence position ids (transformers reads a restart of the position ids as a sequence
  boundary: varlen attention for flash_attention_2, a block-diagonal causal mask for sdpa /
  eager), and the per-token results back to ``[n, R]``.

The loss keeps its *global* denominators (tokens and sequences of the whole mini-batch), so
how rows are grouped never changes the loss or its gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol, Self

import torch
from torch import Tensor


class Experience(Protocol):
    """What this module reads of :class:`sfpo_lab.training.experience.Experience` (a dataclass, so
    ``dataclasses.replace`` works on it); a protocol, so that experience.py imports this
    module and not the other way round (no import circle)."""

    input_ids: Tensor  # [N, P+R]
    attention_mask: Tensor  # [N, P+R]
    position_ids: Tensor  # [N, P+R]
    response_mask: Tensor  # [N, R]
    old_logprobs: Tensor | None  # [N, R]
    ref_logprobs: Tensor | None  # [N, R]
    __dataclass_fields__: dict[str, Any]

    @property
    def response_len(self) -> int: ...

    def rows(self, index: slice | Tensor) -> Self: ...


@dataclass
class MicroBatch:
    """Rows ``index`` of a source Experience, trimmed to their own lengths.

    Attributes:
        exp: the rows, ``[n, P'+R']`` with ``P' <= P`` and ``R' <= R`` (all-padding columns
            removed); for an empty (rank-padding) micro-batch one row with a zero mask.
        index: ``[n]`` long, the rows' positions in the source (empty for padding).
        packed: run the forward on :func:`pack` (one row, no padding) instead of ``exp``.
    """

    exp: Experience
    index: Tensor
    packed: bool = False

    @property
    def empty(self) -> bool:
        return self.index.numel() == 0


@dataclass
class Packed:
    """One micro-batch as one row of real tokens.

    Attributes:
        input_ids: ``[1, T]`` the real tokens of every row, row after row.
        position_ids: ``[1, T]`` per-sequence positions, each sequence starting at 0.
        logit_index: ``[M]`` long, the packed position whose logits predict each response
            token (pass as ``logits_to_keep``).
        labels: ``[M]`` the response tokens.
        rows, cols: ``[M]`` where each response token sits in the ``[n, R']`` response grid.
    """

    input_ids: Tensor
    position_ids: Tensor
    logit_index: Tensor
    labels: Tensor
    rows: Tensor
    cols: Tensor


def row_tokens(exp: Experience) -> Tensor:
    """``[N]`` long: real (attended) tokens per row, prompt + response."""
    return exp.attention_mask.long().sum(-1)


def plan(
    lengths: list[int],
    max_tokens: int | None,
    micro_batch_size: int,
    remove_padding: bool,
    prompt_lengths: list[int] | None = None,
) -> list[list[int]]:
    """Group row ids into micro-batches.

    ``max_tokens=None``: consecutive groups of ``micro_batch_size`` rows (source order).
    Otherwise rows sorted longest first are filled greedily while the micro-batch's cost stays
    ``<= max_tokens``: the sum of lengths when packed; when padded, rows x (longest prompt +
    longest response), the width :func:`trim` leaves (``prompt_lengths`` None = no prompts).
    """
    n = len(lengths)
    if max_tokens is None:
        return [list(range(s, min(s + micro_batch_size, n))) for s in range(0, n, micro_batch_size)]
    if n and max(lengths) > max_tokens:
        raise ValueError(
            f"update.max_tokens_per_micro_batch={max_tokens} is below the longest sequence "
            f"({max(lengths)} tokens); allowed: >= max prompt + response length"
        )
    prompts = prompt_lengths if prompt_lengths is not None else [0] * n
    groups: list[list[int]] = []
    total = wide_p = wide_r = 0
    for i in sorted(range(n), key=lambda i: -lengths[i]):
        p, r = prompts[i], lengths[i] - prompts[i]
        if groups:
            grown_p, grown_r = max(wide_p, p), max(wide_r, r)
            cost = (
                total + lengths[i]
                if remove_padding
                else (len(groups[-1]) + 1) * (grown_p + grown_r)
            )
            if cost <= max_tokens:
                groups[-1].append(i)
                total, wide_p, wide_r = total + lengths[i], grown_p, grown_r
                continue
        groups.append([i])
        total, wide_p, wide_r = lengths[i], p, r
    return groups


def trim(exp: Experience) -> Experience:
    """Drop the columns that are padding in every row (left of the prompts, right of the
    responses); positions are explicit, so the real tokens' outputs do not change."""
    r = exp.response_len
    p = exp.input_ids.shape[1] - r
    real = exp.attention_mask.bool()
    prompt_cols = real[:, :p].any(0).nonzero()
    first = int(prompt_cols[0]) if prompt_cols.numel() else p
    resp_cols = (real[:, p:] | exp.response_mask.bool()).any(0).nonzero()
    r_new = max(int(resp_cols[-1]) + 1 if resp_cols.numel() else 1, 1)
    cols = slice(first, p + r_new)
    out = {
        "input_ids": exp.input_ids[:, cols],
        "attention_mask": exp.attention_mask[:, cols],
        "position_ids": exp.position_ids[:, cols],
        "response_mask": exp.response_mask[:, :r_new],
    }
    for name in ("old_logprobs", "ref_logprobs"):
        if getattr(exp, name) is not None:
            out[name] = getattr(exp, name)[:, :r_new]
    return replace(exp, **out)


def micro_batches(
    exp: Experience,
    *,
    micro_batch_size: int,
    max_tokens: int | None = None,
    remove_padding: bool = False,
    reduce_max: Callable[[int], int] | None = None,
) -> list[MicroBatch]:
    """Split ``exp`` into trimmed micro-batches (see :func:`plan`).

    Args:
        reduce_max: all-reduce MAX over data-parallel ranks (None on one process); ranks with
            fewer micro-batches append empty ones (one row, zero response mask: a forward and
            backward that add exactly zero) so every rank runs the same number.
    """
    p = exp.input_ids.shape[1] - exp.response_len
    prompts = exp.attention_mask[:, :p].long().sum(-1).tolist()
    lengths = row_tokens(exp).tolist()
    groups = plan(lengths, max_tokens, micro_batch_size, remove_padding, prompts)
    out = []
    for g in groups:
        index = torch.tensor(g, dtype=torch.long, device=exp.input_ids.device)
        out.append(MicroBatch(trim(exp.rows(index)), index, remove_padding))
    target = reduce_max(len(out)) if reduce_max is not None else len(out)
    if target > len(out):
        dummy = exp.rows(slice(0, 1))
        dummy = trim(replace(dummy, response_mask=torch.zeros_like(dummy.response_mask)))
        none = exp.input_ids.new_zeros(0, dtype=torch.long)
        out += [MicroBatch(dummy, none, remove_padding) for _ in range(target - len(out))]
    return out


def pack(exp: Experience) -> Packed:
    """The rows' real tokens in one row, with per-sequence positions (see :class:`Packed`)."""
    real = exp.attention_mask.bool()
    resp = exp.response_mask.bool()
    r = exp.response_len
    p = exp.input_ids.shape[1] - r
    if (resp & ~real[:, p:]).any():
        raise ValueError("response_mask marks tokens that attention_mask excludes")
    pos = exp.position_ids[real]
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[1:] = torch.diff(pos) != 1  # where transformers sees a new sequence
    lengths = real.long().sum(-1)
    offsets = torch.cumsum(lengths, 0) - lengths
    if int(starts.sum()) != int((lengths > 0).sum()) or (pos[starts] != 0).any():
        raise ValueError(
            "remove_padding needs position ids that count 0, 1, 2, ... over each row's real "
            "tokens (cumsum(attention_mask) - 1); set update.remove_padding=false"
        )
    # packed index of every real column: offset of the row + rank of the column in the row
    packed_at = offsets[:, None] + torch.cumsum(real.long(), -1) - 1
    rows, cols = resp.nonzero(as_tuple=True)
    logit_index = packed_at[rows, p + cols - 1]  # position t-1 predicts response token t
    return Packed(
        input_ids=exp.input_ids[real][None],
        position_ids=pos[None],
        logit_index=logit_index,
        labels=exp.input_ids[rows, p + cols],
        rows=rows,
        cols=cols,
    )


def unpack(values: Tensor, packed: Packed, shape: tuple[int, int]) -> Tensor:
    """``[M]`` per-response-token values back to ``[n, R']``, zero off the response mask."""
    out = values.new_zeros(shape)
    return out.index_put((packed.rows, packed.cols), values)
