"""The toy base model: a character tokenizer + a small Qwen2 warmed up by supervised training.

The base is cached under ``paths.cache_dir`` keyed by everything that shapes it (model size,
task, warm-up settings, ``base_seed``), built once under a file lock (parallel jobs and ranks wait
instead of racing) and reused by every later run.

The warm-up runs on ONE intra-op thread whatever ``OMP_NUM_THREADS`` / ``torch.set_num_threads``
say (the caller's count is restored afterwards), so the base cannot depend on the thread count
(issue 25: a CPU library may split a reduction by thread, and 150 Adam steps amplify a last-bit
difference). Kernels of another instruction set can still change the last bits: see
docs/default_run.md for what that measured.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import Qwen2ForCausalLM

from sfpo_lab.config import RunConfig
from sfpo_lab.data.templates import render_prompt
from sfpo_lab.data.tokenizer import build_char_tokenizer
from sfpo_lab.data.toy import ToyArithmetic
from sfpo_lab.model.build import tiny_qwen2_config

# 2: one thread in the warm-up (bases built under another thread count are not reused); the
# reported accuracy is over the whole training split
WARMUP_VERSION = 2
WARMUP_THREADS = 1


def base_seed(run: RunConfig) -> int:
    """Seed of the toy base and task: ``model.warmup.seed``, or the run's seed when unset (then
    every RL seed has its own base; set it to give all seeds and methods one shared base)."""
    w = run.model.warmup
    return run.seed if w is None or w.seed is None else w.seed


def toy_task(run: RunConfig) -> ToyArithmetic:
    t = run.data.toy
    return ToyArithmetic(
        ops=t.ops,
        num_operands=t.num_operands,
        max_operand=t.max_operand,
        heldout_frac=t.heldout_frac,
        split=t.split,
        seed=base_seed(run),
    )


def base_key(run: RunConfig) -> str:
    warmup = {k: v for k, v in asdict(run.model.warmup).items() if k != "seed"}
    spec = {
        "v": WARMUP_VERSION,
        "tiny": asdict(run.model.tiny),
        "warmup": warmup,
        # split=text (the default) is left out so the bases cached before the key existed keep theirs
        "toy": {k: v for k, v in asdict(run.data.toy).items() if (k, v) != ("split", "text")},
        "template": run.data.template,
        "seed": base_seed(run),
    }
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


@contextmanager
def _threads(n: int):
    """Run the block on ``n`` intra-op threads, restoring the caller's count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def toy_base_model(run: RunConfig, log=print) -> Path:
    """Directory of the warmed-up toy base (model + tokenizer), building it if missing."""
    out = Path(run.paths.cache_dir) / "toy_base" / base_key(run)
    if (out / "config.json").exists():
        return out
    with _locked(out.parent / f".{out.name}.lock"):
        if (out / "config.json").exists():
            return out
        tmp = out.parent / f".{out.name}.building"
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.perf_counter()
        with _threads(WARMUP_THREADS):
            acc = _build(run, tmp)
        tmp.rename(out)
        log(
            f"[warm-up] toy base built in {time.perf_counter() - t0:.0f}s "
            f"(teacher-forced answer accuracy on the training split {acc:.0%}) -> {out}"
        )
    return out


def _build(run: RunConfig, out: Path) -> float:
    tok = build_char_tokenizer(out)
    torch.manual_seed(base_seed(run))
    t = run.model.tiny
    cfg = tiny_qwen2_config(
        vocab_size=len(tok),
        hidden_size=t.hidden_size,
        num_layers=t.num_layers,
        num_heads=t.num_heads,
        num_kv_heads=t.num_kv_heads,
        intermediate_size=t.intermediate_size,
        max_position_embeddings=t.max_position_embeddings,
    )
    cfg.pad_token_id, cfg.eos_token_id = tok.pad_token_id, tok.eos_token_id
    model = Qwen2ForCausalLM(cfg)
    acc = _supervised(run, model, tok)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return acc


def _sft_batch(task: ToyArithmetic, problems, tok, template: str) -> tuple[torch.Tensor, ...]:
    """Right-padded prompt+target+EOS ids with labels only on the target (-100 elsewhere)."""
    rows, labels = [], []
    for p in problems:
        prompt = tok(render_prompt(p.problem, template), add_special_tokens=False)["input_ids"]
        target = tok(task.sft_target(p), add_special_tokens=False)["input_ids"]
        target = target + [tok.eos_token_id]
        rows.append(prompt + target)
        labels.append([-100] * len(prompt) + target)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    lab = torch.full((len(rows), width), -100)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, lb) in enumerate(zip(rows, labels, strict=True)):
        ids[i, : len(r)], lab[i, : len(lb)], att[i, : len(r)] = torch.tensor(r), torch.tensor(lb), 1
    return ids, att, lab


def _supervised(run: RunConfig, model: Qwen2ForCausalLM, tok) -> float:
    """Cross-entropy on the answer tokens of training-split problems only."""
    w = run.model.warmup
    task = toy_task(run)
    train = task.train()
    rng = random.Random(base_seed(run))
    opt = torch.optim.AdamW(model.parameters(), lr=w.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    model.train()
    for _ in range(w.steps):
        ids, att, lab = _sft_batch(
            task, rng.sample(train, min(w.batch_size, len(train))), tok, run.data.template
        )
        out = model(input_ids=ids, attention_mask=att, labels=lab)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    return _teacher_forced_acc(model, _sft_batch(task, train, tok, run.data.template))


@torch.no_grad()
def _teacher_forced_acc(model: Qwen2ForCausalLM, batch: tuple[torch.Tensor, ...]) -> float:
    """Fraction of rows whose every target token (and EOS) is the argmax, the model in eval
    mode. ``batch``: ids, attention mask, labels, each [rows, width]."""
    ids, att, lab = batch
    pred = model(input_ids=ids, attention_mask=att).logits[:, :-1].argmax(-1)
    tgt = lab[:, 1:]
    return float(((pred == tgt) | (tgt == -100)).all(-1).float().mean())
